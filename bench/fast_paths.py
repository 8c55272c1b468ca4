"""What the backend fast paths buy: the same training step with them on and off, interleaved.

One process, two copies of the same model, one traced and run under
`keras_lct.backend.use_fast_paths(True)`, the other under `(False)`: steps alternate between
them on the same OT-paired batch, so both see the same machine state (this machine's timings
drift by +-20% between runs; an interleaved ratio does not). Fast paths exist on torch (all of
them) and tensorflow (NsLN); on jax both columns run the same code and the ratio is ~1.

    KERAS_BACKEND=torch python bench/fast_paths.py --presets tiny small --batch-sizes 8 32
"""

import argparse
import json
import statistics
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"], help="UNet presets (default: tiny)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32])
    parser.add_argument("--rounds", type=int, default=10, help="timed (fast, plain) pairs per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    parser.add_argument("--output", help="also write the JSON here")
    return parser.parse_args()


args = parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from harness import mid_curriculum_model  # noqa: E402
from keras_lct.backend import use_fast_paths  # noqa: E402
from keras_lct.coupling import pair_noise  # noqa: E402


def measure(preset, batch_size):
    models = {}
    for enabled in (True, False):
        keras.utils.set_random_seed(0)
        models[enabled] = mid_curriculum_model(preset)
    rng = np.random.default_rng(1)
    clean = (0.5 * rng.standard_normal((batch_size, 32, 32, 4))).astype("float32")
    durations, losses = {True: [], False: []}, {}
    for round_index in range(args.warmup + args.rounds):
        noise = pair_noise(clean, rng.standard_normal(clean.shape).astype("float32"), ot=True)
        for enabled in (True, False):
            with use_fast_paths(enabled):
                start = time.perf_counter()
                losses[enabled] = float(models[enabled].train_on_batch(clean, noise, return_dict=True)["loss"])
                if round_index >= args.warmup:
                    durations[enabled].append(time.perf_counter() - start)
    fast, plain = statistics.median(durations[True]), statistics.median(durations[False])
    return {
        "preset": preset,
        "batch_size": batch_size,
        "fast_median_s": fast,
        "plain_median_s": plain,
        "plain_over_fast": plain / fast,
        "last_loss_fast": losses[True],
        "last_loss_plain": losses[False],
        "rounds": args.rounds,
    }


results = {"backend": keras.backend.backend(), "keras": keras.__version__, "runs": []}
for preset in args.presets:
    for batch_size in args.batch_sizes:
        run = measure(preset, batch_size)
        print(
            f"{results['backend']} {preset} b{batch_size}: fast {run['fast_median_s']:.3f} s/step, "
            f"plain {run['plain_median_s']:.3f} s/step, speed-up {run['plain_over_fast']:.2f}x; "
            f"last loss {run['last_loss_fast']:.6g} vs {run['last_loss_plain']:.6g}",
            flush=True,
        )
        results["runs"].append(run)
print(json.dumps(results, indent=2))
if args.output:
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
