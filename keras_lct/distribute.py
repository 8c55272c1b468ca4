"""Data-parallel training on every visible device, with the same `model.fit`.

`data_parallel()` sets up the active backend's own engine and returns a
`DataParallel` that says how the work is split:

- jax: `keras.distribution.DataParallel` over `keras.distribution.list_devices()`
  (multi-host after `keras.distribution.initialize()`, which reads
  `KERAS_DISTRIBUTION_*` or the TPU environment). One program runs on
  global arrays; every process feeds its own part of each global batch.
- tensorflow: `tf.distribute.TPUStrategy` on a TPU, `MultiWorkerMirroredStrategy`
  under `TF_CONFIG`, else `MirroredStrategy` over the GPUs (or the logical
  CPUs). Build and compile the model in `scope()`.
- torch: the process group of `torchrun` (nccl on GPUs, gloo on CPU), one
  process per device; `ConsistencyModel.fit` broadcasts rank 0's weights
  and averages the gradients over the processes (`torch.distributed`).

Under all three, a global batch of B samples on R replicas trains like one
step on B samples on one device: every replica and micro-batch takes its
own part of the step's noise-level draws (`ConsistencyModel`), and with
`NoisePairedDataset(..., shard=run.shard)` each process reads its part of
the same global batches, its noise OT-paired within the per-device batch.
"""

import contextlib

import keras
import numpy as np

from keras_lct._validation import check_int
from keras_lct.backend import distribute as engine
from keras_lct.data.paired import NoisePairedDataset


class DataParallel:
    """How `data_parallel()` split the training: replicas, processes, and the strategy.

    Args:
        num_replicas: devices computing one update together.
        process_index, process_count: this process and the number of
            processes (hosts, or torchrun ranks) feeding them.
        strategy: the `tf.distribute.Strategy` (tensorflow), else None.

    Example:

    ```python
    run = keras_lct.distribute.data_parallel()
    with run.scope():
        model = ConsistencyModel(UNet.from_preset("celeba256"))
        model.build((None, 32, 32, 4))
        model.compile(optimizer=RAdam(1e-4))
    # batch_size is the global batch; each process reads its shard of it.
    batches = NoisePairedDataset(latents, batch_size=128, shard=run.shard,
                                 ot_group_size=run.per_replica_batch_size(128))
    model.fit(batches, epochs=1400, verbose=1 if run.is_chief else 0)
    ```
    """

    def __init__(self, num_replicas, process_index=0, process_count=1, strategy=None):
        self.num_replicas = num_replicas
        self.process_index = process_index
        self.process_count = process_count
        self.strategy = strategy

    @property
    def is_chief(self):
        """Whether this process writes checkpoints, sample grids, logs and caches (rank 0)."""
        return self.process_index == 0

    @property
    def shard(self):
        """`(process_index, process_count)`: this process's part of each global batch."""
        return (self.process_index, self.process_count)

    def scope(self):
        """The context to build and compile the model in (tensorflow's strategy scope)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def barrier(self, name="barrier"):
        """Waits until every process gets here (e.g. until the chief has written a file)."""
        if self.process_count > 1:
            engine.barrier(self.strategy, name)

    def per_replica_batch_size(self, global_batch_size):
        """`global_batch_size` / replicas; an error unless it divides evenly."""
        global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
        if global_batch_size % self.num_replicas:
            raise ValueError(
                f"The global batch of {global_batch_size} samples does not split evenly over "
                f"{self.num_replicas} devices. Pass a multiple of {self.num_replicas} "
                f"(e.g. {self.num_replicas * max(1, global_batch_size // self.num_replicas)})."
            )
        return global_batch_size // self.num_replicas

    def process_batch_size(self, global_batch_size):
        """The samples of each global batch that this process reads."""
        return self.per_replica_batch_size(global_batch_size) * (self.num_replicas // self.process_count)

    def __repr__(self):
        return (
            f"DataParallel({keras.backend.backend()}: {self.num_replicas} replicas, "
            f"process {self.process_index} of {self.process_count})"
        )


def data_parallel(devices=None):
    """Puts training on all visible devices of the active backend (see the module docstring).

    Args:
        devices: jax / tensorflow: the devices to use (names as the backend
            lists them); None for all. Not for torch, where torchrun starts
            one process per device.

    Returns:
        A `DataParallel`.
    """
    return engine.activate(DataParallel(*engine.start(devices)))


def current():
    """The `DataParallel` set up by `data_parallel()` in this process, or None."""
    return engine.current()


def check_fit(model, x, batch_size):
    """Errors before training for what data parallelism cannot run: uneven batches, unsharded data, ..."""
    if model.micro_batches_per_update() > 1 and engine.under_tf_distribute_strategy(model):
        raise ValueError(
            "Keras cannot accumulate gradients under a tf.distribute strategy (its optimizer's conditional "
            "update crosses the replicas). Drop `gradient_accumulation_steps`, or train on the jax or torch "
            "backend, where accumulation and data parallelism combine."
        )
    run = current()
    if run is None:
        return
    if isinstance(x, NoisePairedDataset):
        if x.shard[1] != run.process_count:
            raise ValueError(
                f"Training runs in {run.process_count} processes, but the NoisePairedDataset is split into "
                f"{x.shard[1]}: each process must read its own part of every batch. Pass "
                "`shard=run.shard` (from keras_lct.distribute.data_parallel()) to NoisePairedDataset."
            )
        if x.batch_size is not None:
            run.per_replica_batch_size(x.batch_size)  # its batch size is the global batch
    elif isinstance(x, np.ndarray):
        run.per_replica_batch_size((32 if batch_size is None else batch_size) * run.process_count)
