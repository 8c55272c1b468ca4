"""Minibatch optimal-transport pairing of noise and data (the OT math).

Consistency training noises each clean sample x0 with Gaussian noise z. With
minibatch OT, the noise of a batch is re-assigned to its samples by the exact
optimal transport plan between the two point clouds, so that the total squared
distance sum_i ||x0_i - z_perm(i)||^2 is minimal: noisy inputs x0 + t z then
come from straighter, less crossing data-noise pairs, which lowers the
variance of training (paper section 4.4, fig. 3).

The pairing runs in NumPy with POT (`ot.emd`), outside the compiled training
step: `keras_lct.data.NoisePairedDataset` applies it to every batch it hands
to `model.fit`. For class-labelled data the pairing is within each class
(`pair_noise(..., labels=...)`).

Reference: paper section 4.4; `docs/reference.md` "Minibatch OT".
"""

import functools
import os
import warnings

import numpy as np

from keras_lct._validation import check_class_labels
from keras_lct._validation import check_int
from keras_lct._validation import is_real_dtype

_POT_DISABLED_BACKENDS = ("PYTORCH", "JAX", "TENSORFLOW", "CUPY")


def _import_pot():
    """Imports POT with its NumPy backend only (~0.8 s instead of ~5 s).

    POT otherwise imports torch, jax and tensorflow at import time to register
    its array backends; the pairing only needs NumPy. Flags the user already
    set are respected.
    """
    for framework in _POT_DISABLED_BACKENDS:
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{framework}", "1")
    import ot

    return ot


@functools.cache
def _blas_threads():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """Context limiting NumPy's BLAS to one thread.

    The pairing runs beside the training step, which already uses every core:
    a multi-threaded BLAS leaves its threads spinning after the product and
    takes the cores from the step (measured: ~40 ms of every torch step on 2
    cores, single-element ops stalled for whole scheduler slices).
    """
    return _blas_threads().limit(limits=1, user_api="blas")


def transport_cost(x0, noise):
    """The minibatch OT cost matrix: squared Euclidean distances over their max.

    Samples are flattened, so any sample shape works. A matrix of zeros (all
    samples equal) is returned as is.

    Args:
        x0: data batch of shape `(n, ...)`.
        noise: noise batch of shape `(m, ...)` with the same sample size.

    Returns:
        A float64 NumPy array of shape `(n, m)` with values in [0, 1]:
        `cost[i, j] = ||x0_i - noise_j||^2 / max_kl ||x0_k - noise_l||^2`.

    Example:

    >>> transport_cost(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]]))
    array([[0.  , 1.  ],
           [0.25, 0.25]])

    Reference: paper section 4.4.
    """
    x0 = np.asarray(x0)
    noise = np.asarray(noise)
    # The Gram matrix in the inputs' precision (float32 halves its time), the
    # norms and their combination in float64.
    gram_dtype = np.result_type(x0.dtype, noise.dtype, np.float32)
    x0 = x0.reshape(len(x0), -1).astype(gram_dtype, copy=False)
    noise = noise.reshape(len(noise), -1).astype(gram_dtype, copy=False)
    x0_norms = np.einsum("ij,ij->i", x0, x0, dtype=np.float64)
    noise_norms = np.einsum("ij,ij->i", noise, noise, dtype=np.float64)
    with _one_blas_thread():
        gram = x0 @ noise.T
    cost = x0_norms[:, None] + noise_norms[None, :] - 2.0 * gram.astype(np.float64)
    np.maximum(cost, 0.0, out=cost)
    largest = cost.max(initial=0.0)
    if largest > 0.0:
        cost /= largest
    return cost


def ot_permutation(x0, noise):
    """The exact minibatch OT assignment of noise samples to data samples.

    Solves the earth mover's distance problem (`ot.emd`) between uniform
    weights on the data batch and on the noise batch under `transport_cost`.
    For two batches of equal size the optimal plan is a permutation matrix
    (scaled by 1/n), read off by the argmax of each row.

    Args:
        x0: data batch of shape `(n, ...)`, real and finite.
        noise: noise batch of the same shape.

    Returns:
        An int64 array `perm` of length n, a permutation of `range(n)`:
        `noise[perm[i]]` is paired with `x0[i]`, and
        `sum_i ||x0[i] - noise[perm[i]]||^2` is the smallest over all
        permutations.

    Raises:
        ValueError: if the batches differ in shape, have rank < 2 or hold
            NaN/inf values.

    Example:

    ```python
    x0 = np.random.normal(size=(128, 32, 32, 4)).astype("float32")
    noise = np.random.normal(size=x0.shape).astype("float32")
    paired_noise = noise[ot_permutation(x0, noise)]
    ```

    Reference: paper section 4.4.
    """
    x0, noise = _check_pair(x0, noise)
    count = len(x0)
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    cost = transport_cost(x0, noise)
    if not np.isfinite(cost).all():
        raise ValueError(
            "The data or noise batch holds NaN or inf values (or values so large that their "
            "squared distances overflow); OT pairing needs finite values."
        )
    ot = _import_pot()
    weights = np.full(count, 1.0 / count)
    max_iterations = max(100_000, 50 * count * count)
    plan, log = ot.emd(weights, weights, cost, numItermax=max_iterations, log=True)
    if log.get("warning"):
        warnings.warn(
            f"`ot.emd` did not finish on a batch of {count}: {log['warning']} The pairing may "
            "not be optimal.",
            stacklevel=2,
        )
    return _permutation_from_plan(plan)


def pair_noise(x0, noise, ot=True, group_size=None, labels=None):
    """Reorders a noise batch so that each data sample gets its OT partner.

    With `labels`, noise is paired with data within each class only: the
    noise rows at the positions of class c's samples are re-assigned among
    those samples by the exact OT plan between them (per group, when
    `group_size` is set). Every noise row is still used exactly once, and
    the rows a class gets are chosen by position, before the data is looked
    at, so each class's noise is an independent standard normal draw: each
    class is transported from the noise distribution itself. This differs
    from the authors' `sample_plan_with_labels`, which solves one plan over
    the whole batch and lets each label follow its data sample (noise is
    then paired across classes); see `docs/reference.md` "Minibatch OT".

    Args:
        x0: data batch of shape `(n, ...)`.
        noise: noise batch of the same shape.
        ot: pair by minibatch OT (True) or return `noise` unchanged (False).
        group_size: pair within consecutive groups of this many samples
            instead of the whole batch, e.g. the per-device batch under data
            parallelism as in the authors' code (n must be a multiple).
            `None` pairs the whole batch.
        labels: integer class indices `(n,)` of the data samples, to pair
            within each class; None pairs regardless of class.

    Returns:
        `noise[perm]` with `perm = ot_permutation(x0, noise)` (per group and
        class), or `noise` itself when `ot=False`.

    Example:

    ```python
    x0 = np.random.normal(size=(64, 2)).astype("float32")
    z = pair_noise(x0, np.random.normal(size=x0.shape).astype("float32"))
    y = np.random.randint(0, 10, size=64)
    z_within_classes = pair_noise(x0, np.random.normal(size=x0.shape).astype("float32"), labels=y)
    ```

    Reference: paper section 4.4.
    """
    x0, noise = _check_pair(x0, noise)
    count = len(x0)
    if labels is not None:
        labels = check_class_labels(labels, count=count, what="The labels of the batch")
    if not ot:
        return noise
    if group_size is None or group_size >= count:
        group_size = count
    else:
        group_size = check_int("group_size", group_size, minimum=1)
        if count % group_size:
            raise ValueError(
                f"`group_size` ({group_size}) must divide the batch size ({count}); pass the "
                "per-device batch size, or None to pair the whole batch."
            )
    paired = np.empty_like(noise)
    for start in range(0, count, group_size):
        group = slice(start, start + group_size)
        if labels is None:
            parts = [group]
        else:
            group_labels = labels[group]
            parts = [start + np.flatnonzero(group_labels == label) for label in np.unique(group_labels)]
        for rows in parts:
            paired[rows] = noise[rows][ot_permutation(x0[rows], noise[rows])]
    return paired


def _permutation_from_plan(plan):
    """The permutation encoded by a square OT plan; raises if it encodes none."""
    perm = np.argmax(plan, axis=1).astype(np.int64)
    if len(np.unique(perm)) != len(plan):
        raise RuntimeError(
            "The OT plan of a square uniform problem is not a permutation; cannot pair noise "
            "with data. This is a bug of the solver: please report it with the batch."
        )
    return perm


def _check_pair(x0, noise):
    x0, noise = np.asarray(x0), np.asarray(noise)
    if x0.shape != noise.shape or x0.ndim < 2 or len(x0) == 0:
        raise ValueError(
            "Data and noise batches must have the same shape (batch_size, ...), of rank >= 2 "
            f"and batch_size >= 1; received {x0.shape} and {noise.shape}."
        )
    for name, batch in (("data", x0), ("noise", noise)):
        if not is_real_dtype(batch.dtype):
            raise ValueError(f"The {name} batch has dtype {batch.dtype}; expected real numbers.")
    return x0, noise
