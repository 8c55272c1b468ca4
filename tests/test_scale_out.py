"""Gradient accumulation and mixed precision on every backend.

A step's batch may be split into micro-batches (gradient accumulation) and,
under data parallelism, across replicas; either way the update must be the
one step on the whole batch would make: the same noise and grid indices,
the diffusion loss normalized over the whole batch, and N, c, the EMA and
the step count advancing once per optimizer update.
"""

import keras
import numpy as np
import pytest

from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam

RNG = np.random.default_rng(3)
DATA = RNG.standard_normal((64, 8, 8, 4)).astype("float32")
NOISE = RNG.standard_normal((64, 8, 8, 4)).astype("float32")


def tiny_model(optimizer, **kwargs):
    network = UNet(img_resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
                   channels_per_head=8)
    model = ConsistencyModel(network, ema_decays=(0.9, 0.5), **kwargs)
    model.build((None, 8, 8, 4))
    model.compile(optimizer=optimizer)
    return model


def state_of(model):
    """Weights, EMA and schedule state, in order (the micro-batch counter left out)."""
    return [keras.ops.convert_to_numpy(v) for v in model.weights
            if "seed_generator" not in v.path and not v.path.endswith("micro_batch")]


@pytest.mark.compiled_step
def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
    # Large diffusion fraction: the low-noise samples differ in number between micro-batches.
    whole = tiny_model(RAdam(1e-2), diffusion_fraction=0.6)
    accumulated = tiny_model(RAdam(1e-2, gradient_accumulation_steps=4), diffusion_fraction=0.6)
    accumulated.set_weights(whole.get_weights())
    for model in (whole, accumulated):
        model.set_curriculum(total_steps=2, s0=10, s1=20)  # N doubles at the second update
    whole.fit(DATA, NOISE, batch_size=32, epochs=1, shuffle=False, verbose=0)
    history = accumulated.fit(DATA, NOISE, batch_size=8, epochs=1, shuffle=False, verbose=0)

    assert int(accumulated.training_step) == int(whole.training_step) == 2
    assert int(accumulated.optimizer.iterations) == 2
    assert int(accumulated.schedule.num_scales) == int(whole.schedule.num_scales) == 21
    for value, expected in zip(state_of(accumulated), state_of(whole), strict=True):
        np.testing.assert_allclose(value, expected, rtol=2e-4, atol=2e-6)
    assert np.isfinite(history.history["loss"]).all()


def test_micro_batches_draw_different_indices_that_together_are_the_whole_batchs():
    model = tiny_model(RAdam(1e-3, gradient_accumulation_steps=4))
    clean = keras.ops.convert_to_tensor(DATA[:8])
    step = keras.ops.convert_to_tensor(0)
    _, whole, _ = model.objective.draws(model, keras.ops.convert_to_tensor(DATA[:32]), None, step, 11)
    parts = [keras.ops.convert_to_numpy(model.objective.draws(model, clean, None, step, 11, share, 4)[1]) for share in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), keras.ops.convert_to_numpy(whole))
    assert len({tuple(part) for part in parts}) == 4


# Data with structure to learn: one pattern at random amplitudes.
PATTERNS = (RNG.standard_normal((1, 8, 8, 4)) * RNG.uniform(-1, 1, (64, 1, 1, 1))).astype("float32")


def denoising_error(model, sigma=2.0):
    denoised = keras.ops.convert_to_numpy(model.denoise(PATTERNS + sigma * NOISE, sigma))
    return float(np.mean((denoised - PATTERNS) ** 2))


def train_under(policy, initial_weights=None):
    """100 steps on PATTERNS; the L2 distance and diffusion loss on every sample learn fast."""
    keras.config.set_dtype_policy(policy)
    try:
        model = tiny_model(RAdam(1e-2), num_scales=11, loss="l2", diffusion_fraction=1.0)
    finally:
        keras.config.set_dtype_policy("float32")
    if initial_weights is not None:
        model.set_weights(initial_weights)
    initial = (model.get_weights(), denoising_error(model))
    history = model.fit(PATTERNS, NOISE, batch_size=16, epochs=25, shuffle=False, verbose=0)
    return model, history.history["loss"], initial


@pytest.fixture(scope="module")
def float32_run():
    return train_under("float32")


@pytest.mark.compiled_step
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_like_float32(policy, float32_run):
    reference, reference_losses, (initial_weights, initial_error) = float32_run
    model, losses, _ = train_under(policy, initial_weights)
    assert model.network.compute_dtype == policy.split("_")[1]
    assert not [v.path for v in model.weights if v.dtype in ("float16", "bfloat16")]  # float32 master weights
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    loss = model.compute_loss(x=keras.ops.convert_to_tensor(PATTERNS[:8]), y=keras.ops.convert_to_tensor(NOISE[:8]),
                              training=False)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"  # the losses stay float32
    assert all(np.isfinite(value).all() for value in state_of(model))
    assert np.isfinite(losses).all()
    # It learns: the loss falls and the denoiser improves, as much as in float32.
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert denoising_error(model) < 0.8 * initial_error
    np.testing.assert_allclose(losses, reference_losses, rtol=0.05)
    np.testing.assert_allclose(denoising_error(model), denoising_error(reference), rtol=0.05)

