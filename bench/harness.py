"""What the benchmarks share: a per-batch timer, and the mid-curriculum model of
the authors'-step harness `compare_step.py` (not shipped; docs/benchmarks.md), so that our
figures time the same step as the authors' side."""

import time

import keras

from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam

# Step 35,000 of a 70,000-step curriculum: N = 81, with eq. 11's adaptive c.
TOTAL_STEPS, MID_STEP = 70000, 35000


class StepTimer(keras.callbacks.Callback):
    """The seconds and the logged loss of every training batch."""

    def __init__(self):
        super().__init__()
        self.durations, self.losses = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self.start)
        self.losses.append(float(logs["loss"]))


# The quickstart's UNet (recipes/quickstart.py) on its 4x4x4 digit latents: where per-layer overhead,
# not arithmetic, sets a CPU step's time.
DIGITS_UNET = dict(img_resolution=4, in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                   num_blocks=1, attn_resolutions=(), channels_per_head=64)


def network_and_data_shape(preset):
    """The UNet of `preset` (a UNet preset, or "digits": `DIGITS_UNET`) and its data shape."""
    if preset == "digits":
        return UNet(**DIGITS_UNET), (4, 4, 4)
    return UNet.from_preset(preset), (32, 32, 4)


def mid_curriculum_model(preset, data_shape=None, jit_compile="auto"):
    """A compiled `ConsistencyModel` around UNet `preset`, at step MID_STEP of its curriculum."""
    network, preset_data_shape = network_and_data_shape(preset)
    model = ConsistencyModel(network)
    model.build((None,) + tuple(data_shape or preset_data_shape))
    model.compile(optimizer=RAdam(1e-4, weight_decay=1e-4), jit_compile=jit_compile)
    model.set_curriculum(TOTAL_STEPS)
    model.set_robustness_schedule()
    model.training_step.assign(MID_STEP)
    return model
