"""Process-wide settings, applied only when asked for.

- `keep_large_allocations_on_the_heap` (tensorflow under glibc): tensorflow's
  first generator dataset (every `PyDataset` that `fit` reads on tensorflow
  becomes one) sets glibc's trim threshold to 128 KiB, which freezes malloc's
  mmap threshold at its initial 128 KiB, so every activation of every step is
  then mapped, page-faulted in and unmapped again: the step on a
  `NoisePairedDataset` ran at half speed. `ConsistencyModel.fit` calls it
  once per process, before its first dataset is read.
- `keep_compiled_steps` (jax): a persistent compilation cache, so that a
  resumed run loads its compiled steps.
"""

import ctypes
import functools
import sys

import keras

# glibc's mallopt parameters, and the ceiling its dynamic mmap threshold grows
# to on 64-bit systems (its trim threshold follows at twice the mmap threshold).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD


@functools.cache
def keep_large_allocations_on_the_heap():
    """Undoes tensorflow's malloc setting for generator datasets, once per process.

    On the tensorflow backend under glibc (Linux), starts one empty generator
    dataset, which is when tensorflow applies its setting (once per process),
    then sets malloc's mmap and trim thresholds to the values glibc itself
    settles at under large allocations (32 and 64 MiB). Elsewhere it does
    nothing. `ConsistencyModel.fit` calls it.

    Returns:
        True when the thresholds were set, False when nothing was done.
    """
    if keras.backend.backend() != "tensorflow" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    import tensorflow as tf

    empty = tf.data.Dataset.from_generator(lambda: iter(()), output_signature=tf.TensorSpec((), tf.int32))
    for _ in empty:
        pass
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


def keep_compiled_steps(folder):
    """On jax, makes `folder` jax's persistent compilation cache unless one is configured; returns the cache.

    A resumed run then loads its compiled steps instead of compiling them again: less time, and
    less peak memory (docs/benchmarks.md "Memory"). None on the other backends.
    """
    if keras.backend.backend() != "jax":
        return None
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", folder)
    return jax.config.jax_compilation_cache_dir
