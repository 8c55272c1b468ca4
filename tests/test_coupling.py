"""Minibatch OT pairing (paper section 4.4) and the (x0, noise) dataset wrapper."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from keras_lct import coupling


def pairing_cost(x0, noise):
    """sum_i ||x0_i - noise_i||^2 in float64."""
    difference = x0.reshape(len(x0), -1).astype("float64") - noise.reshape(len(noise), -1)
    return float(np.sum(difference**2))


def optimal_pairing_cost(x0, noise):
    """The optimum found independently, by the Hungarian algorithm."""
    flat_x0 = x0.reshape(len(x0), -1).astype("float64")
    flat_noise = noise.reshape(len(noise), -1).astype("float64")
    cost = ((flat_x0[:, None] - flat_noise[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


class Batches(keras.utils.PyDataset):
    """A PyDataset source yielding batches of 8 samples, as `x` or `(x, labels)`."""

    def __init__(self, data, labels=False):
        super().__init__()
        self.data, self.labels = data, labels
        self.epochs_ended = 0

    def __len__(self):
        return len(self.data) // 8

    def __getitem__(self, index):
        x = self.data[index * 8 : (index + 1) * 8]
        return (x, np.zeros(len(x))) if self.labels else x

    def on_epoch_end(self):
        self.epochs_ended += 1


def tf_batches(data, batch_size=8):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)


@pytest.mark.parametrize("shape", [(2, 3), (16, 2), (33, 5), (12, 4, 4, 3)])
def test_ot_permutation_is_the_optimal_assignment(shape):
    rng = np.random.default_rng(shape[0])
    x0 = rng.normal(size=shape).astype("float32")
    noise = rng.normal(size=shape).astype("float32")
    perm = coupling.ot_permutation(x0, noise)
    assert perm.dtype == np.int64
    np.testing.assert_array_equal(np.sort(perm), np.arange(shape[0]))
    paired = coupling.pair_noise(x0, noise)
    np.testing.assert_array_equal(paired, noise[perm])
    assert pairing_cost(x0, paired) == pytest.approx(optimal_pairing_cost(x0, noise), rel=1e-6)


def test_ot_pairing_never_raises_the_transport_cost():
    rng = np.random.default_rng(7)
    for _ in range(20):
        count = int(rng.integers(2, 40))
        # Clustered, shifted data: far from the noise, as real latents are.
        x0 = rng.normal(size=(count, 6)) * rng.uniform(0.1, 3) + rng.normal(size=(1, 6))
        noise = rng.normal(size=(count, 6))
        paired = coupling.pair_noise(x0, noise)
        assert pairing_cost(x0, paired) <= pairing_cost(x0, noise) + 1e-9
    # Noise already optimally ordered (data = noise) stays in place.
    noise = rng.normal(size=(16, 3))
    np.testing.assert_array_equal(coupling.ot_permutation(noise, noise), np.arange(16))


def test_transport_cost_is_the_normalized_squared_distance():
    x0 = np.array([[0.0, 0.0], [1.0, 0.0]])
    noise = np.array([[0.0, 2.0], [1.0, 0.0]])
    expected = np.array([[4.0, 1.0], [5.0, 0.0]]) / 5.0
    np.testing.assert_allclose(coupling.transport_cost(x0, noise), expected, atol=1e-12)


def test_equal_samples_give_a_zero_cost_and_still_a_permutation():
    same = np.ones((5, 2, 2), "float32")
    cost = coupling.transport_cost(same, same)
    np.testing.assert_array_equal(cost, np.zeros((5, 5)))
    np.testing.assert_array_equal(np.sort(coupling.ot_permutation(same, same)), np.arange(5))


def test_a_plan_that_is_no_permutation_is_rejected():
    identity = np.eye(4) / 4
    np.testing.assert_array_equal(coupling._permutation_from_plan(identity), np.arange(4))
    with pytest.raises(RuntimeError, match="not a permutation"):
        coupling._permutation_from_plan(np.full((4, 4), 1 / 16))


def test_ot_off_and_grouped_pairing():
    rng = np.random.default_rng(8)
    x0 = rng.normal(size=(8, 3)).astype("float32") + 2.0
    noise = rng.normal(size=(8, 3)).astype("float32")
    np.testing.assert_array_equal(coupling.pair_noise(x0, noise, ot=False), noise)
    grouped = coupling.pair_noise(x0, noise, group_size=4)
    for group in (slice(0, 4), slice(4, 8)):
        np.testing.assert_array_equal(np.sort(grouped[group], 0), np.sort(noise[group], 0))
        expected = optimal_pairing_cost(x0[group], noise[group])
        assert pairing_cost(x0[group], grouped[group]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        coupling.pair_noise(x0, noise, group_size=3)
    batches = coupling.NoisePairedDataset(x0, batch_size=8, shuffle=False, ot_group_size=4)
    expected = coupling.pair_noise(x0, coupling._batch_noise((8, 3), 0, 0, 0), group_size=4)
    np.testing.assert_array_equal(batches[0][1], expected)


def test_array_source_noise_is_reproducible_fresh_and_standard_normal():
    data = np.random.default_rng(1).normal(size=(64, 16)).astype("float32")
    batches = coupling.NoisePairedDataset(data, batch_size=16, seed=3)
    assert len(batches) == 4 and batches.num_batches == 4
    epoch0 = [batches[i] for i in range(4)]
    x_first, z_first = epoch0[0]
    assert x_first.shape == z_first.shape == (16, 16) and z_first.dtype == np.float32
    assert not np.allclose(np.sort(z_first, 0), np.sort(epoch0[1][1], 0))
    # Same (seed, epoch, index): same batch, whatever the access order.
    np.testing.assert_array_equal(batches[0][1], z_first)
    again = coupling.NoisePairedDataset(data, batch_size=16, seed=3)
    np.testing.assert_array_equal(again[0][1], z_first)
    other_seed = coupling.NoisePairedDataset(data, batch_size=16, seed=4)
    assert not np.allclose(np.sort(other_seed[0][1], 0), np.sort(z_first, 0))
    # Every epoch covers each sample once, in a new order, with new noise.
    batches.on_epoch_end()
    assert batches.epoch == 1
    epoch1 = [batches[i] for i in range(4)]
    for epoch in (epoch0, epoch1):
        seen = np.concatenate([x for x, _ in epoch])
        np.testing.assert_array_equal(np.sort(seen, axis=0), np.sort(data, axis=0))
    assert not np.array_equal(epoch1[0][0], x_first)
    assert not np.allclose(np.sort(epoch1[0][1], 0), np.sort(z_first, 0))
    # A run resumed at epoch 1 draws the same order and noise.
    resumed = coupling.NoisePairedDataset(data, batch_size=16, seed=3)
    resumed.epoch = 1
    for index in range(4):
        np.testing.assert_array_equal(resumed[index][0], epoch1[index][0])
        np.testing.assert_array_equal(resumed[index][1], epoch1[index][1])
    noise = np.concatenate([z for _, z in epoch0 + epoch1])
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    assert abs(np.mean(noise**3)) < 0.15 and abs(np.mean(noise**4) - 3.0) < 0.3


def test_ot_off_gives_the_same_noise_unpermuted():
    data = np.random.default_rng(2).normal(size=(32, 5)).astype("float32") + 1.0
    kwargs = dict(batch_size=32, seed=4, shuffle=False)
    x_ot, z_ot = coupling.NoisePairedDataset(data, ot=True, **kwargs)[0]
    x_plain, z_plain = coupling.NoisePairedDataset(data, ot=False, **kwargs)[0]
    np.testing.assert_array_equal(x_ot, x_plain)
    np.testing.assert_array_equal(z_plain, coupling._batch_noise((32, 5), 4, 0, 0))
    # Same multiset of noise rows, OT-ordered: the optimal pairing.
    perm = coupling.ot_permutation(x_plain, z_plain)
    np.testing.assert_array_equal(z_ot, z_plain[perm])
    assert not np.array_equal(perm, np.arange(32))
    optimum = optimal_pairing_cost(x_plain, z_plain)
    assert pairing_cost(x_ot, z_ot) == pytest.approx(optimum, rel=1e-6)
    assert pairing_cost(x_ot, z_ot) < pairing_cost(x_plain, z_plain)


def test_array_batches_keep_a_remainder_on_request():
    data = np.arange(20, dtype="float32").reshape(10, 2)
    assert len(coupling.NoisePairedDataset(data, batch_size=4)) == 2
    batches = coupling.NoisePairedDataset(data, batch_size=4, drop_remainder=False, shuffle=False)
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[2][0], data[8:])
    int_batch = coupling.NoisePairedDataset(np.ones((4, 2), "int32"), batch_size=2)[0][0]
    assert int_batch.dtype == np.float32


def test_py_dataset_source():
    data = np.random.default_rng(3).normal(size=(32, 2, 2, 1)).astype("float32")
    for source in (Batches(data), Batches(data, labels=True)):
        paired = coupling.NoisePairedDataset(source, seed=0)
        assert len(paired) == 4
        x0, z = paired[2]
        np.testing.assert_array_equal(x0, data[16:24])
        assert z.shape == x0.shape and z.dtype == np.float32
        assert pairing_cost(x0, z) == pytest.approx(optimal_pairing_cost(x0, z), rel=1e-6)
        paired.on_epoch_end()
        assert source.epochs_ended == 1 and paired.epoch == 1


def test_tf_data_source_is_streamed_one_full_pass_per_epoch():
    data = np.random.default_rng(4).normal(size=(32, 3)).astype("float32")
    labels = np.zeros(32, "int32")
    paired = coupling.NoisePairedDataset(tf_batches((data, labels)), seed=0)
    assert len(paired) == 4
    # Indices are noise keys; the data comes in stream order, restarting when exhausted.
    order = [paired[index][0] for index in (3, 0, 2, 1, 1)]
    np.testing.assert_array_equal(np.concatenate(order[:4]), data)
    np.testing.assert_array_equal(order[4], data[:8])
    expected_noise = coupling._batch_noise((8, 3), 0, 0, 1)
    np.testing.assert_array_equal(np.sort(paired[1][1], 0), np.sort(expected_noise, 0))
    infinite = coupling.NoisePairedDataset(tf_batches(data).repeat(), seed=0)
    assert infinite.num_batches is None
    with pytest.raises(ValueError, match="unknown number of batches"):
        coupling.NoisePairedDataset(tf_batches(data).filter(lambda x: True))
    with pytest.raises(ValueError, match="use_multiprocessing"):
        coupling.NoisePairedDataset(tf_batches(data), use_multiprocessing=True)


class NoiseRegression(keras.Model):
    """Regresses y on x: its loss proves that fit hands the step (x0, z)."""

    def __init__(self, dimension):
        super().__init__()
        self.dense = keras.layers.Dense(dimension)

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean((self.dense(x) - y) ** 2)


def expected_epoch_loss(model, batches):
    """Mean over the epoch's batches of the model's loss, computed in NumPy."""
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in model.dense.weights)
    pairs = [batches[index] for index in range(len(batches))]
    return float(np.mean([np.mean((x @ kernel + bias - z) ** 2) for x, z in pairs]))


def frozen_noise_regression(dimension):
    """A built model whose weights fit cannot change (learning rate 0)."""
    model = NoiseRegression(dimension)
    model(np.zeros((1, dimension), "float32"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    return model


@pytest.mark.parametrize("source", ["array", "py_dataset", "tf_data", "array_2_workers"])
def test_drives_fit_with_x0_and_paired_noise(source):
    data = np.random.default_rng(5).normal(size=(16, 3)).astype("float32")

    def make_batches():
        if source == "array":
            return coupling.NoisePairedDataset(data, batch_size=8, seed=1)
        if source == "array_2_workers":
            return coupling.NoisePairedDataset(data, batch_size=8, seed=1, workers=2)
        if source == "py_dataset":
            return coupling.NoisePairedDataset(Batches(data, labels=True), seed=1)
        return coupling.NoisePairedDataset(tf_batches(data), seed=1)

    model = frozen_noise_regression(3)
    batches = make_batches()
    # A tf.data source is a stream: keep fit's batch order so the reference sees the same pairs.
    history = model.fit(
        batches,
        epochs=1,
        shuffle=source != "tf_data",
        callbacks=[batches.epoch_callback()],
        verbose=0,
    )
    assert int(model.optimizer.iterations) == 2
    # The reported loss is the mean loss of the epoch's batches: (x0, z) reached the step.
    expected = expected_epoch_loss(model, make_batches())
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_epoch_callback_follows_fit_epochs_and_resumes():
    data = np.random.default_rng(6).normal(size=(16, 2)).astype("float32")
    model = frozen_noise_regression(2)
    batches = coupling.NoisePairedDataset(data, batch_size=8, seed=2)
    callbacks = [batches.epoch_callback()]
    history = model.fit(batches, epochs=3, initial_epoch=1, callbacks=callbacks, verbose=0)
    assert int(model.optimizer.iterations) == 4
    reference = coupling.NoisePairedDataset(data, batch_size=8, seed=2)
    for loss, epoch in zip(history.history["loss"], (1, 2)):
        reference.epoch = epoch
        assert loss == pytest.approx(expected_epoch_loss(model, reference), rel=1e-5)
    assert history.history["loss"][0] != pytest.approx(history.history["loss"][1], rel=1e-3)


def test_fit_without_the_callback_still_draws_new_noise_every_epoch():
    data = np.random.default_rng(6).normal(size=(16, 2)).astype("float32")
    model = frozen_noise_regression(2)
    batches = coupling.NoisePairedDataset(data, batch_size=16)
    history = model.fit(batches, epochs=3, verbose=0)
    assert int(model.optimizer.iterations) == 3 and batches.epoch >= 3
    losses = history.history["loss"]
    assert len(set(np.round(losses, 5))) == 3 and np.all(np.isfinite(losses))


def test_bad_array_input_is_refused_up_front():
    good = np.zeros((8, 2), "float32")
    bad = good.copy()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf values, first in sample 5"):
        coupling.NoisePairedDataset(bad, batch_size=4)
    with pytest.raises(ValueError, match="batch_size` is 1.*larger `batch_size`.*ot=False"):
        coupling.NoisePairedDataset(good, batch_size=1)
    assert len(coupling.NoisePairedDataset(good, batch_size=1, ot=False)) == 8
    with pytest.raises(ValueError, match="last batch holds 1 sample"):
        coupling.NoisePairedDataset(np.zeros((9, 2)), batch_size=4, drop_remainder=False)
    with pytest.raises(ValueError, match="rank 1.*rank >= 2"):
        coupling.NoisePairedDataset(np.zeros(8), batch_size=4)
    with pytest.raises(ValueError, match="dtype <U1.*real numbers"):
        coupling.NoisePairedDataset(np.array([["a"], ["b"]]), batch_size=2)
    with pytest.raises(ValueError, match="dtype bool"):
        coupling.NoisePairedDataset(np.zeros((4, 2), bool), batch_size=2)
    with pytest.raises(ValueError, match="no samples"):
        coupling.NoisePairedDataset(np.zeros((0, 2)), batch_size=2)
    with pytest.raises(ValueError, match="make no full batch"):
        coupling.NoisePairedDataset(good, batch_size=16)
    with pytest.raises(ValueError, match="batch_size` must be an integer >= 1"):
        coupling.NoisePairedDataset(good, batch_size=0)
    with pytest.raises(ValueError, match="batch_size` applies to array data only"):
        coupling.NoisePairedDataset(Batches(good), batch_size=8)
    with pytest.raises(ValueError, match="same shape"):
        coupling.ot_permutation(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="finite"):
        coupling.ot_permutation(np.full((2, 2), np.nan), np.zeros((2, 2)))


def test_bad_batches_of_a_source_are_refused_at_that_batch():
    data = np.random.default_rng(7).normal(size=(24, 2)).astype("float32")
    data[19, 0] = np.nan
    for source in (Batches(data), tf_batches(data)):
        paired = coupling.NoisePairedDataset(source, seed=0)
        paired[0], paired[1]  # clean batches pass
        with pytest.raises(ValueError, match="Batch 2 holds NaN or inf values.*its sample 3"):
            paired[2]
    single = coupling.NoisePairedDataset(tf_batches(np.zeros((9, 2), "float32")))
    single[0]
    with pytest.raises(ValueError, match="Batch 1 holds 1 sample.*ot=False"):
        single[1]
    scalars = coupling.NoisePairedDataset(tf_batches(np.zeros(16, "float32")))
    with pytest.raises(ValueError, match="Batch 0 has shape \\(8,\\), of rank 1"):
        scalars[0]
    strings = coupling.NoisePairedDataset(Batches(np.array([["a"]] * 16)))
    with pytest.raises(ValueError, match="Batch 0 has dtype"):
        strings[0]
    with pytest.raises(ValueError, match="holds no batches"):
        coupling.NoisePairedDataset(Batches(np.zeros((0, 2))))
    with pytest.raises(ValueError, match="holds no batches"):
        coupling.NoisePairedDataset(tf_batches(np.zeros((0, 2), "float32")))


def test_fit_stops_at_the_first_bad_batch_before_any_step():
    data = np.random.default_rng(8).normal(size=(16, 2)).astype("float32")
    data[2, 1] = np.nan
    model = frozen_noise_regression(2)
    steps = []
    count_steps = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append(batch)
    )
    with pytest.raises(ValueError, match="Batch 0 holds NaN"):
        model.fit(
            coupling.NoisePairedDataset(Batches(data)),
            epochs=1,
            shuffle=False,
            callbacks=[count_steps],
            verbose=0,
        )
    assert steps == []


def test_pot_is_imported_lazily_without_framework_backends():
    code = (
        "import os, sys\n"
        "import keras_lct.coupling as coupling, numpy as np\n"
        "assert 'ot' not in sys.modules, 'POT imported eagerly'\n"
        "coupling.ot_permutation(np.zeros((3, 2)), np.ones((3, 2)))\n"
        "import ot.backend as backend\n"
        "flags = [os.environ.get('POT_BACKEND_DISABLE_' + name) for name in\n"
        "         ('PYTORCH', 'JAX', 'TENSORFLOW', 'CUPY')]\n"
        "print(flags)\n"
        "print(sorted(b.__name__ for b in backend.get_available_backend_implementations()))\n"
        "print([backend.torch, backend.jax, backend.tf, backend.cp])\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("POT_BACKEND")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    flags, backends, modules = result.stdout.strip().splitlines()[-3:]
    assert flags == "['1', '1', '1', '1']"
    assert backends == "['NumpyBackend']"
    assert modules == "[False, False, False, False]"
