"""Robust distances for consistency training: Cauchy, Pseudo-Huber, Geman-McClure, L2.

Each distance compares a batch of predictions with a batch of targets and
returns one value per sample, computed from the per-sample MEAN squared
residual `m = mean((prediction - target)^2)` over all non-batch axes (the
convention of the authors' code; the paper's eq. 6-8 write the squared norm):

| name            | distance                |
|-----------------|-------------------------|
| `cauchy`        | log(1 + m / (2 c^2))    |
| `pseudo_huber`  | sqrt(m + c^2) - c       |
| `geman_mcclure` | 2 m / (m + 4 c^2)       |
| `l2`            | m                       |

They are available as functions `distance(prediction, target, c)` and as
serializable `keras.losses.Loss` classes whose `c` may be a `keras.Variable`
updated during training. Inputs of any float dtype (float16, bfloat16, ...)
are computed in float32.

Reference: paper section 4.2, eq. 6-8 and fig. 2; `docs/reference.md` "One
consistency-training step".
"""

import keras
from keras import ops

from keras_lct._validation import check_choice
from keras_lct._validation import check_positive
from keras_lct._validation import is_concrete


def mean_squared_residual(prediction, target):
    """Per-sample mean of the squared residual over all non-batch axes, in float32."""
    residual = ops.cast(prediction, "float32") - ops.cast(target, "float32")
    if len(residual.shape) < 2:
        raise ValueError(
            "Expected batched inputs of rank >= 2 (batch, features...); received "
            f"shape {tuple(residual.shape)}. Add a batch axis."
        )
    return ops.mean(ops.square(residual), axis=tuple(range(1, len(residual.shape))))


def cauchy(prediction, target, c):
    """Cauchy (Lorentzian) distance `log(1 + m / (2 c^2))`, per sample.

    Grows logarithmically: its gradient decays like 1 / residual, so an
    impulsive outlier pulls less the larger it is (paper fig. 2).
    """
    squared_scale = _squared_scale(c)
    return ops.log1p(mean_squared_residual(prediction, target) / (2.0 * squared_scale))


def pseudo_huber(prediction, target, c):
    """Pseudo-Huber distance `sqrt(m + c^2) - c`, per sample (iCT's choice).

    Computed as `m / (sqrt(m + c^2) + c)`, equal but free of cancellation for
    m << c^2. Grows linearly: its gradient tends to a constant.
    """
    c = _scale(c)
    m = mean_squared_residual(prediction, target)
    return m / (ops.sqrt(m + ops.square(c)) + c)


def geman_mcclure(prediction, target, c):
    """Geman-McClure distance `2 m / (m + 4 c^2)`, per sample.

    Saturates at 2: outliers get a vanishing gradient and are ignored.
    """
    four_c_squared = 4.0 * _squared_scale(c)
    m = mean_squared_residual(prediction, target)
    # Two equal forms; each keeps value and gradient free of float32
    # cancellation on its side of m = 4 c^2.
    return ops.where(
        m < four_c_squared,
        2.0 * m / (m + four_c_squared),
        2.0 - 2.0 * four_c_squared / (m + four_c_squared),
    )


def l2(prediction, target, c=None):
    """Mean squared residual `m`, per sample. `c` is accepted and ignored."""
    return mean_squared_residual(prediction, target)


def edm_weight(sigma, sigma_data=0.5):
    """EDM's loss weighting `lambda(sigma) = 1 / sigma^2 + 1 / sigma_data^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`.

    Makes the effective weight of the preconditioned network's output 1 at
    every noise level.

    Reference: Karras et al. 2022 (EDM), table 1; `docs/reference.md` "EDM diffusion training".
    """
    return 1.0 / ops.square(ops.cast(sigma, "float32")) + 1.0 / sigma_data**2


def diffusion_loss(denoised, clean, sigma, sigma_data, low_noise, low_noise_count):
    """The diffusion loss on the low-noise samples: sum of lambda(sigma) m over them / their count.

    `m` is the per-sample mean squared residual of `denoised` to `clean` and
    lambda(sigma) = 1 / sigma^2 + 1 / sigma_data^2, EDM's weighting (the
    authors' code). `low_noise` is 1.0 for the samples that get the loss
    (the lowest-noise fraction r of the grid), 0.0 for the others;
    `low_noise_count` is the count it is normalized by (at least 1), which
    may be that of a larger batch this one is part of.

    Reference: paper section 4.3, eq. 9; `docs/reference.md` "One consistency-training step".
    """
    per_sample = mean_squared_residual(denoised, clean) * edm_weight(sigma, sigma_data)
    return ops.sum(low_noise * per_sample) / ops.maximum(low_noise_count, 1.0)


DISTANCES = {
    "cauchy": cauchy,
    "pseudo_huber": pseudo_huber,
    "geman_mcclure": geman_mcclure,
    "l2": l2,
}


def get(name):
    """The distance function registered under `name` (see `DISTANCES`)."""
    return DISTANCES[check_choice("loss", name, DISTANCES)]


class RobustLoss(keras.losses.Loss):
    """Base class of the robust losses: a per-sample distance with scale `c`.

    `m = mean((y_pred - y_true)^2)` over each sample's features, then the
    subclass's distance of m and c, reduced over the batch.

    Args:
        c: positive robustness scale, a float or a `keras.Variable` (read at
            every call, so a callback or the training step may change it).
        reduction: as for every `keras.losses.Loss`.
        name: the loss name.
        dtype: dtype of the returned loss.

    Call arguments:
        y_true: targets, shape `(batch, ...)`.
        y_pred: predictions, same shape.

    Reference: paper section 4.2.
    """

    distance_name = None

    def __init__(self, c=1.0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name or self.distance_name, reduction=reduction, dtype=dtype)
        self.c = _checked_scale(c)

    def call(self, y_true, y_pred):
        return DISTANCES[self.distance_name](y_pred, y_true, self.c)

    def get_config(self):
        config = super().get_config()
        c = self.c
        if isinstance(c, keras.Variable) or not is_concrete(c):
            c = float(ops.convert_to_numpy(c))
        config.update({"c": c})
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class Cauchy(RobustLoss):
    """Cauchy loss `log(1 + m / (2 c^2))`, the paper's default.

    Robust to the impulsive outliers of latent data without ignoring them:
    its gradient decays like 1 / residual. Arguments as for `RobustLoss`.

    Example:
    >>> Cauchy(c=0.03)(np.zeros((2, 4)), np.ones((2, 4)))

    Reference: paper section 4.2, eq. 6.
    """

    distance_name = "cauchy"


@keras.saving.register_keras_serializable(package="keras_lct")
class PseudoHuber(RobustLoss):
    """Pseudo-Huber loss `sqrt(m + c^2) - c`: iCT's loss, the iLCT baseline.

    Its gradient tends to a constant for large residuals. Arguments as for
    `RobustLoss`.

    Example:
    >>> PseudoHuber(c=0.03)(np.zeros((2, 4)), np.ones((2, 4)))

    Reference: paper section 4.2, eq. 7.
    """

    distance_name = "pseudo_huber"


@keras.saving.register_keras_serializable(package="keras_lct")
class GemanMcClure(RobustLoss):
    """Geman-McClure loss `2 m / (m + 4 c^2)`, saturating at 2.

    Outliers get a vanishing gradient and are ignored. Arguments as for
    `RobustLoss`.

    Example:
    >>> GemanMcClure(c=0.03)(np.zeros((2, 4)), np.ones((2, 4)))

    Reference: paper section 4.2, eq. 8.
    """

    distance_name = "geman_mcclure"


@keras.saving.register_keras_serializable(package="keras_lct")
class L2(RobustLoss):
    """Per-sample mean squared error `m`; `c` is stored but has no effect.

    Arguments as for `RobustLoss`.

    Example:
    >>> L2()(np.zeros((2, 4)), np.ones((2, 4)))

    Reference: paper table 2c (the L2 ablation).
    """

    distance_name = "l2"


def _checked_scale(c):
    """`c` itself; a Python or NumPy `c` must be a finite number > 0."""
    if isinstance(c, keras.Variable) or ops.is_tensor(c):
        return c
    return check_positive("c", c)


def _scale(c):
    return ops.cast(_checked_scale(c), "float32")


def _squared_scale(c):
    return ops.square(_scale(c))
