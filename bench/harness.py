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


def mid_curriculum_model(preset, data_shape=(32, 32, 4)):
    """A compiled `ConsistencyModel` around UNet `preset`, at step MID_STEP of its curriculum."""
    model = ConsistencyModel(UNet.from_preset(preset))
    model.build((None,) + tuple(data_shape))
    model.compile(optimizer=RAdam(1e-4, weight_decay=1e-4))
    model.set_curriculum(TOTAL_STEPS)
    model.set_robustness_schedule()
    model.training_step.assign(MID_STEP)
    return model
