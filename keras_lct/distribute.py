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
import os

import keras

from keras_lct._validation import check_int


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
        if self.process_count == 1:
            return
        backend = keras.backend.backend()
        if backend == "torch":
            import torch.distributed

            torch.distributed.barrier()
        elif backend == "jax":
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)
        else:
            import tensorflow as tf

            self.strategy.reduce("SUM", self.strategy.run(lambda: tf.constant(1.0)), axis=None)

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
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_data_parallel(devices)
    if backend == "tensorflow":
        return _tensorflow_data_parallel(devices)
    if backend == "torch":
        if devices is not None:
            raise ValueError("On torch, torchrun starts one process per device; do not pass `devices`.")
        return _torch_data_parallel()
    raise ValueError(f"Data parallelism is not available on the {backend!r} backend.")


def current():
    """The `DataParallel` set up by `data_parallel()` in this process, or None."""
    return _ACTIVE["run"]


_ACTIVE = {"run": None}


def _activate(run):
    _ACTIVE["run"] = run
    return run


def _jax_data_parallel(devices):
    import jax

    if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") and not jax.distributed.is_initialized():
        keras.distribution.initialize()
    devices = devices or keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return _activate(DataParallel(len(devices), jax.process_index(), jax.process_count()))


def _tensorflow_data_parallel(devices):
    import tensorflow as tf

    if devices is None and _tpu_address() is not None:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=_tpu_address())
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif devices is None and os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        if devices is None:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
            devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    task, workers = 0, 1
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        task, workers = resolver.task_id, resolver.cluster_spec().num_tasks("worker")
    return _activate(DataParallel(strategy.num_replicas_in_sync, task, workers, strategy))


def _tpu_address():
    return os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")


def _torch_data_parallel():
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "On torch, data parallelism runs one process per device under torchrun, e.g. "
            "`torchrun --nproc-per-node=8 recipes/celeba.py --distribute`; RANK and WORLD_SIZE are not set."
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return _activate(DataParallel(world_size, rank, world_size))
