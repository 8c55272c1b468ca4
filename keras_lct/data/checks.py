"""Checks of what `fit` receives: bad data stops training before it reaches the weights.

`check_samples` scans arrays (and memory maps, block by block) once, up front;
`checked_batches` wraps the sources `fit` reads batch by batch (a `PyDataset`,
a `tf.data.Dataset`, a generator, a torch `DataLoader`) so that each batch
is checked as it is read. Errors name the batch or sample and say what to do.
Frameworks' tensors and datasets are recognized by their module names,
without importing the frameworks.
"""

import math
import types

import keras
import numpy as np

from keras_lct._validation import check_float_data
from keras_lct._validation import finite_samples
from keras_lct.backend import fit_guards

# Samples per block when scanning a whole array for NaN/inf.
_SCAN_ELEMENTS = 1 << 22


class SelfCheckingDataset(keras.utils.PyDataset):
    """A `PyDataset` that checks its own batches: `checked_batches` passes it through as it is."""


def is_tf_dataset(data):
    # Detected by module name: importing TensorFlow just to check would cost seconds.
    return hasattr(data, "as_numpy_iterator") and any(
        cls.__module__.startswith("tensorflow.python.data") for cls in type(data).__mro__
    )


def is_tensor(data):
    """Whether `data` is a torch, tensorflow or jax tensor (detected without importing them)."""
    return hasattr(data, "shape") and hasattr(data, "dtype") and type(data).__module__.startswith(
        ("torch", "tensorflow", "jax")  # jaxlib too
    )


def to_numpy(batch):
    """A NumPy view or copy of an array or a torch / tensorflow / jax tensor."""
    if type(batch).__module__.startswith("torch"):
        batch = batch.detach().cpu()
    return np.asarray(batch)


def check_samples(data):
    """Checks an array of samples once, up front, so training never starts on bad data.

    Raises:
        ValueError: for a non-float dtype (integer images: with how to scale
            them), rank < 2, no samples, or NaN/inf (naming the first bad
            sample).
    """
    if not _is_array_view(data):
        data = np.asarray(data)
    check_float_data(data.dtype, "The data")
    if len(data.shape) < 2:
        raise ValueError(
            f"The data has shape {data.shape}, of rank {len(data.shape)}; expected an array "
            "(num_samples, ...) of rank >= 2. Reshape scalar samples to (num_samples, 1)."
        )
    if len(data) == 0:
        raise ValueError(f"The data holds no samples (shape {data.shape}).")
    sample_size = max(1, math.prod(data.shape[1:]))
    block = max(1, _SCAN_ELEMENTS // sample_size)
    for start in range(0, len(data), block):
        rows = np.asarray(data[start : start + block]).reshape(-1, sample_size)
        finite = finite_samples(rows)
        if not finite.all():
            sample = start + int(np.argmin(finite))
            raise ValueError(
                f"The data holds NaN or inf values, first in sample {sample}. Remove or "
                "repair those samples before training."
            )
    return data


def _is_array_view(data):
    """An array-like read row by row (a memory map, a lazy view), not converted whole."""
    if isinstance(data, np.memmap):
        return True
    return not isinstance(data, np.ndarray) and all(
        hasattr(data, attribute) for attribute in ("shape", "dtype", "__len__", "__getitem__")
    ) and not is_tensor(data)


def checked_float_batch(x0, index):
    """Checks one batch and returns it as float32."""
    check_float_data(x0.dtype, f"Batch {index}")
    if x0.ndim < 2:
        raise ValueError(
            f"Batch {index} has shape {x0.shape}, of rank {x0.ndim}; expected a batch "
            "(batch_size, ...) of rank >= 2. Reshape scalar samples to (batch_size, 1)."
        )
    if len(x0) == 0:
        raise ValueError(f"Batch {index} holds no samples (shape {x0.shape}).")
    x0 = x0.astype(np.float32, copy=False)
    finite = finite_samples(x0)
    if not finite.all():
        raise ValueError(
            f"Batch {index} holds NaN or inf values (or values beyond the float32 range), first "
            f"in its sample {int(np.argmin(finite))}. Remove or repair those samples before "
            "training."
        )
    return x0


def checked_batches(data):
    """`data` for `fit`, with every batch checked for NaN/inf before the step gets it.

    Wraps the sources `fit` reads batch by batch, so that a bad batch stops
    training with an error naming it before it reaches the weights: a
    `keras.utils.PyDataset` (checked in `__getitem__`, workers kept), a
    `tf.data.Dataset` (an assertion in the pipeline), a Python generator and
    a torch `DataLoader` with a length (read as a generator of its passes:
    `ConsistencyModel.fit` then sets `steps_per_epoch=len(loader)`).
    NumPy arrays (checked whole by `check_samples`), a `SelfCheckingDataset`
    such as `NoisePairedDataset` and other inputs are returned as they are.
    """
    if isinstance(data, SelfCheckingDataset):
        return data
    if isinstance(data, keras.utils.PyDataset):
        return _FiniteBatches(data)
    if is_tf_dataset(data):
        return _finite_tf_batches(data)
    if isinstance(data, types.GeneratorType):
        return (check_finite_batch(batch, index) for index, batch in enumerate(data))
    if _is_sized_torch_data_loader(data):
        return _finite_loader_batches(data)
    return data


def _is_sized_torch_data_loader(data):
    if not any(cls.__module__.startswith("torch.utils.data") and cls.__name__ == "DataLoader" for cls in type(data).__mro__):
        return False
    try:
        return len(data) > 0
    except TypeError:  # an IterableDataset without a length: read as it is
        return False


def _finite_loader_batches(loader):
    """A torch DataLoader's batches, checked, pass after pass (one pass per epoch of `len(loader)` steps)."""
    while True:
        for index, batch in enumerate(loader):
            # Keras takes a DataLoader's bare tensors and lists, but a generator's batches as tuples only.
            batch = check_finite_batch(batch, index)
            yield tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def check_finite_batch(batch, index):
    """Raises ValueError if a float array of `batch` (x or a tuple (x, y, ...)) holds NaN/inf."""
    for position, part in enumerate(keras.tree.flatten(batch)):
        if part is None or not hasattr(part, "dtype"):
            continue
        array = to_numpy(part)
        if np.issubdtype(array.dtype, np.floating) and array.size and not np.isfinite(array).all():
            rows = finite_samples(array) if array.ndim else np.zeros(1, bool)
            raise ValueError(
                f"Batch {index} holds NaN or inf values (array {position} of the batch, first in its "
                f"sample {int(np.argmin(rows))}); training stopped before the batch reached the "
                "weights. Remove or repair those samples."
            )
    return batch


class _FiniteBatches(keras.utils.PyDataset):
    """A PyDataset whose batches are checked by `check_finite_batch`."""

    def __init__(self, source):
        super().__init__(
            workers=source.workers, use_multiprocessing=source.use_multiprocessing, max_queue_size=source.max_queue_size
        )
        self.source = source

    def __len__(self):
        return len(self.source)

    @property
    def num_batches(self):
        return self.source.num_batches

    def __getitem__(self, index):
        return check_finite_batch(self.source[index], index)

    def on_epoch_begin(self):
        self.source.on_epoch_begin()

    def on_epoch_end(self):
        self.source.on_epoch_end()


def _finite_tf_batches(dataset):
    import tensorflow as tf

    def check(index, *element):
        element = element[0] if len(element) == 1 else element
        checks = [
            tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(part)),
                ["Training stopped before a batch holding NaN or inf values reached the weights; "
                 "remove or repair those samples. Batch index:", index],
            )
            for part in tf.nest.flatten(element)
            if part.dtype.is_floating
        ]
        with tf.control_dependencies(checks):
            return tf.nest.map_structure(tf.identity, element)

    return dataset.enumerate().map(check)


def check_training_batch(batch, data_shape, name="batch"):
    """`batch` for the training step, or an error if its samples are not of `data_shape`.

    Runs when the step is traced (or eagerly): a shape known then is checked
    at once; a sample dimension unknown until the step runs (tensorflow
    reading a `PyDataset` whose first batches differ in shape) is checked
    then, by `keras_lct.backend.fit_guards.check_sample_shape`.
    """
    message = (
        f"This ConsistencyModel was built for samples of shape {data_shape}; the {name} "
        f"has samples of shape {tuple(batch.shape[1:])} (batch shape {tuple(batch.shape)}). "
        "Pass data of the built shape, or build a new model for this one."
    )
    shape = tuple(batch.shape[1:])
    if len(shape) != len(data_shape) or any(
        size is not None and size != expected for size, expected in zip(shape, data_shape)
    ):
        raise ValueError(message)
    if None in shape:
        return fit_guards.check_sample_shape(batch, data_shape, message)
    return batch
