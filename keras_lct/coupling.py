"""Minibatch optimal-transport pairing of noise and data, in the input pipeline.

Each batch of clean samples x0 gets a batch of Gaussian noise z, re-assigned by
an exact OT plan so that sum_i ||x0_i - z_perm(i)||^2 is minimal: the noisy
inputs x0 + t z of consistency training then follow straighter paths, which
lowers the variance of training. The pairing runs in NumPy with POT, outside
the compiled step; the model receives `(x0, z)` batches.

Reference: paper section 4.4 and fig. 3; `REFERENCE.md` "Minibatch OT".
"""

import math
import os

import keras
import numpy as np


def _import_pot():
    """Imports POT with only its NumPy backend (0.8 s instead of 5 s)."""
    for framework in ("PYTORCH", "JAX", "TENSORFLOW", "CUPY"):
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{framework}", "1")
    import ot

    return ot


def transport_cost(x0, noise):
    """Squared Euclidean cost between flattened samples, divided by its max.

    Returns:
        float64 matrix `(len(x0), len(noise))` in [0, 1].
    """
    x0 = np.asarray(x0, np.float64).reshape(len(x0), -1)
    noise = np.asarray(noise, np.float64).reshape(len(noise), -1)
    cost = (
        np.sum(x0**2, axis=1)[:, None]
        + np.sum(noise**2, axis=1)[None, :]
        - 2.0 * x0 @ noise.T
    )
    cost = np.maximum(cost, 0.0)
    largest = cost.max()
    return cost / largest if largest > 0 else cost


def ot_permutation(x0, noise):
    """The exact OT assignment of noise samples to data samples.

    Solves the EMD problem between uniform weights on the batch of data and
    the batch of noise (`ot.emd`); for equal batch sizes its plan is a
    permutation matrix scaled by 1/n.

    Args:
        x0: data batch `(n, ...)`.
        noise: noise batch, same shape.

    Returns:
        int array `perm` of length n: `noise[perm[i]]` is paired with `x0[i]`.

    Example:
    >>> perm = ot_permutation(x0, z)
    >>> paired = z[perm]
    """
    x0, noise = _check_pair(x0, noise)
    count = len(x0)
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    ot = _import_pot()
    weights = np.full(count, 1.0 / count)
    plan = ot.emd(weights, weights, transport_cost(x0, noise))
    perm = np.argmax(plan, axis=1)
    if len(np.unique(perm)) != count:  # pragma: no cover - exact EMD plans are permutations
        raise RuntimeError("The OT plan is not a permutation; cannot pair noise and data.")
    return perm


def pair_noise(x0, noise, ot=True):
    """`noise` reordered by `ot_permutation` (or unchanged with `ot=False`)."""
    if not ot:
        _check_pair(x0, noise)
        return noise
    return np.asarray(noise)[ot_permutation(x0, noise)]


def _check_pair(x0, noise):
    x0, noise = np.asarray(x0), np.asarray(noise)
    if x0.shape != noise.shape or x0.ndim < 2:
        raise ValueError(
            "Data and noise batches must have the same shape (batch, ...); received "
            f"{x0.shape} and {noise.shape}."
        )
    return x0, noise


class NoisePairedDataset(keras.utils.PyDataset):
    """Batches `(x0, z)` of clean samples and (OT-paired) Gaussian noise for `fit`.

    Wraps a NumPy array of samples, a `keras.utils.PyDataset` of batches
    (yielding `x` or `(x, ...)`) or a `tf.data.Dataset` of batches. Noise is
    standard normal float32 drawn in NumPy from (seed, epoch, batch index),
    so it differs between batches and epochs and repeats exactly when a run
    is resumed. With `ot=True` (the paper's setting) it is re-assigned to the
    data by `ot_permutation`; with `ot=False` it stays independent.

    Every batch is checked before it reaches the model: NaN/inf values,
    a non-numeric dtype or a rank below 2 raise `ValueError` naming the batch.

    Args:
        data: NumPy array `(num_samples, ...)`, PyDataset or tf.data.Dataset.
        batch_size: samples per batch (array data only).
        ot: pair noise by minibatch OT (True) or not.
        seed: seed of the noise and of the shuffling.
        shuffle: reshuffle array data every epoch.
        drop_remainder: drop a last, smaller batch of array data (default
            True: OT on a batch of 1 pairs nothing).
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.

    Example:
    ```python
    batches = NoisePairedDataset(latents, batch_size=128, ot=True)
    model.fit(batches, epochs=100)
    ```

    Reference: paper section 4.4.
    """

    def __init__(self, data, batch_size=None, ot=True, seed=0, shuffle=True, drop_remainder=True, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.ot = bool(ot)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        if isinstance(data, keras.utils.PyDataset):
            self.source = "py_dataset"
            self._num_batches = len(data)
        elif _is_tf_dataset(data):
            self.source = "tf_data"
            cardinality = int(data.cardinality())
            if cardinality < 0:
                raise ValueError(
                    "NoisePairedDataset needs a tf.data.Dataset of known, finite length; "
                    "call `.apply(tf.data.experimental.assert_cardinality(n))` or `.take(n)` first."
                )
            self._num_batches = cardinality
            self._iterator = None
            self._next_index = 0
        else:
            self.source = "array"
            self.data = _check_array(data)
            if batch_size is None or int(batch_size) < 1:
                raise ValueError(f"`batch_size` must be an integer >= 1 for array data; received {batch_size!r}.")
            self.batch_size = int(batch_size)
            count = len(self.data)
            self._num_batches = count // self.batch_size if drop_remainder else math.ceil(count / self.batch_size)
            if self._num_batches == 0:
                raise ValueError(
                    f"{count} samples make no full batch of {self.batch_size}; lower `batch_size` "
                    "or pass drop_remainder=False."
                )
            self._order = self._epoch_order(0)
        if self.ot and self.source == "array" and self.batch_size == 1:
            raise ValueError("OT pairing needs batches of 2 or more samples: raise `batch_size` or pass ot=False.")

    def __len__(self):
        return self._num_batches

    def __getitem__(self, index):
        x0 = self._batch(index)
        x0 = _check_batch(x0, index)
        if self.ot and len(x0) == 1:
            raise ValueError(f"Batch {index} holds 1 sample: OT pairing needs 2 or more; use larger batches or ot=False.")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        noise = rng.standard_normal(x0.shape, dtype=np.float32)
        return x0, pair_noise(x0, noise, self.ot)

    def on_epoch_end(self):
        self.epoch += 1
        if self.source == "array":
            self._order = self._epoch_order(self.epoch)
        elif self.source == "py_dataset":
            self.data.on_epoch_end()
        else:
            self._iterator = None
            self._next_index = 0

    def _epoch_order(self, epoch):
        count = len(self.data)
        if not self.shuffle:
            return np.arange(count)
        return np.random.default_rng([self.seed, epoch, 2**31 - 1]).permutation(count)

    def _batch(self, index):
        if self.source == "array":
            rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
            return self.data[rows]
        if self.source == "py_dataset":
            batch = self.data[index]
        else:
            if self._iterator is None or index != self._next_index:
                self._iterator = iter(self.data.skip(index))
            batch = next(self._iterator)
            self._next_index = index + 1
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        return keras.ops.convert_to_numpy(batch) if not isinstance(batch, np.ndarray) else batch


def _is_tf_dataset(data):
    module = type(data).__module__
    return module.startswith("tensorflow") and hasattr(data, "cardinality")


def _check_array(data):
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"Data must hold real numbers; received dtype {data.dtype}.")
    if data.ndim < 2:
        raise ValueError(
            f"Data must be samples of rank >= 1, an array (num_samples, ...); received shape {data.shape}. "
            "Reshape vectors of scalars to (num_samples, 1)."
        )
    if len(data) == 0:
        raise ValueError("Data holds no samples.")
    finite = np.isfinite(data.reshape(len(data), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"Data holds NaN or inf values, first at sample {int(np.argmin(finite))}. "
            "Remove or repair those samples before training."
        )
    return data


def _check_batch(x0, index):
    if not np.issubdtype(x0.dtype, np.number) or np.issubdtype(x0.dtype, np.complexfloating):
        raise ValueError(f"Batch {index} holds dtype {x0.dtype}; data must be real numbers.")
    if x0.ndim < 2:
        raise ValueError(f"Batch {index} has shape {x0.shape}; expected (batch, ...) with rank >= 2.")
    finite = np.isfinite(x0.reshape(len(x0), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"Batch {index} holds NaN or inf values (its sample {int(np.argmin(finite))}). "
            "Remove or repair those samples before training."
        )
    return x0.astype(np.float32, copy=False)
