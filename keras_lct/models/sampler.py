"""Sampling a consistency model with 1, 2 or more network evaluations.

`x = f(sigma_max z, sigma_max)`; then for every further level s:
`x = f(x + sqrt(s^2 - sigma_min^2) z', s)`. The 2-step level belongs to the
model (`ConsistencyModel(two_step_level=...)`, saved in its config), so a
model samples at the level it was trained and previewed with.

Reference: paper table 1 (1 and 2 NFE); docs/reference.md "Sampling".
"""

import contextlib
import math

import numpy as np

from keras_lct import schedules
from keras_lct._validation import check_int
from keras_lct._validation import check_seed

# The authors' 2-step level on CelebA-HQ and FFHQ: grid level 440 of the 641-level grid (~0.369).
TWO_STEP_LEVEL = (440, schedules.FINAL_NUM_SCALES)


def two_step_sigma(level, sigma_min=schedules.SIGMA_MIN, sigma_max=schedules.SIGMA_MAX, rho=schedules.RHO):
    """The noise level of a `two_step_level`: a float, or `(index, num_scales)` on the Karras grid."""
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        sigma = float(level)
    elif isinstance(level, (tuple, list)) and len(level) == 2 and all(isinstance(v, int) for v in level):
        index, num_scales = level
        if not 0 < index < num_scales - 1:
            raise ValueError(
                f"`two_step_level` {tuple(level)} names grid level {index} of {num_scales}; the second "
                f"step needs a level strictly between 0 and {num_scales - 1} (the grid's ends)."
            )
        sigma = float(schedules.karras_sigma(index, num_scales, sigma_min, sigma_max, rho))
    else:
        raise ValueError(
            "`two_step_level` must be a noise level (a float) or a grid position (index, num_scales) "
            f"such as {TWO_STEP_LEVEL}; received {level!r}."
        )
    if not (np.isfinite(sigma) and sigma_min < sigma < sigma_max):
        raise ValueError(f"`two_step_level` {level!r} is sigma = {sigma}, outside ({sigma_min}, {sigma_max}).")
    return sigma


def sampling_levels(model, steps=1, ts=None):
    """The noise levels `model` samples at: `ts` if given, else those of `steps` (1 or 2)."""
    if ts is None:
        steps = check_int("steps", steps, minimum=1)
        if steps == 1:
            return [model.sigma_max]
        if steps == 2:
            return [model.sigma_max, two_step_sigma(model.two_step_level, model.sigma_min, model.sigma_max, model.rho)]
        raise ValueError(
            f"`steps` must be 1 or 2 when `ts` is not given; received {steps}. "
            "Pass the noise levels as `ts` for more steps."
        )
    levels = [float(level) for level in np.asarray(ts, dtype=np.float64).reshape(-1)]
    if not levels:
        raise ValueError("`ts` must hold at least one noise level.")
    if any(not np.isfinite(level) or not model.sigma_min <= level <= model.sigma_max for level in levels):
        raise ValueError(
            f"`ts` must lie in [sigma_min, sigma_max] = [{model.sigma_min}, {model.sigma_max}]; received {levels}."
        )
    if any(later >= earlier for earlier, later in zip(levels, levels[1:])):
        raise ValueError(f"`ts` must be strictly decreasing; received {levels}.")
    return levels


def sample(model, num_samples, steps=1, ts=None, seed=None, batch_size=64, ema=True, verbose=0, labels=None):
    """Draws samples from a built `ConsistencyModel`; see `ConsistencyModel.sample`."""
    num_samples = check_int("num_samples", num_samples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    levels = sampling_levels(model, steps, ts)
    labels = model.sampling_labels(num_samples, labels)
    rng = np.random.default_rng(check_seed("seed", seed, allow_none=True))
    shape = (num_samples,) + model.data_shape
    if ema is False or (ema is True and not model.ema_decays):
        weights = contextlib.nullcontext()
    else:
        weights = model.ema.weights_in_network(None if ema is True else ema)
    with weights:
        x = levels[0] * rng.standard_normal(shape, dtype=np.float32)
        x = _denoise(model, x, levels[0], labels, batch_size, verbose)
        for level in levels[1:]:
            x = x + math.sqrt(level**2 - model.sigma_min**2) * rng.standard_normal(shape, dtype=np.float32)
            x = _denoise(model, x, level, labels, batch_size, verbose)
    return x


def _denoise(model, x, sigma, labels, batch_size, verbose):
    inputs = [x, np.full((x.shape[0],), sigma, dtype=np.float32)] + ([] if labels is None else [labels])
    return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=verbose), dtype=np.float32)
