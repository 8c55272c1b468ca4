"""`NoisePairedDataset`: (x0, OT-paired noise) batches for `model.fit`, with class labels if given.

Each batch of clean samples gets a batch of Gaussian noise drawn in NumPy from
(seed, epoch, batch index), re-assigned to the samples by minibatch OT
(`keras_lct.coupling.pair_noise`, within each class when the samples have
labels) before it reaches the compiled step.

Reference: paper section 4.4 and fig. 3.
"""

import math
import threading

import keras
import numpy as np

from keras_lct._validation import check_class_labels
from keras_lct._validation import check_int
from keras_lct._validation import check_seed
from keras_lct.coupling import pair_noise
from keras_lct.data.checks import SelfCheckingDataset
from keras_lct.data.checks import check_samples
from keras_lct.data.checks import checked_float_batch
from keras_lct.data.checks import is_tf_dataset
from keras_lct.data.checks import to_numpy

# Independent random streams of one seed, told apart by the first spawn key.
_NOISE_STREAM = 0
_SHUFFLE_STREAM = 1

_TF_INFINITE_CARDINALITY = -1
_TF_UNKNOWN_CARDINALITY = -2


def _check_shard(shard):
    if shard is None:
        return (0, 1)
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        raise ValueError(f"`shard` must be a pair (index, count); received {shard!r}.")
    count = check_int("shard count", shard[1], minimum=1)
    index = check_int("shard index", shard[0], minimum=0)
    if index >= count:
        raise ValueError(f"`shard` index {index} must be below its count {count}.")
    return (index, count)


class NoisePairedDataset(SelfCheckingDataset):
    """Batches `(x0, z)` or `(x0, z, y)` of clean samples, (OT-paired) Gaussian noise and labels for `fit`.

    Each batch of clean samples x0 gets a batch z of standard normal float32
    noise of the same shape, drawn in NumPy from `(seed, epoch, batch index)`:
    it differs between batches and between epochs, and is the same whenever
    the same batch of the same epoch is drawn again. With `ot=True` (the
    paper's setting) z is re-assigned to the samples by `pair_noise`, with
    `ot=False` the same draw is kept unpaired. `fit` hands the pair to the
    training step as `(x, y)`.

    Class labels: with `labels` every batch is the 3-tuple `(x0, z, y)`, y
    the int32 class indices of the batch's samples, shape `(batch,)` (`fit`
    hands it to the step as its `sample_weight`); without them it is
    `(x0, z)`. With `ot=True` the noise is then paired with the data within
    each class (`pair_noise(..., labels=y)`): the noise rows at the
    positions of class c's samples are re-assigned among those samples by
    the exact OT plan, so each class's noise stays an independent standard
    normal draw, chosen before the data is looked at. The authors' code
    (`sample_plan_with_labels`) instead solves one plan over the whole
    batch and lets each label follow its data sample, pairing noise across
    classes; see `docs/reference.md` "Minibatch OT".

    Epochs: pass `callbacks=[batches.epoch_callback()]` to `fit`. It sets
    `epoch` to fit's own epoch number at the start of every epoch, so noise
    and shuffling follow fit's epochs exactly, and a run resumed with
    `fit(..., initial_epoch=k)` draws the noise and order of the interrupted
    run. Without it, `epoch` advances at every `on_epoch_end` Keras sends,
    which includes one extra call before the first epoch of each `fit`: the
    noise still changes every epoch, but epoch numbers are offset and a
    resumed run starts again from 0. `epoch` may also be set by hand.

    Sources:

    - NumPy array (or anything `np.asarray` accepts) of shape
      `(num_samples, ...)`: checked once up front, batched by `batch_size`,
      reshuffled every epoch from `(seed, epoch)` when `shuffle=True`. A
      memory-mapped array (`np.load(path, mmap_mode="r")`) or an array view
      with `shape`, `dtype`, `len` and row indexing by an index array (such
      as `keras_lct.data.LatentCache.training_data()`) is read batch by
      batch and never copied whole.
    - `keras.utils.PyDataset` of batches `x` or `(x, ...)` (labels and
      sample weights are dropped, unless `labels=True` takes the second
      element as the labels): batch `i` of this dataset is batch `i` of
      the source; the source's `on_epoch_begin`/`on_epoch_end` are forwarded.
    - `tf.data.Dataset` of batches `x` or `(x, ...)` (`(x, y)` with
      `labels=True`, as the PyDataset): read as a stream,
      restarted whenever it is exhausted (so every epoch sees one full pass,
      whatever order `fit` asks for the batch indices). Its length is its
      cardinality; an infinite (`.repeat()`ed) dataset makes an infinite
      dataset that needs `fit(..., steps_per_epoch=...)`. Works on every
      backend; tf.data does its own prefetching, so `workers` > 1 only
      overlaps the OT with the step.

    Every batch is checked before it reaches the model: NaN/inf values, a
    non-numeric dtype, a rank below 2, an empty batch, or a single-sample
    batch with `ot=True` raise a `ValueError` naming the batch index (and
    the first bad sample). Integer data is cast to float32. Labels must be
    integers >= 0, one per sample, of shape `(num_samples,)`: float labels,
    negative labels, another rank or another count than the samples', and a
    batch with no labels from a source read with `labels=True` raise a
    `ValueError` (array labels up front, a source's at the bad batch).

    Args:
        data: NumPy array `(num_samples, ...)`, `keras.utils.PyDataset` or
            `tf.data.Dataset` of clean samples.
        batch_size: samples per batch for array data (default 32, as in
            `fit`). Batched sources set their own batch size: leave it None.
        ot: pair the noise by minibatch OT (True) or keep it independent.
        seed: non-negative int seeding the noise and the shuffling.
        shuffle: reshuffle array data every epoch (array data only).
        drop_remainder: drop the last, smaller batch of array data (default
            True: all batches have `batch_size` samples).
        ot_group_size: pair within consecutive groups of this many samples
            (e.g. the per-device batch under data parallelism, like the
            authors' code); None pairs the whole batch.
        batches_per_epoch: array data: use only the first this-many batches
            of every epoch (e.g. whole gradient-accumulation updates); with
            `shuffle=True` the samples left out change from epoch to epoch.
            None: all full batches.
        shard: `(index, count)`: under data parallelism with several
            processes (torchrun, multi-host jax), this process's part of every
            global batch of `batch_size` samples, rows `index * batch_size /
            count` on, with the same noise and pairing as the whole batch.
            `keras_lct.distribute.DataParallel.shard` gives it. None: whole
            batches.
        labels: the class labels: for array data an integer array
            `(num_samples,)` aligned with the data (shuffled with it, e.g.
            `LatentCache.labels`); for a PyDataset or tf.data source `True`,
            to take each batch's second element `y` of `(x, y)` as its
            labels. None: no labels, batches `(x0, z)`.
        workers: threads (or processes) preparing batches in parallel.
        use_multiprocessing: use processes instead of threads (not with a
            tf.data source).
        max_queue_size: batches prepared ahead when `workers` > 1.

    Example:

    ```python
    latents = np.load("latents.npy")  # (27000, 32, 32, 4), float32
    batches = NoisePairedDataset(latents, batch_size=128, ot=True, seed=0)
    model.fit(batches, epochs=1400, callbacks=[batches.epoch_callback()])
    # Resuming at epoch 700 draws the interrupted run's noise and order:
    model.fit(batches, epochs=1400, initial_epoch=700, callbacks=[batches.epoch_callback()])
    # Class-conditional: (x0, z, y) batches, noise paired within each class.
    labelled = NoisePairedDataset(latents, batch_size=128, labels=classes)  # classes: (27000,) ints
    x0, z, y = labelled[0]
    ```

    Reference: paper section 4.4 and fig. 3.
    """

    def __init__(
        self,
        data,
        batch_size=None,
        ot=True,
        seed=0,
        shuffle=True,
        drop_remainder=True,
        ot_group_size=None,
        batches_per_epoch=None,
        shard=None,
        labels=None,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
    ):
        super().__init__(
            workers=workers,
            use_multiprocessing=use_multiprocessing,
            max_queue_size=max_queue_size,
        )
        self.ot = bool(ot)
        self.seed = check_seed("seed", seed)
        self.shuffle = bool(shuffle)
        self._epoch = 0
        self.ot_group_size = None
        if ot_group_size is not None:
            self.ot_group_size = check_int("ot_group_size", ot_group_size, minimum=2)
        self.shard = _check_shard(shard)

        if labels is False:
            labels = None
        if isinstance(data, keras.utils.PyDataset):
            self.source = "py_dataset"
            self._check_no_batch_size(batch_size, "a keras.utils.PyDataset")
            self.data = data
            self._num_batches = data.num_batches
            self.batch_size = None
        elif is_tf_dataset(data):
            self.source = "tf_data"
            self._check_no_batch_size(batch_size, "a tf.data.Dataset")
            if use_multiprocessing:
                raise ValueError(
                    "A tf.data.Dataset source cannot be read from several processes; pass "
                    "use_multiprocessing=False (tf.data prefetches by itself)."
                )
            self.data = data
            self._stream = _TFDataStream(data)
            self._num_batches = self._stream.num_batches
            self.batch_size = None
        else:
            self.source = "array"
            self.data = check_samples(data)
            if labels is True:
                raise ValueError(
                    "labels=True takes the labels from the (x, y) batches of a PyDataset or tf.data "
                    "source; for array data pass the label array itself: labels=<ints of shape "
                    f"({len(self.data)},)>, one per sample."
                )
            if labels is not None:
                labels = check_class_labels(labels, count=len(self.data), what="The labels")
            batch_size = 32 if batch_size is None else batch_size
            self.batch_size = check_int("batch_size", batch_size, minimum=1)
            count = len(self.data)
            if drop_remainder:
                self._num_batches = count // self.batch_size
            else:
                self._num_batches = math.ceil(count / self.batch_size)
            if self._num_batches == 0:
                raise ValueError(
                    f"The data's {count} samples make no full batch of {self.batch_size}: lower "
                    "`batch_size` or pass drop_remainder=False."
                )
            smallest_batch = self.batch_size
            if not drop_remainder and count % self.batch_size:
                smallest_batch = count % self.batch_size
            if self.ot and smallest_batch == 1:
                raise ValueError(
                    "OT pairing needs batches of 2 or more samples, but "
                    + (
                        "`batch_size` is 1"
                        if self.batch_size == 1
                        else f"the last batch holds 1 sample ({count} samples)"
                    )
                    + ": a batch of 1 has nothing to pair. Use a larger `batch_size` "
                    "(or drop_remainder=True), or pass ot=False."
                )
            self._order = self._epoch_order(0)
        if self.source != "array" and labels is not None and labels is not True:
            raise ValueError(
                f"A {type(data).__name__} source yields its batches, so its labels must come with them: "
                "make it yield (x, labels) batches and pass labels=True (received a label array)."
            )
        self.labels = labels
        if batches_per_epoch is not None:
            if self.source != "array":
                raise ValueError("`batches_per_epoch` applies to array data; a batched source sets its own length.")
            batches_per_epoch = check_int("batches_per_epoch", batches_per_epoch, minimum=1)
            if batches_per_epoch > self._num_batches:
                raise ValueError(
                    f"`batches_per_epoch` ({batches_per_epoch}) exceeds the {self._num_batches} full batches "
                    "of the data."
                )
            self._num_batches = batches_per_epoch
        if self._num_batches == 0:
            raise ValueError(
                f"The {type(data).__name__} source holds no batches: there is no data to train on."
            )

    @property
    def epoch(self):
        """The epoch number keying the noise and the shuffling."""
        return self._epoch

    @epoch.setter
    def epoch(self, value):
        self._epoch = check_int("epoch", value, minimum=0)
        if self.source == "array":
            self._order = self._epoch_order(self._epoch)

    def epoch_callback(self):
        """A callback for `fit` that keeps `epoch` equal to fit's epoch number.

        Returns:
            A `keras.callbacks.Callback` setting `self.epoch = epoch` in its
            `on_epoch_begin(epoch)`, before the epoch's first batch is drawn.

        Example:

        ```python
        model.fit(batches, epochs=10, callbacks=[batches.epoch_callback()])
        ```
        """
        return _EpochSync(self)

    @property
    def num_batches(self):
        """Batches per epoch; `None` for an infinite source."""
        return self._num_batches

    @property
    def num_classes(self):
        """The classes the labels need (largest label + 1): 0 without labels, None for a source's labels.

        Known up front for array labels, so a model's class count can be
        checked before training; the labels of a batched source are known
        batch by batch only.
        """
        if self.labels is None:
            return 0
        if self.labels is True:
            return None
        return int(self.labels.max()) + 1

    def __len__(self):
        if self._num_batches is None:
            raise TypeError(
                "This NoisePairedDataset streams an infinite source and has no length; "
                "pass `steps_per_epoch` to fit."
            )
        return self._num_batches

    def __getitem__(self, index):
        x0, labels = self._clean_batch(index)
        x0 = checked_float_batch(x0, index)
        if self.ot and len(x0) == 1:
            raise ValueError(
                f"Batch {index} holds 1 sample: OT pairing needs 2 or more. Use larger batches, "
                "or pass ot=False."
            )
        noise = _batch_noise(x0.shape, self.seed, self.epoch, index)
        rows = slice(None)
        group = self.ot_group_size
        if self.shard == (0, 1):
            paired = pair_noise(x0, noise, ot=self.ot, group_size=group, labels=labels)
        else:
            part, parts = self.shard
            if len(x0) % parts:
                raise ValueError(
                    f"Batch {index} holds {len(x0)} samples, which do not split into {parts} equal shards; "
                    f"use a batch size that is a multiple of {parts}."
                )
            rows = slice(part * len(x0) // parts, (part + 1) * len(x0) // parts)
            if group is not None and (len(x0) // parts) % group == 0:
                # Pairing is within groups that lie inside this shard: pair this shard alone.
                shard_labels = None if labels is None else labels[rows]
                paired = pair_noise(x0[rows], noise[rows], ot=self.ot, group_size=group, labels=shard_labels)
            else:
                paired = pair_noise(x0, noise, ot=self.ot, group_size=group, labels=labels)[rows]
        if labels is None:
            return x0[rows], paired
        return x0[rows], paired, labels[rows]

    def on_epoch_begin(self):
        if self.source == "py_dataset":
            self.data.on_epoch_begin()

    def on_epoch_end(self):
        self.epoch += 1
        if self.source == "py_dataset":
            self.data.on_epoch_end()

    def _clean_batch(self, index):
        """`(x0, labels or None)` of batch `index`, as read from the source."""
        if self.source == "array":
            rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
            return np.asarray(self.data[rows]), None if self.labels is None else self.labels[rows]
        if self.source == "py_dataset":
            batch = self.data[index]
        else:
            batch = self._stream.next_batch()
        labels = None
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError(
                    f"Batch {index} of the source is an empty tuple; expected x or (x, ...)."
                )
            labels = batch[1] if len(batch) > 1 else None
            batch = batch[0]
        if isinstance(batch, dict):
            raise ValueError(
                f"Batch {index} of the source is a dict; NoisePairedDataset needs the samples "
                "as an array x or a tuple (x, ...). Map the source to its samples first."
            )
        if self.labels is None:
            return to_numpy(batch), None
        if labels is None:
            raise ValueError(
                f"Batch {index} of the source holds no labels: with labels=True every batch must be "
                "(x, labels), the labels second. Make the source yield them, or pass labels=None to "
                "train without labels."
            )
        x0 = to_numpy(batch)
        return x0, check_class_labels(to_numpy(labels), count=len(x0), what=f"The labels of batch {index}")

    def _epoch_order(self, epoch):
        count = len(self.data)
        if not self.shuffle:
            return np.arange(count)
        key = np.random.SeedSequence(self.seed, spawn_key=(_SHUFFLE_STREAM, epoch))
        return np.random.default_rng(key).permutation(count)

    @staticmethod
    def _check_no_batch_size(batch_size, source):
        if batch_size is not None:
            raise ValueError(
                f"`batch_size` applies to array data only; {source} yields batches already "
                f"(received batch_size={batch_size!r}). Batch the source itself and leave "
                "`batch_size` unset."
            )


class _EpochSync(keras.callbacks.Callback):
    """Sets a `NoisePairedDataset`'s epoch to fit's epoch number."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.epoch = epoch


class _TFDataStream:
    """Reads a `tf.data.Dataset` in order, restarting it whenever it runs out.

    Thread-safe, for PyDataset workers. Batch indices are not positions: a
    stream has no cheap random access, and `fit` asks for indices in shuffled
    order.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        cardinality = int(dataset.cardinality())
        if cardinality == _TF_UNKNOWN_CARDINALITY:
            raise ValueError(
                "The tf.data.Dataset has an unknown number of batches (e.g. after `filter`). "
                "State it with `dataset.apply(tf.data.experimental.assert_cardinality(n))`, "
                "or `.repeat()` the dataset and pass `steps_per_epoch` to fit."
            )
        self.num_batches = None if cardinality == _TF_INFINITE_CARDINALITY else cardinality
        self._iterator = None
        self._lock = threading.Lock()

    def next_batch(self):
        with self._lock:
            if self._iterator is None:
                self._iterator = self.dataset.as_numpy_iterator()
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = self.dataset.as_numpy_iterator()
                return next(self._iterator)


def _batch_noise(shape, seed, epoch, index):
    """Standard normal float32 noise, a pure function of (seed, epoch, index)."""
    key = np.random.SeedSequence(seed, spawn_key=(_NOISE_STREAM, int(epoch), int(index)))
    return np.random.default_rng(key).standard_normal(shape, dtype=np.float32)
