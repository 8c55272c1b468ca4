"""Training-step throughput of ConsistencyModel on the active Keras backend.

For each UNet preset and with minibatch OT pairing on and off, runs `fit` on
random 32x32x4 "latents" and times every step after a warm-up (compilation,
first allocations). Prints one JSON document: median seconds per step,
steps/s and samples/s, plus the median OT pairing time of a batch.

    KERAS_BACKEND=jax python bench/train_step.py --presets tiny small --output bench/results/train_step_jax.json

Timings on a shared 2-core machine are noisy: compare ratios measured in one
run, and read medians, not single steps.
"""

import argparse
import json
import os
import platform
import statistics
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="UNet presets (default: tiny small)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--dtype-policy", default="float32", help="Keras dtype policy, e.g. mixed_bfloat16 (default: float32)")
    parser.add_argument("--ot", choices=["both", "on", "off"], default="both", help="OT pairing settings to time (default: both)")
    parser.add_argument("--output", help="also write the JSON here")
    return parser.parse_args()


args = parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from harness import StepTimer  # noqa: E402
from keras_lct.callbacks import AdaptiveC  # noqa: E402
from keras_lct.callbacks import ExpCurriculum  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402
from keras_lct.coupling import pair_noise  # noqa: E402
from keras_lct.models import ConsistencyModel  # noqa: E402
from keras_lct.models import UNet  # noqa: E402
from keras_lct.optimizers import RAdam  # noqa: E402


def measure(preset, ot):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.dtype_policy)
    network = UNet.from_preset(preset)
    model = ConsistencyModel(network)
    model.build((None, 32, 32, 4))
    model.compile(optimizer=RAdam(1e-4, weight_decay=1e-4))
    total = args.warmup + args.steps
    latents = np.random.default_rng(0).standard_normal((total * args.batch_size, 32, 32, 4)).astype("float32") * 0.5
    batches = NoisePairedDataset(latents, batch_size=args.batch_size, ot=ot, seed=0, shuffle=False)
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(batches, epochs=1, verbose=0, callbacks=[ExpCurriculum(total), AdaptiveC(), timer])
    wall = time.perf_counter() - start
    step = statistics.median(timer.durations[args.warmup :])
    return {
        "preset": preset,
        "ot": ot,
        "dtype_policy": args.dtype_policy,
        "parameters": int(sum(np.prod(v.shape) for v in network.trainable_variables)),
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "median_step_seconds": step,
        "steps_per_second": 1.0 / step,
        "samples_per_second": args.batch_size / step,
        "first_step_seconds": timer.durations[0],
        "wall_seconds": wall,
    }


def ot_pairing_seconds(repeats=20):
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((args.batch_size, 32 * 32 * 4)).astype("float32")
    durations = []
    for _ in range(repeats):
        noise = rng.standard_normal(x0.shape).astype("float32")
        start = time.perf_counter()
        pair_noise(x0, noise, ot=True)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def accelerator():
    """The GPU/TPU the backend runs on, or None on CPU."""
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import tensorflow as tf

    return ", ".join(device.name for device in tf.config.list_physical_devices("GPU")) or None


results = {
    "backend": keras.backend.backend(),
    "keras": keras.__version__,
    "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    "accelerator": accelerator(),
    "median_ot_pairing_seconds_per_batch": ot_pairing_seconds(),
    "runs": [],
}
for preset in args.presets:
    for ot in {"both": (False, True), "on": (True,), "off": (False,)}[args.ot]:
        run = measure(preset, ot)
        print(f"{results['backend']} {preset} ot={ot}: {run['steps_per_second']:.3f} steps/s, {run['samples_per_second']:.1f} samples/s", flush=True)
        results["runs"].append(run)
print(json.dumps(results, indent=2))
if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
