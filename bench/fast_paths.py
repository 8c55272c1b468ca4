"""What the backend fast paths buy: the same training step with them on and off, interleaved.

One process, two copies of the same model, one traced and run under
`keras_lct.backend.use_fast_paths(True)`, the other under `(False)`: steps alternate between
them on the same OT-paired batch, so both see the same machine state (this machine's timings
drift by +-20% between runs; an interleaved ratio does not). Fast paths exist on torch (all of
them) and tensorflow (NsLN); on jax both columns run the same code and the ratio is ~1.

`--attention` also times the two attention layers alone, the same way (forward, backward and an
SGD update of a one-layer model on an MSE loss): the UNet's `AttentionBlock` at the `small`
preset's 16x16 level (128 channels, 2 heads) and the VAE's mid-block `VAEAttention` at Stable
Diffusion's shape for 256x256 images (32x32 pixels, 512 channels, one head). Both compute
`keras_lct.layers.core.dot_product_attention`.

    KERAS_BACKEND=torch python bench/fast_paths.py --presets tiny small --batch-sizes 8 32
    KERAS_BACKEND=torch python bench/fast_paths.py --presets tiny --batch-sizes 8 --attention
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
    parser.add_argument("--attention", action="store_true", help="also time the attention layers alone")
    parser.add_argument("--attention-batch-size", type=int, default=8, help="AttentionBlock's batch (VAEAttention: 2)")
    parser.add_argument("--output", help="also write the JSON here")
    return parser.parse_args()


args = parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from harness import mid_curriculum_model  # noqa: E402
from keras_lct.backend import use_fast_paths  # noqa: E402
from keras_lct.coupling import pair_noise  # noqa: E402
from keras_lct.layers import AttentionBlock  # noqa: E402
from keras_lct.vae.autoencoder import VAEAttention  # noqa: E402


def interleaved(make_model, make_batch, rng):
    """Median s/step and last loss of two copies of `make_model()`, one stepped under the fast
    paths and one without, alternating on the same batches `make_batch(rng)`."""
    models = {}
    for enabled in (True, False):
        keras.utils.set_random_seed(0)
        models[enabled] = make_model()
    durations, losses = {True: [], False: []}, {}
    for round_index in range(args.warmup + args.rounds):
        inputs, targets = make_batch(rng)
        for enabled in (True, False):
            with use_fast_paths(enabled):
                start = time.perf_counter()
                losses[enabled] = float(models[enabled].train_on_batch(inputs, targets, return_dict=True)["loss"])
                if round_index >= args.warmup:
                    durations[enabled].append(time.perf_counter() - start)
    fast, plain = statistics.median(durations[True]), statistics.median(durations[False])
    return {
        "fast_median_s": fast,
        "plain_median_s": plain,
        "plain_over_fast": plain / fast,
        "last_loss_fast": losses[True],
        "last_loss_plain": losses[False],
        "rounds": args.rounds,
    }


def measure(preset, batch_size):
    rng = np.random.default_rng(1)
    clean = (0.5 * rng.standard_normal((batch_size, 32, 32, 4))).astype("float32")

    def ot_paired_batch(rng):
        return clean, pair_noise(clean, rng.standard_normal(clean.shape).astype("float32"), ot=True)

    return {"preset": preset, "batch_size": batch_size, **interleaved(lambda: mid_curriculum_model(preset), ot_paired_batch, rng)}


def one_layer_model(layer, shape):
    """`layer` alone in a model trained by SGD on an MSE loss; zero-initialized outputs randomized."""
    model = keras.Sequential([keras.Input(shape), layer])
    for weight in model.weights:
        if not np.any(keras.ops.convert_to_numpy(weight)):
            weight.assign(np.random.default_rng(2).normal(0.0, 0.02, weight.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    return model


def measure_attention(name, make_layer, batch_size, shape):
    def random_batch(rng):
        return tuple(rng.standard_normal((batch_size,) + shape).astype("float32") for _ in range(2))

    run = interleaved(lambda: one_layer_model(make_layer(), shape), random_batch, np.random.default_rng(1))
    return {"layer": name, "batch_size": batch_size, "input_shape": [batch_size, *shape], **run}


def report(run):
    print(
        f"{results['backend']} {run.get('preset') or run['layer']} b{run['batch_size']}: fast {run['fast_median_s']:.4f} s/step, "
        f"plain {run['plain_median_s']:.4f} s/step, speed-up {run['plain_over_fast']:.2f}x; "
        f"last loss {run['last_loss_fast']:.6g} vs {run['last_loss_plain']:.6g}",
        flush=True,
    )
    results["runs"].append(run)


results = {"backend": keras.backend.backend(), "keras": keras.__version__, "runs": []}
for preset in args.presets:
    for batch_size in args.batch_sizes:
        report(measure(preset, batch_size))
if args.attention:
    report(measure_attention("AttentionBlock", lambda: AttentionBlock(128, num_heads=2), args.attention_batch_size, (16, 16, 128)))
    report(measure_attention("VAEAttention", lambda: VAEAttention(512, norm_num_groups=32), 2, (32, 32, 512)))
print(json.dumps(results, indent=2))
if args.output:
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
