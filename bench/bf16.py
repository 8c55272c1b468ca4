"""bfloat16 against float32: the same training run's losses, and the step time of each.

Trains one UNet preset twice from the same initial weights on the same OT-paired batches and the
same draws of noise levels, once under the `float32` dtype policy and once under
`mixed_bfloat16` (float32 variables, bfloat16 compute), and records every step's loss and time.
As in the authors'-step harness `compare_step.py` (not shipped; docs/benchmarks.md), the step is
mid-curriculum (N = 81 of a 70,000-step schedule, with its adaptive c), and the zero-initialized ends of the residual branches start from
small random weights, as after some training: at initialization the UNet outputs zeros and the
loss would not depend on the precision at all.
Reports how far the bf16 losses stray from the fp32 ones (relative difference per step, and of
the loss averaged over windows of 10 steps), the median step time of each, and draws both loss
curves in one PNG.

    KERAS_BACKEND=torch python bench/bf16.py --preset tiny --batch-size 32 --steps 100 \
        --output bench/results/bf16_torch.json --plot docs/images/bf16_losses_torch.png

bf16 pays off only where the CPU has bf16 instructions (`avx512_bf16` or AMX in `lscpu`);
elsewhere oneDNN falls back to slow reference kernels. Timings on a shared 2-core machine are
noisy: read the medians, and compare within one run.
"""

import argparse
import json
import os
import platform
import statistics


WINDOW = 10  # steps per window of the averaged-loss comparison


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="UNet preset (default: tiny)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100, help="training steps per policy (default: 100)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the median time (compilation)")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--plot", help="draw both loss curves into this PNG")
    args = parser.parse_args()
    if args.steps < max(WINDOW, args.warmup + 1):
        parser.error(f"--steps {args.steps} is too few: the loss is compared over windows of {WINDOW} steps "
                     f"and the time after {args.warmup} warm-up steps; use --steps {max(WINDOW, args.warmup + 1)} or more")
    return args


args = parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from harness import StepTimer  # noqa: E402
from harness import mid_curriculum_model  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")


def train(policy, latents):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)  # the same initial weights and noise-level draws under both policies
    model = mid_curriculum_model(args.preset, latents.shape[1:])
    rng = np.random.default_rng(1)
    for weight in model.network.weights:
        if not np.any(keras.ops.convert_to_numpy(weight)) and "beta" not in weight.path:
            weight.assign(0.05 * rng.standard_normal(weight.shape).astype("float32"))
    batches = NoisePairedDataset(latents, batch_size=args.batch_size, ot=True, seed=0, shuffle=False)
    timer = StepTimer()
    model.fit(batches, epochs=1, verbose=0, callbacks=[timer])
    keras.config.set_dtype_policy("float32")
    return timer


def windowed(values, width=WINDOW):
    values = np.asarray(values)
    return values[: len(values) // width * width].reshape(-1, width).mean(axis=1)


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for policy, record in records.items():
        axis.plot(np.arange(1, len(record.losses) + 1), record.losses, label=policy, linewidth=1)
    axis.set(xlabel="step", ylabel="training loss", yscale="log",
             title=f"{keras.backend.backend()}, UNet {args.preset}, batch {args.batch_size}: float32 vs mixed_bfloat16")
    axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)


latents = (0.5 * np.random.default_rng(0).standard_normal((args.steps * args.batch_size, 32, 32, 4))).astype("float32")
records = {}
for policy in POLICIES:
    records[policy] = train(policy, latents)
    print(f"{keras.backend.backend()} {args.preset} b{args.batch_size} {policy}: "
          f"median {statistics.median(records[policy].durations[args.warmup:]):.3f} s/step", flush=True)

fp32, bf16 = (np.asarray(records[policy].losses) for policy in POLICIES)
relative = np.abs(bf16 - fp32) / np.abs(fp32)
relative_windowed = np.abs(windowed(bf16) - windowed(fp32)) / np.abs(windowed(fp32))
times = {policy: statistics.median(records[policy].durations[args.warmup:]) for policy in POLICIES}
cpu_flags = ""
if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as file:
        cpu_flags = next((line for line in file if line.startswith("flags")), "")
results = {
    "backend": keras.backend.backend(),
    "keras": keras.__version__,
    "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    "cpu_bf16_instructions": sorted({flag for flag in cpu_flags.split() if "bf16" in flag or flag.startswith("amx")}),
    "preset": args.preset,
    "batch_size": args.batch_size,
    "steps": args.steps,
    "median_step_seconds": times,
    "float32_over_bfloat16_time": times["float32"] / times["mixed_bfloat16"],
    "loss_relative_difference": {
        "median": float(np.median(relative)),
        "max": float(relative.max()),
        f"windows_of_{WINDOW}_max": float(relative_windowed.max()),
    },
    "losses": {policy: records[policy].losses for policy in POLICIES},
}
print(json.dumps({key: value for key, value in results.items() if key != "losses"}, indent=2))
if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
if args.plot:
    plot(records, args.plot)
