"""What one torch training step launches: ops, host syncs and seconds, eager and compiled.

On an accelerator an eager torch step costs about max(kernel time, the host's time to
launch its ops), and every host <-> device sync (a tensor read as a Python number)
stalls the launch queue. Both show on a CPU: torch's profiler records every op the step
launches, and every tensor -> Python scalar conversion calls `aten._local_scalar_dense`.
So the counts here predict what a GPU sees, without one (`launched_ops` says what counts).

For each UNet preset, at the mid-curriculum point of `bench/harness.py` (N = 81,
eq. 11's c), after warm-up steps: the ops of one `train_on_batch` (the step `fit`
runs) under the profiler, then the median seconds of the timed steps of `fit`
(outside it).
`--modes eager compiled`: `compile(jit_compile=False)` and `jit_compile=True` (the network's
calls compiled by torch.compile, `keras_lct.backend.compiled`); the compiled row also gives the
first step's seconds, which include compiling (inductor writes its kernels to its on-disk cache,
so a later process compiles faster). `--presets` takes UNet presets on 32x32x4 latents and
`digits`, the quickstart's UNet on its 4x4x4 latents (run it with the quickstart's batch, 64).

    KERAS_BACKEND=torch python bench/step_ops.py --presets tiny small --batch-size 8 \
        --output bench/results/step_ops_torch.json
    KERAS_BACKEND=torch python bench/step_ops.py --presets digits --batch-size 64 \
        --output bench/results/step_ops_torch_digits.json
"""

import argparse
import collections
import json
import os
import platform
import statistics

SYNC_OP = "aten::_local_scalar_dense"  # a host sync, wherever it is called from
INDUCTOR_KERNEL_PREFIXES = ("graph_", "cpp_fused", "triton_")  # inductor's kernels, named by the profiler


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
import torch._inductor.config  # noqa: E402

torch._inductor.config.cpp.enable_kernel_profile = True  # CPU kernels show in the profiler (GPU kernels always do)

from harness import StepTimer  # noqa: E402
from harness import mid_curriculum_model  # noqa: E402


def launched_ops(step):
    """The ops one call of `step` launches, by name, from torch's profiler.

    An aten op counts when Python, the autograd engine or compiled code calls it, not when another
    aten op does (`aten::convolution` calls `aten::_convolution` ...); each fused kernel of a
    torch.compile'd graph counts once ("inductor kernel"). A TorchDispatchMode would not do: dynamo
    runs a compiled function eagerly while one is active.

    Returns:
        `(launched, every)`: the ops launched as above, and every profiled event by name,
        wherever it was called from (for the host syncs and the convolutions).
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    launched, every = collections.Counter(), collections.Counter()
    for event in profile.events():
        every[event.name] += 1
        parent = event.cpu_parent
        if event.name.startswith("aten::") and (parent is None or not parent.name.startswith("aten::")):
            launched[event.name] += 1
        elif event.name.startswith(INDUCTOR_KERNEL_PREFIXES):
            launched["inductor kernel"] += 1
    return launched, every


def measure(preset, mode):
    keras.utils.set_random_seed(0)
    model = mid_curriculum_model(preset, jit_compile=mode == "compiled")
    row = {"preset": preset, "mode": mode, "batch_size": args.batch_size}
    rng = np.random.default_rng(0)
    data_shape = model.data_shape
    batches = [rng.standard_normal((args.batch_size,) + data_shape).astype("float32") * 0.5
               for _ in range(args.warmup + args.steps + 1)]
    timer = StepTimer()
    model.fit(np.concatenate(batches[: args.warmup]), batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False,
              callbacks=[timer])
    first_step = timer.durations[0]
    timer = StepTimer()
    ops, every = launched_ops(lambda: model.train_on_batch(batches[-1]))
    model.fit(np.concatenate(batches[args.warmup : -1]), batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False,
              callbacks=[timer])
    step = statistics.median(timer.durations)
    return dict(
        row,
        compiled=mode == "compiled",
        first_step_seconds=first_step,
        ops_launched=sum(ops.values()),
        inductor_kernels=ops["inductor kernel"],
        host_syncs=every[SYNC_OP],
        convolutions=every["aten::convolution"] + every["aten::convolution_backward"],
        top_ops=ops.most_common(10),
        median_step_seconds=step,
        samples_per_second=args.batch_size / step,
    )


results = {
    "backend": "torch",
    "torch": torch.__version__,
    "keras": keras.__version__,
    "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "note": "ops launched and host syncs of one train_on_batch (the step fit runs, and the batch's transfer), "
            "counted from torch's profiler (bench/step_ops.py launched_ops); seconds are medians of the timed "
            "steps of fit; first_step_seconds includes compiling",
    "runs": [],
}
for preset in args.presets:
    for mode in args.modes:
        run = measure(preset, mode)
        results["runs"].append(run)
        print(f"{preset} {mode}: {run['ops_launched']} ops launched ({run['inductor_kernels']} inductor kernels), {run['host_syncs']} host syncs, "
              f"{run['median_step_seconds']:.3f} s/step (first step {run['first_step_seconds']:.1f} s)", flush=True)
print(json.dumps(results, indent=2))
if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
