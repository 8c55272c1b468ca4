"""Noise levels, timestep distribution, curricula and preconditioning.

Everything here is written with `keras.ops`, so the same function runs eagerly
on Python/NumPy values (convert results with `keras.ops.convert_to_numpy`) and
inside a compiled training step on tensors, on every backend. Values are
computed in float32 whatever the global dtype policy.

Reference:
- Paper section 3 (Karras grid, preconditioning of eq. 2, lognormal timesteps
  and the 1 / (t_{i+1} - t_i) weighting of iCT).
- Paper section 4.5, eq. 10 (exponential curriculum) and eq. 11 (adaptive c).
- `docs/reference.md` "Noise process and parameterization" and "Schedules".
"""

import math

from keras import ops

from keras_lct import losses
from keras_lct._validation import check_choice
from keras_lct._validation import check_int
from keras_lct._validation import check_positive
from keras_lct._validation import is_concrete

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0
P_MEAN = -1.1
P_STD = 2.0
CURRICULUM_S0 = 10
CURRICULUM_S1 = 640
FINAL_NUM_SCALES = CURRICULUM_S1 + 1  # the grid of N = s1 intervals the curriculum ends on
ICT_C0_PER_SQRT_DIM = 0.00054
# d of the paper's CelebA-HQ latents, where eq. 11 was fitted.
PAPER_LATENT_DIM = 32 * 32 * 4
# The smallest per-sample TD RMS `td_log_spread_sum` takes the logarithm of (a zero TD stays finite).
TD_RMS_FLOOR = 1e-12

# (slope, intercept) of c = exp(slope * ln(N - 1) + intercept).
ADAPTIVE_C_CONSTANTS = {
    "paper": (-1.18, -0.72),  # eq. 11 of the paper.
    "authors_code": (-1.15, -0.85),  # the authors' training code.
}


def karras_sigma(index, num_scales, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """Noise level `index` of the Karras grid with `num_scales` levels.

    Index 0 is `sigma_max` and index `num_scales - 1` is `sigma_min`:
    `sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho`. Elementwise, so `index` may be a batch of
    indices and `num_scales` a tensor that changes during training.

    Args:
        index: integer index or tensor of indices in `[0, num_scales - 1]`.
        num_scales: N, the number of levels (>= 2).
        sigma_min, sigma_max: the grid ends, `0 < sigma_min < sigma_max`.
        rho: the Karras exponent (7).

    Returns:
        float32 tensor shaped like `index`.

    Example:
    >>> float(karras_sigma(0, 11))
    80.0

    Reference: paper section 3; `docs/reference.md` "Noise process and parameterization".
    """
    _check_grid(num_scales, sigma_min, sigma_max, rho)
    fraction = ops.cast(index, "float32") / (ops.cast(num_scales, "float32") - 1.0)
    max_root = sigma_max ** (1.0 / rho)
    min_root = sigma_min ** (1.0 / rho)
    return ops.power(max_root + fraction * (min_root - max_root), rho)


def karras_sigmas(num_scales, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """The whole decreasing grid of `num_scales` noise levels (a Python int).

    Example:
    >>> sigmas = karras_sigmas(641)  # sigmas[440] ~ 0.369, 2-step sampling.
    """
    num_scales = check_int("num_scales", num_scales, minimum=2)
    return karras_sigma(ops.arange(num_scales), num_scales, sigma_min, sigma_max, rho)


def lognormal_index_probabilities(
    num_scales,
    size=None,
    p_mean=P_MEAN,
    p_std=P_STD,
    sigma_min=SIGMA_MIN,
    sigma_max=SIGMA_MAX,
    rho=RHO,
):
    """Discretized lognormal distribution over the indices `i in [0, N - 2]`.

    `p(i)` is proportional to `erf((ln sigma_i - P_mean) / (sqrt(2) P_std)) -
    erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std))`: the mass the lognormal
    puts between two neighbouring grid levels.

    Args:
        num_scales: N, a Python int or a scalar tensor.
        size: length of the returned vector. Defaults to `num_scales - 1`;
            required (static) when `num_scales` is a tensor, so that shapes do
            not change as N grows: entries with `i > N - 2` are then 0.
        p_mean, p_std: the lognormal's parameters (-1.1, 2.0).

    Returns:
        float32 vector of `size` probabilities summing to 1.

    Reference: iCT's lognormal timestep sampling, paper section 3;
    `docs/reference.md` "One consistency-training step".
    """
    if size is None:
        size = check_int("num_scales", num_scales, minimum=2) - 1
    size = check_int("size", size, minimum=1)
    check_positive("p_std", p_std)
    index = ops.arange(size)
    sigma = karras_sigma(index, num_scales, sigma_min, sigma_max, rho)
    next_sigma = karras_sigma(index + 1, num_scales, sigma_min, sigma_max, rho)
    scale = math.sqrt(2.0) * p_std
    mass = ops.erf((ops.log(sigma) - p_mean) / scale) - ops.erf(
        (ops.log(next_sigma) - p_mean) / scale
    )
    in_grid = ops.cast(index, "float32") <= ops.cast(num_scales, "float32") - 2.0
    mass = ops.where(in_grid, ops.maximum(mass, 0.0), 0.0)
    return mass / ops.sum(mass)


def sample_from_probabilities(probabilities, uniform):
    """Inverse-CDF draw of indices from a probability vector.

    Args:
        probabilities: float vector summing to 1.
        uniform: tensor of uniform [0, 1) numbers, one per index to draw.

    Returns:
        int32 tensor shaped like `uniform`, indices into `probabilities`.
    """
    cdf = ops.cumsum(probabilities)
    below = ops.cast(ops.expand_dims(cdf, 0) <= ops.expand_dims(uniform, -1), "int32")
    index = ops.sum(below, axis=-1)
    # Rounding can leave cdf[-1] just under 1; never return an index whose
    # probability is zero.
    last_valid = ops.max(ops.where(probabilities > 0, ops.arange(ops.shape(cdf)[0]), 0))
    return ops.minimum(index, ops.cast(last_valid, "int32"))


def consistency_weight(t, next_t):
    """iCT's weighting `lambda = 1 / (t - t2)` of the consistency loss.

    `t` is the noisier level (student) and `next_t < t` the target's level.

    Reference: paper section 3; `docs/reference.md` "One consistency-training step".
    """
    return 1.0 / (ops.cast(t, "float32") - ops.cast(next_t, "float32"))


def curriculum_stage_length(total_steps, s0=CURRICULUM_S0, s1=CURRICULUM_S1):
    """K' of eq. 10: steps between two doublings of N.

    `K' = floor(K / (log2(floor(s1 / s0)) + 1))`, at least 1 so that runs
    shorter than the number of stages still run every stage.
    """
    total_steps = check_int("total_steps", total_steps, minimum=1)
    s0, s1 = _check_curriculum_ends(s0, s1)
    return max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))


def num_scales(step, total_steps, s0=CURRICULUM_S0, s1=CURRICULUM_S1):
    """N(k) of the exponential curriculum, eq. 10.

    `N(k) = min(s0 * 2^floor(k / K'), s1) + 1`, with K' from
    `curriculum_stage_length`.

    Args:
        step: the training step k (>= 0), a Python int or an integer tensor.
        total_steps: K, the length of the whole run (>= 1).
        s0, s1: initial and final number of discretization intervals.

    Returns:
        int32 scalar tensor (shaped like `step`).

    Example:
    >>> int(num_scales(42_000, 294_000))
    21

    Reference: paper section 4.5, eq. 10.
    """
    stage_length = curriculum_stage_length(total_steps, s0, s1)
    return curriculum_num_scales(step, stage_length, s0, s1)


def curriculum_num_scales(step, stage_length, s0=CURRICULUM_S0, s1=CURRICULUM_S1):
    """`min(s0 * 2^floor(k / stage_length), s1) + 1` for given K' = `stage_length`.

    The form of eq. 10 used inside a training step, where K', s0 and s1 may
    be tensors (model state) rather than Python numbers.
    """
    if is_concrete(step):
        check_int("step", step, minimum=0)
    if is_concrete(stage_length):
        check_int("stage_length", stage_length, minimum=1)
    stage = ops.cast(step, "int32") // ops.maximum(ops.cast(stage_length, "int32"), 1)
    # float32 is exact for these integers; doublings past 2^30 change nothing.
    intervals = ops.cast(s0, "float32") * ops.power(2.0, ops.cast(ops.minimum(stage, 30), "float32"))
    return ops.cast(ops.minimum(intervals, ops.cast(s1, "float32")), "int32") + 1


def ict_c0(dim):
    """iCT's fixed robustness scale `c0 = 0.00054 * sqrt(d)`.

    Args:
        dim: d, the number of elements of one sample (C * H * W).

    Example:
    >>> round(ict_c0(32 * 32 * 4), 5)
    0.03456

    Reference: paper section 4.5.
    """
    return ICT_C0_PER_SQRT_DIM * math.sqrt(check_int("dim", dim, minimum=1))


def adaptive_c(num_scales, constants="paper"):
    """Adaptive robustness scale `c = exp(slope * ln(N - 1) + intercept)`, eq. 11.

    Args:
        num_scales: N (>= 2), a Python int or a tensor.
        constants: `"paper"` for eq. 11 (-1.18, -0.72), `"authors_code"` for the
            authors' code (-1.15, -0.85), or a `(slope, intercept)` pair.

    Returns:
        float32 scalar tensor.

    Reference: paper section 4.5, eq. 11; `docs/reference.md` "Schedules".
    """
    slope, intercept = adaptive_c_constants(constants)
    if is_concrete(num_scales):
        check_int("num_scales", num_scales, minimum=2)
    log_intervals = ops.log(ops.cast(num_scales, "float32") - 1.0)
    return ops.exp(slope * log_intervals + intercept)


def dim_scaled_constants(dim, constants="paper", reference_dim=PAPER_LATENT_DIM):
    """Eq. 11's constants for data of `dim` elements: c multiplied by sqrt(dim / reference_dim).

    The paper fitted eq. 11 on 32x32x4 latents, where iCT's c0 = 0.00054
    sqrt(d) also holds; scaling eq. 11 by the same c0(dim) / c0(reference_dim)
    keeps c in proportion to the typical residual norm of other data sizes.
    The factor is a shift of the intercept by 0.5 ln(dim / reference_dim).

    Args:
        dim: d, the number of elements of one sample (C * H * W).
        constants: as in `adaptive_c`.
        reference_dim: the d eq. 11 was fitted at (32 * 32 * 4).

    Returns:
        a `(slope, intercept)` pair of floats.

    Example:
    >>> slope, intercept = dim_scaled_constants(4 * 4 * 4)
    >>> round(float(adaptive_c(21, (slope, intercept)) / adaptive_c(21)), 4)
    0.125

    Reference: paper section 4.5, eq. 11; iCT (Song & Dhariwal 2023) for c0.
    """
    slope, intercept = adaptive_c_constants(constants)
    ratio = check_int("dim", dim, minimum=1) / check_int("reference_dim", reference_dim, minimum=1)
    return float(slope), float(intercept) + 0.5 * math.log(ratio)


def robustness_c(num_scales, c0, s0=CURRICULUM_S0, constants="paper"):
    """c used at discretization N: `c0` while `N <= s0 + 1`, then `adaptive_c`.

    The authors keep iCT's c0 for the curriculum's first stage and switch to
    eq. 11 once N has doubled. `constants=None` keeps c0 throughout (iCT).

    Args:
        num_scales: N, a Python int or a tensor.
        c0: the initial scale, e.g. `ict_c0(dim)` (> 0); may be a tensor.
        s0: the curriculum's initial number of intervals.
        constants: as in `adaptive_c`, or None for a fixed c0.
    """
    if is_concrete(c0) or not ops.is_tensor(c0):
        c0 = check_positive("c0", c0)
    c0 = ops.cast(c0, "float32")
    if constants is None:
        return c0
    n = ops.cast(num_scales, "float32")
    adaptive = adaptive_c(ops.maximum(n, 2.0), constants)
    return ops.where(n > ops.cast(s0, "float32") + 1.0, adaptive, c0)


def td_log_spread_sum(student, target):
    """The TD spread statistic of a batch: `(sum over samples of ln r_i, number of samples)`.

    `r_i = sqrt(mean over sample i's elements of (student_i - target_i)^2)`
    is the RMS of the sample's temporal difference (floored at
    `TD_RMS_FLOOR`). `exp(sum / count)` is the geometric mean of the r_i:
    the logarithm compresses the rare huge TDs of impulsive latent samples,
    and, being a sum, the statistic of a batch is the sum of those of its
    parts (micro-batches, replicas).

    Args:
        student, target: batches of the same shape `(batch, ...)`, e.g. the
            student output and the stop-gradient target of a training step.

    Returns:
        `(log_rms_sum, count)`: a float32 scalar and an int32 scalar.

    Example:
    >>> log_sum, count = td_log_spread_sum(np.full((2, 3), 0.5), np.zeros((2, 3)))
    >>> round(math.exp(float(log_sum) / int(count)), 6), int(count)
    (0.5, 2)

    Reference: paper section 4.5; `docs/reference.md` "Robustness scale c".
    """
    mean_square = losses.mean_squared_residual(student, target)
    log_rms = 0.5 * ops.log(ops.maximum(mean_square, TD_RMS_FLOOR**2))
    return ops.sum(log_rms), ops.cast(ops.shape(mean_square)[0], "int32")


def measured_c(c0, first_log_spread, stage_log_spread):
    """c of the measured schedule: `c0 * exp(stage_log_spread - first_log_spread)`.

    c0 scaled by the ratio of a stage's TD spread (the geometric mean of
    the per-sample TD RMS, see `td_log_spread_sum`) to that of the
    curriculum's first stage: c follows the TD values as N grows, as eq. 11
    was fitted to do, but for the data and run at hand.

    Args:
        c0: c of the first stage, e.g. `ict_c0(dim)`; a number or tensor.
        first_log_spread: the mean of ln r_i over the first stage.
        stage_log_spread: the mean of ln r_i over the stage c is for.

    Returns:
        float32 tensor.

    Example:
    >>> round(float(measured_c(0.03456, -3.0, -3.0 - math.log(2.0))), 5)
    0.01728

    Reference: paper section 4.5, eq. 11; `docs/reference.md` "Robustness scale c".
    """
    log_ratio = ops.cast(stage_log_spread, "float32") - ops.cast(first_log_spread, "float32")
    return ops.cast(c0, "float32") * ops.exp(log_ratio)


def precondition(sigma, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN):
    """EDM/CM preconditioning coefficients for `f = c_skip x + c_out F(c_in x, c_noise)`.

    `c_skip = sd^2 / ((s - smin)^2 + sd^2)`, `c_out = (s - smin) sd /
    sqrt(s^2 + sd^2)`, `c_in = 1 / sqrt(s^2 + sd^2)`, `c_noise = 250 ln(s)`,
    so that `c_skip(sigma_min) = 1` and `c_out(sigma_min) = 0` (the boundary
    condition f(x, sigma_min) = x).

    Args:
        sigma: noise levels, any shape.
        sigma_data: standard deviation of the data (0.5).
        sigma_min: the smallest noise level, where f is the identity; 0 gives
            EDM's preconditioning, without the boundary condition.

    Returns:
        `(c_skip, c_out, c_in, c_noise)`, float32 tensors shaped like `sigma`.

    Reference: paper eq. 2; `docs/reference.md` "Noise process and parameterization".
    """
    check_positive("sigma_data", sigma_data)
    check_positive("sigma_min", sigma_min, allow_zero=True)
    sigma = ops.cast(sigma, "float32")
    data_variance = sigma_data**2
    c_skip = data_variance / (ops.square(sigma - sigma_min) + data_variance)
    c_out = (sigma - sigma_min) * sigma_data / ops.sqrt(ops.square(sigma) + data_variance)
    c_in = 1.0 / ops.sqrt(ops.square(sigma) + data_variance)
    c_noise = 250.0 * ops.log(sigma + 1e-44)
    return c_skip, c_out, c_in, c_noise


def _check_grid(num_scales, sigma_min, sigma_max, rho):
    if is_concrete(num_scales):
        check_int("num_scales", num_scales, minimum=2)
    check_positive("sigma_min", sigma_min)
    check_positive("sigma_max", sigma_max)
    check_positive("rho", rho)
    if sigma_min >= sigma_max:
        raise ValueError(
            f"`sigma_min` must be smaller than `sigma_max`; received "
            f"sigma_min={sigma_min}, sigma_max={sigma_max}."
        )


def _check_curriculum_ends(s0, s1):
    s0 = check_int("s0", s0, minimum=1)
    s1 = check_int("s1", s1, minimum=1)
    if s1 < s0:
        raise ValueError(f"`s1` must be >= `s0`; received s0={s0}, s1={s1}.")
    return s0, s1


def adaptive_c_constants(constants):
    """eq. 11's (slope, intercept): a named pair of `ADAPTIVE_C_CONSTANTS`, or a pair of numbers or tensors."""
    if isinstance(constants, str):
        return ADAPTIVE_C_CONSTANTS[check_choice("constants", constants, ADAPTIVE_C_CONSTANTS)]
    if (
        isinstance(constants, (tuple, list))
        and len(constants) == 2
        and all(is_concrete(value) or ops.is_tensor(value) for value in constants)
    ):
        return constants
    raise ValueError(
        "`constants` must be one of "
        f"{', '.join(repr(name) for name in ADAPTIVE_C_CONSTANTS)} or a "
        f"(slope, intercept) pair of numbers; received {constants!r}."
    )
