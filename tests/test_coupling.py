"""Minibatch OT pairing (paper section 4.4): optimality against the Hungarian algorithm."""

import os
import subprocess
import sys

import numpy as np
import pytest
from ot_costs import brute_force_permutation
from ot_costs import optimal_pairing_cost
from ot_costs import pairing_cost

from keras_lct import coupling

# NumPy-only code (and subprocesses of it): nothing here reaches Keras' backend.
pytestmark = pytest.mark.backend_neutral


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


def noise_rows_used(paired, noise):
    """For each row of `paired`, the index of the (unique) noise row it is."""
    matches = (paired[:, None] == noise[None]).all(axis=-1)
    assert (matches.sum(axis=1) == 1).all()
    return np.argmax(matches, axis=1)


@pytest.mark.parametrize("group_size", [None, 6])
def test_labelled_pairing_is_the_optimal_permutation_within_each_class(group_size):
    rng = np.random.default_rng(10)
    labels = np.array([2, 0, 2, 1, 0, 2, 7, 0, 2, 1, 2, 0])
    # Classes far apart: pairing across classes would be cheaper, so a pairing that ignores labels fails.
    x0 = rng.normal(size=(12, 3)) + 2.0 * labels[:, None]
    noise = rng.normal(size=(12, 3))
    paired = coupling.pair_noise(x0, noise, group_size=group_size, labels=labels)
    used = noise_rows_used(paired, noise)
    np.testing.assert_array_equal(np.sort(used), np.arange(12))  # every noise row once
    for group in (np.arange(12),) if group_size is None else (np.arange(6), np.arange(6, 12)):
        for label in np.unique(labels[group]):
            rows = group[labels[group] == label]
            # The class gets the noise rows at its own positions, in the order of least cost.
            best = brute_force_permutation(x0[rows], noise[rows])
            np.testing.assert_array_equal(used[rows], rows[best])
    assert pairing_cost(x0, paired) > optimal_pairing_cost(x0, noise) * 1.01
    np.testing.assert_array_equal(coupling.pair_noise(x0, noise, ot=False, labels=labels), noise)


def test_a_class_of_one_keeps_its_noise_row():
    x0 = np.array([[0.0], [1.0], [5.0]])
    noise = np.array([[5.0], [1.0], [0.0]])
    paired = coupling.pair_noise(x0, noise, labels=[0, 1, 1])
    np.testing.assert_array_equal(paired, [[5.0], [0.0], [1.0]])  # class 1 swaps; class 0 keeps row 0


def test_bad_labels_are_refused():
    x0, noise = np.zeros((4, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match="dtype float64; class labels are integers.*astype"):
        coupling.pair_noise(x0, noise, labels=np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="3 labels for 4 samples"):
        coupling.pair_noise(x0, noise, labels=[0, 1, 0])
    with pytest.raises(ValueError, match="negative label -1"):
        coupling.pair_noise(x0, noise, labels=[0, -1, 0, 1])
    with pytest.raises(ValueError, match="shape \\(4, 1\\).*\\(num_samples,\\)"):
        coupling.pair_noise(x0, noise, labels=[[0], [1], [0], [1]])


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        coupling.ot_permutation(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="finite"):
        coupling.ot_permutation(np.full((2, 2), np.nan), np.zeros((2, 2)))


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
