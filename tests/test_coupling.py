"""Minibatch OT pairing and the (x0, noise) dataset wrapper."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from keras_lct import coupling


def pairing_cost(x0, noise):
    return float(np.sum((x0.reshape(len(x0), -1) - noise.reshape(len(noise), -1)) ** 2))


@pytest.mark.parametrize("shape", [(16, 2), (12, 4, 4, 3)])
def test_ot_permutation_is_the_optimal_assignment(shape):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=shape).astype("float32")
    noise = rng.normal(size=shape).astype("float32")
    perm = coupling.ot_permutation(x0, noise)
    assert sorted(perm) == list(range(shape[0]))
    paired = coupling.pair_noise(x0, noise)
    np.testing.assert_array_equal(paired, noise[perm])
    flat = lambda a: a.reshape(len(a), -1).astype("float64")
    cost = ((flat(x0)[:, None] - flat(noise)[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    assert pairing_cost(x0, paired) == pytest.approx(cost[rows, cols].sum(), rel=1e-6)
    assert pairing_cost(x0, paired) < pairing_cost(x0, noise)


def test_transport_cost_is_normalized_squared_distance():
    x0 = np.array([[0.0, 0.0], [1.0, 0.0]])
    noise = np.array([[0.0, 2.0], [1.0, 0.0]])
    expected = np.array([[4.0, 1.0], [5.0, 0.0]]) / 5.0
    np.testing.assert_allclose(coupling.transport_cost(x0, noise), expected, atol=1e-12)
    np.testing.assert_array_equal(coupling.transport_cost(np.ones((3, 2)), np.ones((3, 2))), np.zeros((3, 3)))
    assert sorted(coupling.ot_permutation(np.ones((3, 2)), np.ones((3, 2)))) == [0, 1, 2]


def test_array_source_noise_is_reproducible_and_fresh():
    data = np.random.default_rng(1).normal(size=(64, 3)).astype("float32")
    batches = coupling.NoisePairedDataset(data, batch_size=16, seed=3)
    assert len(batches) == 4
    x_a, z_a = batches[0]
    x_b, z_b = batches[1]
    assert x_a.shape == z_a.shape == (16, 3) and z_a.dtype == np.float32
    assert not np.allclose(z_a, z_b)
    again = coupling.NoisePairedDataset(data, batch_size=16, seed=3)
    np.testing.assert_array_equal(again[0][1], z_a)
    batches.on_epoch_end()
    x_next, z_next = batches[0]
    assert not np.allclose(z_next, z_a) and not np.allclose(x_next, x_a)
    every = np.concatenate([batches[i][1] for i in range(4)])
    assert abs(every.mean()) < 0.2 and 0.8 < every.std() < 1.2
    # Each epoch covers every sample once.
    seen = np.concatenate([batches[i][0] for i in range(4)])
    np.testing.assert_array_equal(np.sort(seen, axis=0), np.sort(data, axis=0))


def test_ot_off_gives_the_same_noise_unpermuted():
    data = np.random.default_rng(2).normal(size=(32, 5)).astype("float32")
    with_ot = coupling.NoisePairedDataset(data, batch_size=32, ot=True, seed=4, shuffle=False)[0]
    without = coupling.NoisePairedDataset(data, batch_size=32, ot=False, seed=4, shuffle=False)[0]
    np.testing.assert_array_equal(with_ot[0], without[0])
    np.testing.assert_array_equal(np.sort(with_ot[1], axis=0), np.sort(without[1], axis=0))
    assert pairing_cost(*with_ot) < pairing_cost(*without)


class Batches(keras.utils.PyDataset):
    def __init__(self, data, labels=False):
        super().__init__()
        self.data, self.labels = data, labels

    def __len__(self):
        return len(self.data) // 8

    def __getitem__(self, index):
        x = self.data[index * 8 : (index + 1) * 8]
        return (x, np.zeros(len(x))) if self.labels else x


def test_py_dataset_and_tf_data_sources():
    data = np.random.default_rng(3).normal(size=(32, 2, 2, 1)).astype("float32")
    for source in (Batches(data), Batches(data, labels=True)):
        paired = coupling.NoisePairedDataset(source, seed=0)
        assert len(paired) == 4
        x0, z = paired[2]
        np.testing.assert_array_equal(x0, data[16:24])
        assert z.shape == x0.shape
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(data).batch(8)
    paired = coupling.NoisePairedDataset(dataset, seed=0)
    assert len(paired) == 4
    np.testing.assert_array_equal(paired[1][0], data[8:16])
    np.testing.assert_array_equal(paired[3][0], data[24:32])
    np.testing.assert_array_equal(paired[0][0], data[:8])


class NoiseRegression(keras.Model):
    """Learns y from x: proves fit hands the model (x0, z) batches."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean((self.dense(x) - y) ** 2)


def test_drives_fit_on_every_backend():
    data = np.random.default_rng(4).normal(size=(32, 2)).astype("float32")
    model = NoiseRegression()
    model.compile(optimizer="sgd")
    history = model.fit(coupling.NoisePairedDataset(data, batch_size=16), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))


def test_bad_input():
    good = np.zeros((8, 2), "float32")
    bad = good.copy()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match="sample 5"):
        coupling.NoisePairedDataset(bad, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        coupling.NoisePairedDataset(good, batch_size=1)
    with pytest.raises(ValueError, match="rank"):
        coupling.NoisePairedDataset(np.zeros(8), batch_size=4)
    with pytest.raises(ValueError, match="dtype"):
        coupling.NoisePairedDataset(np.array([["a"], ["b"]]), batch_size=2)
    with pytest.raises(ValueError, match="no samples"):
        coupling.NoisePairedDataset(np.zeros((0, 2)), batch_size=2)
    with pytest.raises(ValueError, match="same shape"):
        coupling.ot_permutation(np.zeros((4, 2)), np.zeros((4, 3)))
    nan_batches = np.random.default_rng(5).normal(size=(24, 2)).astype("float32")
    nan_batches[19, 0] = np.nan
    paired = coupling.NoisePairedDataset(Batches(nan_batches), seed=0)
    paired[0]
    with pytest.raises(ValueError, match="Batch 2 holds NaN"):
        paired[2]


def test_pot_is_imported_without_framework_backends():
    code = (
        "import sys, keras_lct.coupling as c, numpy as np\n"
        "c.ot_permutation(np.zeros((3, 2)), np.ones((3, 2)))\n"
        "import ot.backend as b\n"
        "print(sorted(type(x).__name__ for x in b.get_backend_list()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POT_BACKEND")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['NumpyBackend']"
