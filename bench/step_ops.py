"""What one torch training step issues: aten ops, host syncs and seconds, eager and compiled.

On an accelerator an eager torch step costs about max(kernel time, the host's time to
launch its ops), and every host <-> device sync (a tensor read as a Python number)
stalls the launch queue. Both show on a CPU: a `TorchDispatchMode` sees every aten op
the step dispatches, and every tensor -> Python scalar conversion dispatches
`aten._local_scalar_dense`. So the counts here predict what a GPU sees, without one.

For each UNet preset, at the mid-curriculum point of `bench/harness.py` (N = 81,
eq. 11's c), after warm-up steps: the ops of one `train_on_batch` (the step `fit`
runs) under the counting mode, then the median seconds of the timed steps of `fit`
(outside it).
`--modes eager compiled`: `compile(jit_compile=False)` and `jit_compile=True`; where the
model cannot compile its step on torch (`ConsistencyModel.supports_jit`), the compiled
row says so instead of timing the eager step twice.

    KERAS_BACKEND=torch python bench/step_ops.py --presets tiny small --batch-size 8 \
        --output bench/results/step_ops_torch.json
"""

import argparse
import collections
import json
import os
import platform
import statistics

SYNC_OPS = ("aten._local_scalar_dense",)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], help="UNet presets (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"],
                        help="(default: %(default)s)")
    parser.add_argument("--output", help="also write the JSON here")
    return parser.parse_args()


args = parse_args()
os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() != "torch":
    raise SystemExit(f"bench/step_ops.py counts torch's aten ops; run it with KERAS_BACKEND=torch "
                     f"(the backend is {keras.backend.backend()!r}).")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from harness import StepTimer  # noqa: E402
from harness import mid_curriculum_model  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while it is active, by op name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def batch_of(rng):
    return rng.standard_normal((args.batch_size, 32, 32, 4)).astype("float32") * 0.5


def measure(preset, mode):
    keras.utils.set_random_seed(0)
    model = mid_curriculum_model(preset)
    model.compile(optimizer=model.optimizer, jit_compile=mode == "compiled")
    row = {"preset": preset, "mode": mode, "batch_size": args.batch_size}
    if mode == "compiled" and not model.supports_jit:
        return dict(row, compiled=False, reason="ConsistencyModel.supports_jit is False on torch here (docs/benchmarks.md)")
    rng = np.random.default_rng(0)
    timer = StepTimer()
    batches = [batch_of(rng) for _ in range(args.warmup + args.steps)]
    model.fit(np.concatenate(batches[: args.warmup]), batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
    counter = OpCounter()
    with counter:
        model.train_on_batch(batch_of(rng))
    model.fit(np.concatenate(batches[args.warmup :]), batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False,
              callbacks=[timer])
    step = statistics.median(timer.durations)
    return dict(
        row,
        compiled=mode == "compiled",
        aten_ops=sum(counter.ops.values()),
        host_syncs=sum(count for name, count in counter.ops.items() if name in SYNC_OPS),
        convolutions=counter.ops["aten.convolution"],
        top_ops=counter.ops.most_common(10),
        median_step_seconds=step,
        samples_per_second=args.batch_size / step,
    )


results = {
    "backend": "torch",
    "torch": torch.__version__,
    "keras": keras.__version__,
    "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "note": "aten ops and host syncs of one train_on_batch (the step fit runs, and the batch's transfer), "
            "counted by a TorchDispatchMode; seconds are medians of the timed steps of fit",
    "runs": [],
}
for preset in args.presets:
    for mode in args.modes:
        run = measure(preset, mode)
        results["runs"].append(run)
        if "aten_ops" in run:
            print(f"{preset} {mode}: {run['aten_ops']} aten ops, {run['host_syncs']} host syncs, "
                  f"{run['median_step_seconds']:.3f} s/step", flush=True)
        else:
            print(f"{preset} {mode}: not compiled ({run['reason']})", flush=True)
print(json.dumps(results, indent=2))
if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
