"""Sampling a consistency model with 1, 2 or more network evaluations.

The model's objective gives the levels and the rule (`keras_lct.objectives`);
for consistency training, `x = f(sigma_max z, sigma_max)`, then for every
further level s: `x = f(x + sqrt(s^2 - sigma_min^2) z', s)`. The 2-step level belongs to the
model (`ConsistencyModel(two_step_level=...)`, saved in its config), so a
model samples at the level it was trained and previewed with
(`keras_lct.objectives.two_step_sigma`).

Reference: paper table 1 (1 and 2 NFE); docs/reference.md "Sampling".
"""

import contextlib

import numpy as np

from keras_lct._validation import check_int
from keras_lct._validation import check_seed


def sample(model, num_samples, steps=1, ts=None, seed=None, batch_size=64, ema=True, verbose=0, labels=None):
    """Draws samples from a built `ConsistencyModel` by its objective's rule; see `ConsistencyModel.sample`."""
    num_samples = check_int("num_samples", num_samples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    levels = model.objective.sampling_levels(model, steps, ts)
    labels = model.sampling_labels(num_samples, labels)
    rng = np.random.default_rng(check_seed("seed", seed, allow_none=True))
    shape = (num_samples,) + model.data_shape
    if ema is False or (ema is True and not model.ema_decays):
        weights = contextlib.nullcontext()
    else:
        weights = model.ema.weights_in_network(None if ema is True else ema)

    def predict(inputs):
        inputs = inputs + ([] if labels is None else [labels])
        return np.asarray(model.predict(inputs, batch_size=batch_size, verbose=verbose), dtype=np.float32)

    with weights:
        return model.objective.sample(model, levels, rng, shape, predict)
