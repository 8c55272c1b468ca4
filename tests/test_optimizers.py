"""keras_lct.optimizers.RAdam against a NumPy transcription of the algorithm."""

import keras
import numpy as np
import pytest

from keras_lct.backend import use_fast_paths
from keras_lct.optimizers import RAdam
from test_backend_ops import require_a_fast_path


def numpy_radam(theta, gradients_of, steps, lr, beta_1=0.9, beta_2=0.999, eps=1e-8, weight_decay=0.0):
    theta = theta.astype("float64").copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    rho_inf = 2 / (1 - beta_2) - 1
    for t in range(1, steps + 1):
        g = gradients_of(theta) + weight_decay * theta
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        m_hat = m / (1 - beta_1**t)
        rho = rho_inf - 2 * t * beta_2**t / (1 - beta_2**t)
        if rho > 5:
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            theta -= lr * m_hat * r * np.sqrt(1 - beta_2**t) / (np.sqrt(v) + eps)
        else:
            theta -= lr * m_hat
    return theta


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast_paths", "plain"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_radam_matches_the_algorithm(weight_decay, fast_paths):
    if fast_paths:
        require_a_fast_path("torch")  # RAdam's multi-tensor update
    target = np.array([1.0, -2.0, 3.0, 0.5])
    start = np.array([0.3, 0.1, -0.4, 2.0], "float32")
    variable = keras.Variable(start)
    optimizer = RAdam(learning_rate=0.05, weight_decay=weight_decay)
    for _ in range(12):  # rho_t > 5 from step 6 on: both branches run
        gradient = 2 * (keras.ops.convert_to_numpy(variable) - target)
        with use_fast_paths(fast_paths):
            optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient.astype("float32")), variable)])
    expected = numpy_radam(start, lambda theta: 2 * (theta - target), 12, 0.05, weight_decay=weight_decay)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-5, atol=1e-6)


def test_radam_trains_a_model_and_round_trips_its_config():
    optimizer = RAdam(5e-2, weight_decay=1e-4)
    restored = RAdam.from_config(optimizer.get_config())
    assert restored.coupled_weight_decay == pytest.approx(1e-4) and restored.weight_decay is None
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-1.0], [0.5]], "float32")
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]


@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast_paths", "plain"])
def test_one_update_of_many_variables_computes_the_step_scalars_once(fast_paths, monkeypatch):
    if fast_paths:
        require_a_fast_path("torch")
    targets = [np.array([1.0, -2.0, 3.0]), np.array([[0.5], [-0.5]])]
    starts = [np.array([0.3, 0.1, -0.4], "float32"), np.array([[2.0], [1.0]], "float32")]
    variables = [keras.Variable(start) for start in starts]
    optimizer = RAdam(learning_rate=0.05)
    computed = []
    step_factors = optimizer._step_factors
    monkeypatch.setattr(optimizer, "_step_factors", lambda rate: computed.append(rate) or step_factors(rate))
    for _ in range(8):
        gradients = [2 * (keras.ops.convert_to_numpy(v) - t) for v, t in zip(variables, targets)]
        with use_fast_paths(fast_paths):
            optimizer.apply_gradients([(g.astype("float32"), v) for g, v in zip(gradients, variables)])
    assert len(computed) == 8  # once per update, not once per variable
    for variable, start, target in zip(variables, starts, targets):
        expected = numpy_radam(start, lambda theta, target=target: 2 * (theta - target), 8, 0.05)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-5, atol=1e-6)
