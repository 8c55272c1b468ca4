"""Data parallelism's backend parts: each backend's engine, and what the step asks of it.

`start_data_parallel` sets up the active backend's own engine (see
`keras_lct.distribute`); the step then asks `replica_position` which part
of an update this replica computes, `scaled_for_replica_sum` for the loss
(tensorflow sums the replicas' gradients), `sum_over_replicas` for the
whole update's TD statistic, and `fit` runs in
`gradients_averaged_over_processes` (torch under torchrun, which Keras'
released torch backend does not cover), whose `DistributedDataParallel`
the step's gradient pass calls through `gradient_synchronized`.
"""

import contextlib
import os

import keras
from keras import ops

from keras_lct.backend import fast_paths


def replica_position():
    """(index, count) of this replica among those that compute one update together.

    tensorflow under a `tf.distribute` strategy: the replica context's id (a
    tensor in the step) and `num_replicas_in_sync`. torch under
    `keras_lct.distribute.data_parallel` (torchrun): the process rank and
    world size. Otherwise, and on jax, whose `DataParallel` step is one
    program over global arrays: (0, 1).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return ops.cast(context.replica_id_in_sync_group, "int32"), context.num_replicas_in_sync
    processes = _torch_processes()
    if processes is not None:
        return processes.process_index, processes.process_count
    return 0, 1


def sum_over_replicas(value):
    """`value` summed over the replicas that compute one update together; every replica gets the sum.

    tensorflow in a `tf.distribute` replica context of more than one
    replica: the context's `all_reduce`. torch under
    `keras_lct.distribute.data_parallel` (torchrun): `torch.distributed.all_reduce`.
    Otherwise, and on jax, whose `DataParallel` step sees the global batch:
    `value` itself.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
        return value
    if _torch_processes() is None:
        return value
    import torch.distributed as dist

    total = value.detach().clone().contiguous()
    dist.all_reduce(total)
    return total


def _torch_processes():
    """The `keras_lct.distribute.DataParallel` of torch ranks training one model, or None."""
    if keras.backend.backend() != "torch":
        return None
    run = current()
    return run if run is not None and run.process_count > 1 else None


def under_tf_distribute_strategy(model):
    """Whether `model` was made in a `tf.distribute` strategy's scope (tensorflow)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return model.distribute_strategy is not tf.distribute.get_strategy() or tf.distribute.has_strategy()


def scaled_for_replica_sum(loss):
    """`loss` divided by the replica count where the replicas' gradients are summed (tensorflow)."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


@contextlib.contextmanager
def gradients_averaged_over_processes(model):
    """Context around `fit` for torch in a process group: one model trained by all ranks.

    Broadcasts rank 0's variables (weights, EMA and schedule state), then
    wraps the network in torch's `DistributedDataParallel` for the step's
    gradient pass (`gradient_synchronized`): its backward averages the
    gradients over the processes in buckets of about 25 MB, each all-reduce
    overlapping the rest of the backward, before the optimizer reads them, so
    every rank applies the same update. A no-op outside a process group and
    on other backends, whose engines do this themselves.
    """
    processes = _torch_processes()
    if processes is None:
        yield
        return
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with torch.no_grad():
        for variable in model.variables:
            dist.broadcast(_in_memory_order(variable.value), src=0)
    # init_sync=False: the network's weights were broadcast with the rest of the model's state above.
    _SYNCHRONIZED[model.network] = DistributedDataParallel(model.network, init_sync=False)
    try:
        yield
    finally:
        del _SYNCHRONIZED[model.network]


_SYNCHRONIZED = {}  # {network: its DistributedDataParallel wrapper}, while `fit` runs in a process group


def gradient_synchronized(network):
    """What the step calls `network` through where its gradients are computed.

    Under `gradients_averaged_over_processes` (torch in a process group): the
    network's `DistributedDataParallel` wrapper, whose backward averages the
    gradients over the processes. Otherwise `network` itself. Call it once
    per step with gradients recorded; other forwards (the target's, the
    sampler's) call the network directly.
    """
    return _SYNCHRONIZED.get(network, network)


def _in_memory_order(tensor):
    """A dense torch tensor as a contiguous view (NCCL's collectives take only contiguous tensors)."""
    return tensor.permute(fast_paths.memory_order(tensor))


_ACTIVE = {"run": None}


def current():
    """The `keras_lct.distribute.DataParallel` set up in this process, or None."""
    return _ACTIVE["run"]


def activate(run):
    """Makes `run` the process's `DataParallel` (what `current` returns); returns it."""
    _ACTIVE["run"] = run
    return run


def start(devices=None):
    """Sets up the active backend's data-parallel engine over `devices` (None: all).

    Returns:
        `(num_replicas, process_index, process_count, strategy)`, the
        arguments of `keras_lct.distribute.DataParallel`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return _start_jax(devices)
    if backend == "tensorflow":
        return _start_tensorflow(devices)
    if backend == "torch":
        if devices is not None:
            raise ValueError("On torch, torchrun starts one process per device; do not pass `devices`.")
        return _start_torch()
    raise ValueError(f"Data parallelism is not available on the {backend!r} backend.")


def barrier(strategy, name="barrier"):
    """Waits until every process gets here (`strategy`: tensorflow's, else None)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch.distributed

        torch.distributed.barrier()
    elif backend == "jax":
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
    else:
        import tensorflow as tf

        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def _start_jax(devices):
    import jax

    if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") and not jax.distributed.is_initialized():
        keras.distribution.initialize()
    devices = devices or keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices), jax.process_index(), jax.process_count(), None


def _start_tensorflow(devices):
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
    return strategy.num_replicas_in_sync, task, workers, strategy


def _tpu_address():
    return os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")


def _start_torch():
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
    return world_size, rank, world_size, None
