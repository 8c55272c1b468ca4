"""Objectives on the quickstart's digit latents: the paper's method against MeanFlow, at equal wall time.

Three class-conditional models of the quickstart's conditional UNet (NsLN, the digit as its label,
10% of the labels dropped), each trained from --seeds seeds for the same wall-clock time (counted
after each model's first step, which traces and compiles it):

- the paper's method (`ConsistencyTraining`: Cauchy loss, diffusion loss, the curriculum with the
  adaptive c, minibatch OT within each digit), trained for --steps steps; its training time is the
  budget of the other two;
- MeanFlow with the official settings (`keras_lct.objectives.MeanFlow`: squared norm with the
  adaptive weight, guidance built into training with omega 1 and kappa 0.5, independent noise);
- MeanFlow with the paper's toolkit: the Cauchy distance (the model's c, no adaptive weight on top)
  and minibatch OT within each digit.

Each model samples 500 digits (0-9 in turn) at 1 and 2 steps; they are scored like the
quickstart's, the Frechet distance and recall in the features of its digits classifier, and the
conditional accuracy, the share of samples that classifier assigns to the requested digit.

    KERAS_BACKEND=tensorflow python recipes/quickstart.py --output runs/quickstart   # once (make demo)
    KERAS_BACKEND=tensorflow python recipes/compare_objectives.py --data runs/quickstart
    KERAS_BACKEND=tensorflow python recipes/compare_objectives.py --fast             # a smoke run

Written to --output (default runs/objectives): results.json (each method's mean and standard
deviation over the seeds and each seed's scores, steps and seconds; recipes/report.py renders
docs/results.md's table from it) and samples.png (each method's first-seed 1-step samples, one
row per digit, side by side).

Reference: Geng et al. 2025 (MeanFlow); paper sections 4.2-4.5; docs/objectives.md.
"""

import argparse
import os
import time

from run_folder import hold_run_folder  # recipes/run_folder.py: the standard library only

NUM_DIGITS = 10
METHODS = ("the paper's method", "MeanFlow", "MeanFlow + Cauchy + OT")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/quickstart",
                        help="the output folder of recipes/quickstart.py (default: %(default)s)")
    parser.add_argument("--output", default="runs/objectives", help="folder for every result (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=900,
                        help="training steps of the paper's method; its time is the others' budget (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method, 0..K-1 (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=0.995, help="EMA of the weights sampled from (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=500, help="samples scored per model (default: %(default)s)")
    parser.add_argument("--time-scale", type=float, default=1000.0,
                        help="MeanFlow's networks get this times t and t - r: the UNet's time embedding is EDM's, made "
                             "for noise labels 250 ln(sigma) of about +-1500 (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="a smoke run: 30 steps, 1 seed, 100 samples")
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.seeds, args.num_samples = 30, 1, 100
    for name in ("steps", "seeds", "batch_size", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; received {getattr(args, name)}.")
    missing = [name for name in ("data.npz", "conditional.keras", "autoencoder.keras", "features.keras", "classifier.keras")
               if not os.path.exists(os.path.join(args.data, name))]
    if missing:
        parser.error(f"{args.data} lacks {', '.join(missing)}: run recipes/quickstart.py --output {args.data} first "
                     "(with its conditional model).")
    return args


args = parse_args()
started = time.time()
hold_run_folder(args.output)

import keras  # noqa: E402  (after --help, which should not wait for a backend)
import numpy as np  # noqa: E402

import keras_lct  # noqa: E402
from keras_lct.callbacks import AdaptiveC  # noqa: E402
from keras_lct.callbacks import ExpCurriculum  # noqa: E402
from keras_lct.data import LatentDecoder  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402
from keras_lct.models import ConsistencyModel  # noqa: E402
from keras_lct.models import UNet  # noqa: E402
from keras_lct.objectives import MeanFlow  # noqa: E402
from keras_lct.optimizers import RAdam  # noqa: E402
from keras_lct.saving import write_json_atomic  # noqa: E402

from common import features  # noqa: E402  (recipes/common.py: what only the recipes share)
from common import framed  # noqa: E402
from common import run_provenance  # noqa: E402
from common import save_enlarged_grid  # noqa: E402
from common import scores  # noqa: E402
from common import stage_printer  # noqa: E402
from common import TrainingClock  # noqa: E402
from report import SCORES  # noqa: E402
from report import seed_summary  # noqa: E402

os.makedirs(args.output, exist_ok=True)
backend = keras.backend.backend()
stage = stage_printer(started)
print(f"keras-lct {keras_lct.__version__}: objectives on the digit latents, on {backend}; writing to {args.output}/")

# ## The data: the quickstart's latents and labels, its autoencoder, feature network and classifier.
data = np.load(os.path.join(args.data, "data.npz"))
if "labels" not in data:
    raise SystemExit(f"error: {args.data}/data.npz has no labels (written by an older quickstart): run it again.")
load = lambda name: keras.saving.load_model(os.path.join(args.data, name), compile=False)  # noqa: E731
quickstart_model, autoencoder, feature_network, classifier = (
    load(name) for name in ("conditional.keras", "autoencoder.keras", "features.keras", "classifier.keras"))
decode = LatentDecoder(quickstart_model.latent_normalization, autoencoder, batch_size=256)
network_config = quickstart_model.network.get_config()
latents, labels = data["latents"], data["labels"].astype("int32")
reference = features(feature_network, data["pixels"])
requested = np.arange(args.num_samples) % NUM_DIGITS


# ## One run: build a method's model, train it (for --steps, or for the paper's method's time), score it.
def train_and_score(method, seed, seconds=None):
    keras.utils.set_random_seed(seed)
    meanflow = method != "the paper's method"
    network = UNet.from_config({**network_config, "interval_embedding": meanflow})
    objective = None
    if method == "MeanFlow":
        objective = MeanFlow(time_scale=args.time_scale)
    elif method == "MeanFlow + Cauchy + OT":
        objective = MeanFlow(distance="cauchy", norm_p=0.0, time_scale=args.time_scale)
    model = ConsistencyModel(network, objective=objective, ema_decays=(args.ema_decay,), seed=seed,
                             latent_normalization=quickstart_model.latent_normalization,
                             two_step_level=quickstart_model.two_step_level)
    model.build((None,) + latents.shape[1:])
    model.compile(optimizer=RAdam(1e-3))
    batches = NoisePairedDataset(latents, batch_size=args.batch_size, ot=method != "MeanFlow", seed=seed, labels=labels)
    clock = TrainingClock(seconds)
    if meanflow:
        callbacks, epochs = [clock], 10**6 // len(batches)
    else:
        callbacks, epochs = [clock, ExpCurriculum(s1=320), AdaptiveC()], -(-args.steps // len(batches))
    model.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks)
    result = {"steps": int(model.training_step), "seconds": round(clock.seconds, 1)}
    images = {}
    for steps, key in ((1, "one_step"), (2, "two_step")):
        latent_samples = model.sample(args.num_samples, steps=steps, seed=10_000, labels=requested,
                                      batch_size=args.num_samples)
        images[key] = decode(latent_samples)
        predicted = np.argmax(classifier.predict(images[key], batch_size=len(requested), verbose=0), axis=-1)
        result[key] = dict(scores(feature_network, reference, images[key]), accuracy=float(np.mean(predicted == requested)))
    stage(f"  {method}, seed {seed}: {result['steps']} steps in {result['seconds']:.0f} s; 1-step Frechet distance "
          f"{result['one_step']['frechet_distance']:.2f}, accuracy {100 * result['one_step']['accuracy']:.1f}%")
    return result, images["one_step"]


# ## Every seed: the paper's method first, its training time the budget of the MeanFlow runs.
per_seed = {method: [] for method in METHODS}
first_samples = {}
for seed in range(args.seeds):
    budget = None
    for method in METHODS:
        stage(f"training {method}, seed {seed}" + ("" if budget is None else f" for {budget:.0f} s"))
        result, samples = train_and_score(method, seed, budget)
        budget = budget or result["seconds"]
        per_seed[method].append(result)
        if seed == 0:
            first_samples[method] = samples

results = {
    "methods": {method: {**seed_summary(runs, SCORES + ("accuracy",)), "per_seed": runs} for method, runs in per_seed.items()},
    "seeds": list(range(args.seeds)), "steps": args.steps, "batch_size": args.batch_size,
    "num_samples": args.num_samples, "meanflow_time_scale": args.time_scale,
    "equal_wall_time": "MeanFlow runs train for the seconds the paper's method took with the same seed, "
                       "each counted from the end of its first (tracing) step",
    "backend": backend, "seconds": round(time.time() - started, 1), **run_provenance(backend),
}
write_json_atomic(os.path.join(args.output, "results.json"), results)

# ## The picture: each method's 1-step samples, one row per digit (0-9), side by side.
size = first_samples[METHODS[0]].shape[1] + 2
panels = []
for method in METHODS:
    tiles = framed(first_samples[method][: NUM_DIGITS**2]).reshape(NUM_DIGITS, NUM_DIGITS, size, size, 1)
    panels += [tiles.transpose(1, 2, 0, 3, 4).reshape(NUM_DIGITS * size, NUM_DIGITS * size, 1),
               np.full((NUM_DIGITS * size, 4, 1), 0.5, np.float32)]
save_enlarged_grid(np.concatenate(panels[:-1], axis=1)[None], os.path.join(args.output, "samples.png"))
for method in METHODS:
    summary = results["methods"][method]
    stage(f"{method}: 1-step Frechet distance {summary['one_step']['frechet_distance']:.2f} "
          f"+- {summary['one_step']['frechet_distance_std']:.2f}, accuracy {100 * summary['one_step']['accuracy']:.1f}%")
stage(f"done. In {args.output}/: results.json, samples.png (1 step: " + " | ".join(METHODS) + ")")
