"""keras_lct.losses against numpy, its gradients against fig. 2, and its edge cases."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct import losses


def numpy_distance(name, prediction, target, c):
    m = np.mean((prediction.astype("float64") - target) ** 2, axis=tuple(range(1, prediction.ndim)))
    return {
        "cauchy": np.log(1 + m / (2 * c**2)),
        "pseudo_huber": np.sqrt(m + c**2) - c,
        "geman_mcclure": 2 * m / (m + 4 * c**2),
        "l2": m,
    }[name]


NAMES = list(losses.DISTANCES)
CLASSES = {"cauchy": losses.Cauchy, "pseudo_huber": losses.PseudoHuber, "geman_mcclure": losses.GemanMcClure, "l2": losses.L2}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("c", [0.0346, 0.5, 3.0])
def test_distance_matches_numpy_per_sample(name, c):
    rng = np.random.default_rng(1)
    prediction = rng.normal(size=(5, 4, 4, 2)).astype("float32")
    target = rng.normal(size=(5, 4, 4, 2)).astype("float32") * np.array([0.0, 0.1, 1, 3, 10]).reshape(5, 1, 1, 1)
    got = ops.convert_to_numpy(losses.get(name)(prediction, target, c))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, numpy_distance(name, prediction, target, c), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_loss_class_reduces_the_distance_and_round_trips_config(name):
    rng = np.random.default_rng(2)
    y_true = rng.normal(size=(3, 8)).astype("float32")
    y_pred = rng.normal(size=(3, 8)).astype("float32")
    loss = CLASSES[name](c=0.2)
    value = float(loss(y_true, y_pred))
    assert value == pytest.approx(numpy_distance(name, y_pred, y_true, 0.2).mean(), rel=1e-5)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.c == pytest.approx(0.2)
    assert float(restored(y_true, y_pred)) == pytest.approx(value, rel=1e-6)


def test_loss_reads_a_variable_c_at_every_call():
    c = keras.Variable(1.0, trainable=False, name="c")
    loss = losses.Cauchy(c=c)
    y_true, y_pred = np.zeros((2, 4), "float32"), np.ones((2, 4), "float32")
    assert float(loss(y_true, y_pred)) == pytest.approx(np.log(1 + 1 / 2))
    c.assign(0.1)
    assert float(loss(y_true, y_pred)) == pytest.approx(np.log(1 + 1 / 0.02), rel=1e-6)
    assert losses.Cauchy.from_config(loss.get_config()).c == pytest.approx(0.1)


@pytest.mark.compiled_step
def test_loss_with_variable_c_inside_compiled_fit():
    c = keras.Variable(0.5, trainable=False, name="c")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    # Compiled JAX steps see only the variables the model tracks: track c.
    model.robustness_c = c
    model.compile(optimizer="sgd", loss=losses.Cauchy(c=c))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    first = model.evaluate(x, x, verbose=0)
    c.assign(0.05)
    second = model.evaluate(x, x, verbose=0)
    assert second > first  # smaller c, larger Cauchy value for the same residuals
    # One compiled step (8 samples, one batch): its loss is taken before the update, at the c now set.
    history = model.fit(x, x, epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(second, rel=1e-5)
    assert float(c) == pytest.approx(0.05)


def distance_gradient(name, residual, c):
    """d distance / d prediction for a 1-element sample with the given residual."""
    prediction = np.array([[residual]], "float32")
    target = np.zeros((1, 1), "float32")
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return float(jax.grad(lambda p: losses.get(name)(p, target, c)[0])(prediction)[0, 0])
    if backend == "torch":
        import torch

        p = torch.tensor(prediction, requires_grad=True)
        losses.get(name)(p, torch.tensor(target), c)[0].backward()
        return float(p.grad[0, 0])
    import tensorflow as tf

    p = tf.Variable(prediction)
    with tf.GradientTape() as tape:
        value = losses.get(name)(p, target, c)[0]
    return float(tape.gradient(value, p)[0, 0])


def test_gradients_follow_figure_2():
    c = 1.0
    residuals = np.array([10.0, 100.0, 1000.0])
    huber = np.array([distance_gradient("pseudo_huber", r, c) for r in residuals])
    cauchy = np.array([distance_gradient("cauchy", r, c) for r in residuals])
    geman = np.array([distance_gradient("geman_mcclure", r, c) for r in residuals])
    # Independent closed forms of the derivatives in r (m = r^2).
    np.testing.assert_allclose(huber, residuals / np.sqrt(residuals**2 + c**2), rtol=1e-5)
    np.testing.assert_allclose(cauchy, 2 * residuals / (residuals**2 + 2 * c**2), rtol=1e-5)
    np.testing.assert_allclose(geman, 16 * c**2 * residuals / (residuals**2 + 4 * c**2) ** 2, rtol=1e-4)
    # Pseudo-Huber tends to a constant, Cauchy decays like 1/r, Geman-McClure to 0 faster.
    assert huber[-1] == pytest.approx(1.0, rel=1e-5)
    assert cauchy * residuals == pytest.approx([2.0] * 3, rel=0.03)
    assert geman[-1] < 1e-7 and geman[-1] * residuals[-1] < cauchy[-1] * residuals[-1] / 100


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_extremes(name):
    huge = np.full((2, 8), 1e6, "float32")
    zero = np.zeros((2, 8), "float32")
    for prediction, c in [(huge, 1e-6), (zero, 1e-6), (huge, 1e3)]:
        value = ops.convert_to_numpy(losses.get(name)(prediction, zero, c))
        assert np.all(np.isfinite(value)), (prediction[0, 0], c, value)
        for residual in (0.0, 1e6):
            gradient = distance_gradient(name, residual, c)
            assert np.isfinite(gradient), (residual, c, gradient)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_give_finite_float32(name, dtype):
    rng = np.random.default_rng(3)
    prediction = ops.cast(rng.normal(size=(4, 16)) * 200, dtype)
    target = ops.cast(rng.normal(size=(4, 16)), dtype)
    value = losses.get(name)(prediction, target, 1e-3)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert np.all(np.isfinite(ops.convert_to_numpy(value)))
    reference = numpy_distance(name, ops.convert_to_numpy(ops.cast(prediction, "float32")), ops.convert_to_numpy(ops.cast(target, "float32")), 1e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(value), reference, rtol=1e-4)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: losses.get("huber"), "loss"),
        (lambda: losses.cauchy(np.zeros((2, 3)), np.zeros((2, 3)), -1.0), "`c`"),
        (lambda: losses.pseudo_huber(np.zeros((2, 3)), np.zeros((2, 3)), 0.0), "`c`"),
        (lambda: losses.Cauchy(c=-0.5), "`c`"),
        (lambda: losses.GemanMcClure(c="big"), "`c`"),
        (lambda: losses.cauchy(np.zeros(3), np.zeros(3), 1.0), "rank >= 2"),
    ],
)
def test_bad_arguments_raise_value_error(call, words):
    with pytest.raises(ValueError, match=words):
        call()
