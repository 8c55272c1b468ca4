"""Trains the tiny test model for 2 epochs, on one device or data-parallel; run by test_distribute.py.

    KERAS_BACKEND=... python tests/distributed_fit.py --initial init.npz --output out.npz [--devices 2]

With `--devices 2`: jax on two forced host devices (XLA_FLAGS, set by the
caller), tensorflow on two logical CPUs, torch as one of two processes under
torchrun (gloo). Each process writes `<output>.rank<r>.npz`: its final
weights and state, its loss history and the shape of its batches.
"""

import argparse
import contextlib
import os
import sys

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--initial", required=True, help=".npz of the initial weights (written if missing)")
parser.add_argument("--output", required=True, help=".npz to write the final weights to")
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--accumulate", type=int, default=None, help="gradient accumulation steps")
args = parser.parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

if args.devices > 1 and keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)

sys.path.insert(0, os.path.dirname(__file__))
from keras_lct import distribute  # noqa: E402
from keras_lct.backend import distribute as engine  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402
from keras_lct.optimizers import RAdam  # noqa: E402
from test_scale_out import DATA  # noqa: E402
from test_scale_out import state_of  # noqa: E402
from test_scale_out import tiny_model  # noqa: E402

GLOBAL_BATCH = 16

run = distribute.data_parallel() if args.devices > 1 else None
if run is not None:
    assert run.num_replicas == args.devices, run
with run.scope() if run is not None else contextlib.nullcontext():
    model = tiny_model(RAdam(1e-2, gradient_accumulation_steps=args.accumulate), diffusion_fraction=0.6)
if os.path.exists(args.initial):
    initial = np.load(args.initial)
    model.set_weights([initial[f"w{i}"] for i in range(len(initial.files))])
elif run is None:
    np.savez(args.initial, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
model.set_curriculum(total_steps=8, s0=10, s1=20)

batch_size = GLOBAL_BATCH // (args.accumulate or 1)
# OT within the per-device batch of the two-device run, in both runs: the same noise.
batches = NoisePairedDataset(DATA, batch_size=batch_size, seed=1, ot_group_size=batch_size // 2,
                             shard=run.shard if run is not None else None)
shapes, gradient_passes = [], []


class RecordShapes(keras.callbacks.Callback):
    """Each batch's shape, and what the step's gradient pass called (torch in a process group: DDP)."""

    def on_train_batch_end(self, batch, logs=None):
        shapes.append(batches[batch][0].shape)
        gradient_passes.append(type(engine.gradient_synchronized(model.network)).__name__)


history = model.fit(batches, epochs=2, verbose=0, callbacks=[RecordShapes()])
rank = run.process_index if run is not None else 0
np.savez(args.output.replace(".npz", f".rank{rank}.npz"), loss=np.array(history.history["loss"]),
         training_step=keras.ops.convert_to_numpy(model.training_step),
         num_scales=keras.ops.convert_to_numpy(model.schedule.num_scales), batch_shape=np.array(shapes[0]),
         gradient_pass=np.array(sorted(set(gradient_passes))),
         **{f"s{i}": v for i, v in enumerate(state_of(model))})
print(f"rank {rank}: {run}, {len(shapes)} batches of {shapes[0]}")
