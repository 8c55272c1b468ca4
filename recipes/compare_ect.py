"""From a diffusion model to a consistency model on the quickstart's digit latents: ECT against the paper's method.

Unconditional models of the quickstart's UNet (the network of its model.keras: NsLN, no labels),
from --seeds seeds, three methods with the same total wall time per seed, pretraining included:

- the paper's method from scratch, exactly as the quickstart trains its model.keras (Cauchy loss,
  diffusion loss, the curriculum up to N = 321 with the adaptive c, no OT, RAdam 1e-3, batch 64,
  EMA 0.995) for --steps steps; its training time T is the budget of the other two;
- diffusion + ECT: EDM diffusion training (`objective="edm"`) for --pretrain-share of T, then
  `ConsistencyModel.from_diffusion` (its EMA weights) tuned by ECT with the settings of ECT's main
  branch (`ECT()`: the pseudo-Huber norm with c = 0, i.e. the L2 norm, q = 2, 1 / (t - r)) for
  the rest of T, in --stages stages; the diffusion training and ECT both with RAdam at 3e-3
  (--diffusion-learning-rate, --ect-learning-rate: chosen by short probes on seeds 0 and 1 from
  3e-4 to 1e-2, docs/results.md);
- diffusion + ECT + Cauchy: the same diffusion model (trained once per seed; its time counts in
  both ECT methods), then ECT with the paper's Cauchy distance at the model's c.

Times are counted after each fit's first step, which traces and compiles it (`TrainingClock`):
the paper's method's T, the diffusion model's share of it, then ECT for T minus the diffusion
model's measured time. ECT's step count is set by the time, so its `stage_steps` comes from an
estimate of the steps it will run: the paper's method's steps per second on the same seed (a
step of either is a student's and a target's forward and the student's backward) times its
time, divided by --stages. The diffusion model is scored too, at 1 step and at EDM's Heun sampler
with --heun-steps levels: what the starting point is worth.

Each model samples --num-samples latents from the same noise (seed 10_000) at 1 and 2 steps (the
consistency models' second level is the quickstart model's `two_step_level`); they are scored like
the quickstart's, the Frechet distance and recall in the features of its digits classifier
against its training digits.

    KERAS_BACKEND=tensorflow python recipes/quickstart.py --output runs/quickstart   # once (make demo)
    KERAS_BACKEND=tensorflow python recipes/compare_ect.py --data runs/quickstart
    KERAS_BACKEND=tensorflow python recipes/compare_ect.py --fast             # a smoke run

Written to --output (default runs/ect): results.json (each method's mean and standard deviation
over the seeds and each seed's scores, steps and seconds, pretraining included; the diffusion
models' scores; the settings; recipes/report.py renders docs/results.md's table from it) and
samples.png (the first seed's 1-step samples, side by side: the paper's method | diffusion + ECT
| diffusion + ECT + Cauchy).

Reference: Geng et al. 2025 (ECT); Karras et al. 2022 (EDM); paper sections 4.2-4.5;
docs/objectives.md "ECT".
"""

import argparse
import os
import time

from run_folder import hold_run_folder  # recipes/run_folder.py: the standard library only

METHODS = ("the paper's method", "diffusion + ECT", "diffusion + ECT + Cauchy")
ECT_DISTANCES = {"diffusion + ECT": "pseudo_huber_norm", "diffusion + ECT + Cauchy": "cauchy"}
CURRICULUM_S1 = 320  # the quickstart's --curriculum-s1
SAMPLING_SEED = 10_000  # every model samples from the same noise
GRID = 10  # samples.png: 10 x 10 samples per method
CONSISTENCY_SAMPLERS = {"one_step": 1, "two_step": 2}  # the consistency models' scores: 1 and 2 steps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/quickstart",
                        help="the output folder of recipes/quickstart.py (default: %(default)s)")
    parser.add_argument("--output", default="runs/ect", help="folder for every result (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=900,
                        help="training steps of the paper's method; its time is the others' budget (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method, 0..K-1 (default: %(default)s)")
    parser.add_argument("--pretrain-share", type=float, default=0.5,
                        help="the share of the budget spent on diffusion pretraining, in (0, 1) (default: %(default)s)")
    parser.add_argument("--stages", type=int, default=4,
                        help="ECT's stages in the rest of the budget (stage_steps from the estimated steps; default: %(default)s)")
    parser.add_argument("--diffusion-learning-rate", type=float, default=3e-3,
                        help="RAdam's learning rate of the diffusion pretraining (default: %(default)s)")
    parser.add_argument("--ect-learning-rate", type=float, default=3e-3,
                        help="RAdam's learning rate of ECT (default: %(default)s)")
    parser.add_argument("--heun-steps", type=int, default=10,
                        help="levels of EDM's Heun sampler the diffusion models are scored at, besides 1 step "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=0.995, help="EMA of the weights sampled from (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=500, help="samples scored per model (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="a smoke run: 30 steps, 1 seed, 100 samples")
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.seeds, args.num_samples = 30, 1, 100
    for name in ("steps", "seeds", "stages", "heun_steps", "batch_size", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; received {getattr(args, name)}.")
    if not 0.0 < args.pretrain_share < 1.0:
        parser.error(f"--pretrain-share must lie strictly between 0 and 1 (the rest is ECT's); received {args.pretrain_share}.")
    for name in ("diffusion_learning_rate", "ect_learning_rate"):
        if not getattr(args, name) > 0.0:
            parser.error(f"--{name.replace('_', '-')} must be positive; received {getattr(args, name)}.")
    missing = [name for name in ("data.npz", "model.keras", "autoencoder.keras", "features.keras")
               if not os.path.exists(os.path.join(args.data, name))]
    if missing:
        parser.error(f"{args.data} lacks {', '.join(missing)}: run recipes/quickstart.py --output {args.data} first.")
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
from keras_lct.objectives import ECT  # noqa: E402
from keras_lct.optimizers import RAdam  # noqa: E402
from keras_lct.saving import write_json_atomic  # noqa: E402

from common import features  # noqa: E402  (recipes/common.py: what only the recipes share)
from common import framed  # noqa: E402
from common import run_provenance  # noqa: E402
from common import save_enlarged_grid  # noqa: E402
from common import scores  # noqa: E402
from common import stage_printer  # noqa: E402
from common import TrainingClock  # noqa: E402
from report import seed_summary  # noqa: E402

os.makedirs(args.output, exist_ok=True)
backend = keras.backend.backend()
stage = stage_printer(started)
print(f"keras-lct {keras_lct.__version__}: diffusion + ECT on the digit latents, on {backend}; writing to {args.output}/")

# ## The data: the quickstart's latents, its model's network and 2-step level, its autoencoder and feature network.
data = np.load(os.path.join(args.data, "data.npz"))
latents = data["latents"]
load = lambda name: keras.saving.load_model(os.path.join(args.data, name), compile=False)  # noqa: E731
quickstart_model, autoencoder, feature_network = (load(name) for name in ("model.keras", "autoencoder.keras", "features.keras"))
if quickstart_model.num_classes:
    raise SystemExit(f"error: {args.data}/model.keras is class-conditional; this comparison needs the quickstart's "
                     "unconditional model.keras.")
decode = LatentDecoder(quickstart_model.latent_normalization, autoencoder, batch_size=256)
network_config = quickstart_model.network.get_config()
two_step_level = quickstart_model.two_step_level
reference = features(feature_network, data["pixels"])


# ## One fit: --steps steps, or until a budget of seconds after the first (compiling) step.
def fit(model, seed, seconds=None, callbacks=()):
    batches = NoisePairedDataset(latents, batch_size=args.batch_size, ot=False, seed=seed)
    clock = TrainingClock(seconds)
    epochs = 10**6 // len(batches) if seconds is not None else -(-args.steps // len(batches))
    model.fit(batches, epochs=epochs, verbose=0, callbacks=[clock, *callbacks])
    return {"steps": int(model.training_step), "seconds": round(clock.seconds, 1)}


def scored(model, samplers):
    """`{key: scores}` of the model's samples at each `samplers` key's step count, and the 1-step images."""
    images = {key: decode(model.sample(args.num_samples, steps=steps, seed=SAMPLING_SEED, batch_size=args.num_samples))
              for key, steps in samplers.items()}
    return {key: scores(feature_network, reference, samples) for key, samples in images.items()}, images["one_step"]


def new_model(seed, **settings):
    model = ConsistencyModel(UNet.from_config(network_config), ema_decays=(args.ema_decay,), seed=seed,
                             latent_normalization=quickstart_model.latent_normalization, **settings)
    model.build((None,) + latents.shape[1:])
    return model


# ## Every seed: the paper's method first (its time is the budget), then the diffusion model and ECT from it twice.
per_seed = {method: [] for method in METHODS}
diffusion_runs = []
first_samples = {}
for seed in range(args.seeds):
    keras.utils.set_random_seed(seed)
    stage(f"training the paper's method, seed {seed}: {args.steps} steps")
    model = new_model(seed, two_step_level=two_step_level)
    model.compile(optimizer=RAdam(1e-3))
    paper = fit(model, seed, callbacks=[ExpCurriculum(s1=CURRICULUM_S1), AdaptiveC()])
    result, samples = scored(model, CONSISTENCY_SAMPLERS)
    per_seed[METHODS[0]].append({**paper, **result})
    first_samples.setdefault(METHODS[0], samples)
    budget, steps_per_second = paper["seconds"], paper["steps"] / max(paper["seconds"], 1e-9)
    stage(f"  the paper's method, seed {seed}: {paper['steps']} steps in {paper['seconds']:.1f} s; "
          f"1-step Frechet distance {result['one_step']['frechet_distance']:.2f}")

    keras.utils.set_random_seed(seed)
    stage(f"training the diffusion model, seed {seed}, for {args.pretrain_share * budget:.0f} s")
    diffusion = new_model(seed, objective="edm")
    diffusion.compile(optimizer=RAdam(args.diffusion_learning_rate))
    pretraining = fit(diffusion, seed, args.pretrain_share * budget)
    result, _ = scored(diffusion, {"one_step": 1, "heun": args.heun_steps})
    diffusion_runs.append({**pretraining, **result})
    stage(f"  the diffusion model, seed {seed}: {pretraining['steps']} steps in {pretraining['seconds']:.1f} s; "
          f"Frechet distance {result['one_step']['frechet_distance']:.2f} at 1 step, "
          f"{result['heun']['frechet_distance']:.2f} at {args.heun_steps} Heun levels")

    remaining = max(budget - pretraining["seconds"], 0.0)
    estimated_steps = steps_per_second * remaining
    stage_steps = max(1, round(estimated_steps / args.stages))
    for method, distance in ECT_DISTANCES.items():
        keras.utils.set_random_seed(seed)
        stage(f"training {method}, seed {seed}, for {remaining:.0f} s (about {estimated_steps:.0f} steps, "
              f"{stage_steps} a stage)")
        model = ConsistencyModel.from_diffusion(diffusion, objective=ECT(stage_steps=stage_steps, distance=distance),
                                                ema_decays=(args.ema_decay,), seed=seed, two_step_level=two_step_level)
        model.compile(optimizer=RAdam(args.ect_learning_rate))
        tuning = fit(model, seed, remaining)
        result, samples = scored(model, CONSISTENCY_SAMPLERS)
        per_seed[method].append({
            "steps": pretraining["steps"] + tuning["steps"], "seconds": round(pretraining["seconds"] + tuning["seconds"], 1),
            "pretraining_steps": pretraining["steps"], "pretraining_seconds": pretraining["seconds"],
            "ect_steps": tuning["steps"], "ect_seconds": tuning["seconds"], "ect_estimated_steps": round(estimated_steps),
            "stage_steps": stage_steps, "stages_reached": (max(tuning["steps"], 1) - 1) // stage_steps + 1, **result,
        })
        first_samples.setdefault(method, samples)
        stage(f"  {method}, seed {seed}: {tuning['steps']} ECT steps in {tuning['seconds']:.1f} s "
              f"({per_seed[method][-1]['stages_reached']} stages); 1-step Frechet distance "
              f"{result['one_step']['frechet_distance']:.2f}")

results = {
    "methods": {method: {**seed_summary(runs), "per_seed": runs} for method, runs in per_seed.items()},
    "diffusion": {**seed_summary(diffusion_runs, samplers=("one_step", "heun")), "per_seed": diffusion_runs,
                  "heun_steps": args.heun_steps},
    "seeds": list(range(args.seeds)), "steps": args.steps, "batch_size": args.batch_size, "ema_decay": args.ema_decay,
    "num_samples": args.num_samples, "two_step_level": two_step_level, "curriculum_s1": CURRICULUM_S1,
    "pretrain_share": args.pretrain_share, "stages": args.stages, "ect_q": ECT().q,
    "learning_rates": {"the paper's method": 1e-3, "diffusion": args.diffusion_learning_rate, "ect": args.ect_learning_rate},
    "ect_distances": ECT_DISTANCES,
    "equal_wall_time": "per seed, the diffusion model trains for the pretrain share of the seconds the paper's method "
                       "took, then each ECT model for the rest (the budget minus the diffusion model's measured seconds); "
                       "each fit's seconds are counted from the end of its first (compiling) step, which is excluded",
    "stage_steps": "the paper's method's steps per second on the same seed times ECT's seconds, divided by the stages",
    "reference": "features of the training digits",
    "backend": backend, "seconds": round(time.time() - started, 1), **run_provenance(backend),
}
write_json_atomic(os.path.join(args.output, "results.json"), results)

# ## The picture: each method's first 100 1-step samples (10 x 10), side by side.
size = first_samples[METHODS[0]].shape[1] + 2
count = min(GRID, int(len(first_samples[METHODS[0]]) ** 0.5))
panels = []
for method in METHODS:
    tiles = framed(first_samples[method][: count**2]).reshape(count, count, size, size, 1)
    panels += [tiles.transpose(0, 2, 1, 3, 4).reshape(count * size, count * size, 1),
               np.full((count * size, 4, 1), 0.5, np.float32)]
save_enlarged_grid(np.concatenate(panels[:-1], axis=1)[None], os.path.join(args.output, "samples.png"))
summary = results["diffusion"]
stage(f"the diffusion models: Frechet distance {summary['one_step']['frechet_distance']:.2f} at 1 step, "
      f"{summary['heun']['frechet_distance']:.2f} at {args.heun_steps} Heun levels")
for method in METHODS:
    summary = results["methods"][method]
    stage(f"{method}: Frechet distance {summary['one_step']['frechet_distance']:.2f} "
          f"+- {summary['one_step']['frechet_distance_std']:.2f} at 1 step, "
          f"{summary['two_step']['frechet_distance']:.2f} +- {summary['two_step']['frechet_distance_std']:.2f} at 2")
stage(f"done. In {args.output}/: results.json, samples.png (1 step: " + " | ".join(METHODS) + ")")
