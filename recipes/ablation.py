"""Ablations: the paper's table 2, in miniature, on the quickstart's digit latents.

Every row trains the quickstart's UNet from scratch for the same steps with the same seeds; only
the row's settings change. The tables (paper section 5.3, table 2):

- 2a, the techniques one by one: iLCT (pseudo-Huber, c fixed at c0, no diffusion loss,
  independent noise, GroupNorm) -> + Cauchy loss -> + diffusion loss (r = 0.25) -> + minibatch OT
  -> + adaptive c (eq. 11) -> + NsLN, which is the paper's method; and one row the paper does not
  have: its method with `AdaptiveC("measured")`, c following the measured TD spread instead of eq. 11;
- 2b, the diffusion loss threshold r in {1.0, 0.6, 0.25};
- 2c, the robust loss: L2, pseudo-Huber, Geman-McClure, Cauchy;
- 2d, the normalization: GN, IN, LN, RMS, NsLN, and the non-scaling GroupNorm and InstanceNorm
  the paper leaves to future work (section 6).

Two data variants: `digits`, the quickstart's latents as they are, and `impulsive`, the same
latents with a documented fraction of their elements replaced by impulsive outliers (the paper's
premise, section 4.1, which the digit latents lack; table 2a only by default). Fig. 1's
statistics of both go to latent_statistics.json.

    KERAS_BACKEND=tensorflow python recipes/quickstart.py --output runs/quickstart   # once (make demo)
    KERAS_BACKEND=jax python recipes/ablation.py --data runs/quickstart       # every table, 3 seeds
    KERAS_BACKEND=jax python recipes/ablation.py --data runs/quickstart --quick --tables 2b
    KERAS_BACKEND=jax python recipes/ablation.py --report-only    # the tables so far, e.g. from another shell

Each (variant, row, seed) run is written when it ends, to --output (default runs/ablation):
runs/<variant>/<row>/seed<k>.json (Frechet distance and recall of 1- and 2-step samples, and the
1-step distance over training), runs/<variant>/<row>/samples.png (seed 0's 1-step samples). A
rerun skips the runs already there, so an interrupted ablation loses one run at most; a rerun with
other training settings is refused. After every run: results.md and results.json (every table,
mean +- std over seeds), curves_<variant>_<table>.png (each row's 1-step Frechet distance over
training) and
grids_<variant>_<table>.png (each row's samples side by side).

Reference: paper section 5.3 and table 2; docs/results.md for the measured tables.
"""

import argparse
import json
import os
import time

TABLES = ("2a", "2b", "2c", "2d")
VARIANTS = ("digits", "impulsive")
# The `impulsive` variant (`keras_lct.analysis.with_impulsive_outliers`): this fraction of the latent
# values becomes +-U(4, 8).
OUTLIER_FRACTION = 0.005
OUTLIER_MAGNITUDE = (4.0, 8.0)
CURVE_POINTS = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/quickstart",
                        help="the output folder of recipes/quickstart.py (default: %(default)s)")
    parser.add_argument("--output", default="runs/ablation", help="folder for every result (default: %(default)s)")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES, help="tables to run (default: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="data variants (default: both; `impulsive` runs table 2a only unless --all-tables)")
    parser.add_argument("--all-tables", action="store_true", help="run every chosen table on every variant")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row, 0..K-1 (default: 3; 2 with --quick)")
    parser.add_argument("--steps", type=int, default=600, help="training steps of every run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=0.995, help="EMA sampled from (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="RAdam learning rate (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=500, help="samples per metric (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.md / .json and the figures from the runs done so far; train nothing")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 seeds, 20 steps, 100 samples (the numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    if args.quick:
        args.steps, args.num_samples, args.ema_decay = 20, 100, 0.9
    for name in ("seeds", "steps", "batch_size", "num_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; received {getattr(args, name)}.")
    missing = [name for name in ("data.npz", "model.keras", "autoencoder.keras", "features.keras", "metrics.json")
               if not os.path.exists(os.path.join(args.data, name))]
    if not missing:
        with open(os.path.join(args.data, "metrics.json")) as file:
            if "two_step_level" not in json.load(file):  # written before the models kept their 2-step level
                missing = ["a model with its 2-step level"]
    if missing:
        parser.error(f"--data {args.data} lacks {', '.join(missing)}: it must be the output folder of "
                     f"`python recipes/quickstart.py --output {args.data}` (rerun it with this version).")
    return args


args = parse_args()
started = time.time()

import hashlib  # noqa: E402

import keras  # noqa: E402  (after --help, which should not wait for a backend)
import numpy as np  # noqa: E402

import keras_lct  # noqa: E402
from keras_lct import analysis  # noqa: E402
from keras_lct.callbacks import AdaptiveC  # noqa: E402
from keras_lct.callbacks import ExpCurriculum  # noqa: E402
from keras_lct.data import LatentDecoder  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402
from keras_lct.models import ConsistencyModel  # noqa: E402
from keras_lct.models import UNet  # noqa: E402
from keras_lct.optimizers import RAdam  # noqa: E402
from keras_lct.analysis import new_figure  # noqa: E402
from keras_lct.analysis import save_figure  # noqa: E402
from keras_lct.saving import write_text_atomic  # noqa: E402
from keras_lct.saving import write_json_atomic  # noqa: E402

from common import claim_run_folder  # noqa: E402  (recipes/common.py: what only the recipes share)
from common import features  # noqa: E402
from common import framed  # noqa: E402
from common import hold_run_folder  # noqa: E402
from common import save_enlarged_grid  # noqa: E402
from common import scores  # noqa: E402
from common import stage_printer  # noqa: E402

hold_run_folder(args.output)  # before anything is written there: refused while another live run writes it
backend = keras.backend.backend()
stage = stage_printer(started)  # prints "[  seconds] message"

# ## The rows. A row is its settings; rows shared by several tables are trained once.
# "adaptive_c": False (c = c0 throughout) or the `constants` of AdaptiveC: "paper" (eq. 11) or "measured".
ILCT = {"loss": "pseudo_huber", "r": 0.0, "ot": False, "adaptive_c": False, "norm": "group"}
STEPS_OF_2A = [("+ Cauchy", {"loss": "cauchy"}), ("+ diffusion loss", {"r": 0.25}), ("+ OT", {"ot": True}),
               ("+ adaptive c", {"adaptive_c": "paper"}), ("+ NsLN", {"norm": "nsln"})]
ROWS_2A = [("iLCT", ILCT)]
for label, change in STEPS_OF_2A:
    ROWS_2A.append((label, {**ROWS_2A[-1][1], **change}))
PAPER = ROWS_2A[-1][1]
TABLE_ROWS = {
    "2a": ROWS_2A + [("the method, measured c", {**PAPER, "adaptive_c": "measured"})],
    "2b": [(f"r = {r}", {**PAPER, "r": r}) for r in (1.0, 0.6, 0.25)],
    "2c": [(label, {**PAPER, "loss": loss}) for label, loss in
           [("L2", "l2"), ("Pseudo-Huber", "pseudo_huber"), ("Geman-McClure", "geman_mcclure"), ("Cauchy", "cauchy")]],
    "2d": [(label, {**PAPER, "norm": norm}) for label, norm in
           [("GN", "group"), ("IN", "instance"), ("LN", "layer"), ("RMS", "rms"), ("NsLN", "nsln"),
            ("NsGN", "nsgn"), ("NsIN", "nsin")]],
}
TABLE_TITLES = {
    "2a": "2a: the techniques one by one", "2b": "2b: diffusion loss threshold r",
    "2c": "2c: robust loss", "2d": "2d: normalization",
}


C_KEYS = {False: "c0", "paper": "adaptive", "measured": "measured"}


def row_key(settings):
    return (f"{settings['loss']}_r{settings['r']}_{'ot' if settings['ot'] else 'independent'}_"
            f"{C_KEYS[settings['adaptive_c']]}_{settings['norm']}")


# ## The data: the quickstart's latents, its autoencoder and feature network.
data = np.load(os.path.join(args.data, "data.npz"))
quickstart_model = keras.saving.load_model(os.path.join(args.data, "model.keras"), compile=False)
autoencoder = keras.saving.load_model(os.path.join(args.data, "autoencoder.keras"), compile=False)
feature_network = keras.saving.load_model(os.path.join(args.data, "features.keras"), compile=False)
normalization = quickstart_model.latent_normalization
decode = LatentDecoder(normalization, autoencoder, batch_size=256)
network_config = quickstart_model.network.get_config()
two_step_level = quickstart_model.two_step_level  # every row samples 2 steps where the quickstart did

# Each variant: the latents to learn and the features of the images they stand for, the metrics'
# reference. For `digits` those are the real training digits, as in the quickstart; for `impulsive`
# the decoded outlier-laden latents, since they are the distribution the models are asked to learn.
variants = {}
for variant in args.variants:
    latents = data["latents"]
    if variant == "impulsive":
        latents = analysis.with_impulsive_outliers(latents, OUTLIER_FRACTION, OUTLIER_MAGNITUDE, seed=1)
    reference_images = data["pixels"] if variant == "digits" else decode(latents)
    variants[variant] = {"latents": latents, "reference": features(feature_network, reference_images)}


# ## The run's identity: a rerun continues only with the same training settings and data.
def fingerprint(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


identity = {
    "backend": backend, "steps": args.steps, "batch_size": args.batch_size, "ema_decay": args.ema_decay,
    "learning_rate": args.learning_rate, "num_samples": args.num_samples, "two_step_level": two_step_level,
    "outlier_fraction": OUTLIER_FRACTION, "outlier_magnitude": list(OUTLIER_MAGNITUDE),
    "latents": fingerprint(data["latents"]), "network": {k: v for k, v in network_config.items() if k != "norm"},
}
claim_run_folder(os.path.join(args.output, "settings.json"), identity, "an ablation",
                 "Its rows would not compare: use another --output, or the same settings to continue it.")
print(f"keras-lct {keras_lct.__version__} ablation on {backend}: {args.steps} steps x {args.seeds} seeds per row; "
      f"writing to {args.output}/")


# ## One run: train a row's model with one seed, score its 1- and 2-step samples.
class FrechetCurve(keras.callbacks.Callback):
    """The 1-step Frechet distance of the EMA weights at the end of every `every`-th epoch."""

    def __init__(self, reference, steps_per_epoch, every, seed):
        super().__init__()
        self.reference, self.steps_per_epoch, self.every, self.seed = reference, steps_per_epoch, every, seed
        self.points = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            samples = decode(self.model.sample(args.num_samples, steps=1, seed=self.seed))
            frechet_distance = scores(feature_network, self.reference, samples)["frechet_distance"]
            self.points.append([(epoch + 1) * self.steps_per_epoch, frechet_distance])


def train_and_score(variant, settings, seed):
    keras.utils.set_random_seed(seed)
    network = UNet.from_config({**network_config, "norm": settings["norm"]})
    model = ConsistencyModel(network, loss=settings["loss"], diffusion_fraction=settings["r"],
                             ema_decays=(args.ema_decay,), seed=seed, latent_normalization=normalization,
                             two_step_level=two_step_level)
    model.build((None,) + variants[variant]["latents"].shape[1:])
    model.compile(optimizer=RAdam(args.learning_rate))
    batches = NoisePairedDataset(variants[variant]["latents"], batch_size=args.batch_size, ot=settings["ot"], seed=seed)
    epochs = -(-args.steps // len(batches))
    curve = FrechetCurve(variants[variant]["reference"], len(batches), max(1, epochs // CURVE_POINTS), seed + 1)
    callbacks = [ExpCurriculum(), curve] + ([AdaptiveC(settings["adaptive_c"])] if settings["adaptive_c"] else [])
    history = model.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks)
    one_step = decode(model.sample(args.num_samples, steps=1, seed=seed + 1))
    two_step = decode(model.sample(args.num_samples, steps=2, seed=seed + 1))
    reference = variants[variant]["reference"]
    return {
        "one_step": scores(feature_network, reference, one_step),
        "two_step": scores(feature_network, reference, two_step), "curve": curve.points,
        "final_loss": float(history.history["loss"][-1]), "steps": epochs * len(batches),
    }, one_step


plan = {}  # (variant, key) -> settings, in table order, each row once
for variant in args.variants:
    tables = args.tables if variant == "digits" or args.all_tables else [t for t in args.tables if t == "2a"]
    for table in tables:
        for _, settings in TABLE_ROWS[table]:
            plan.setdefault((variant, row_key(settings)), settings)


def run_path(variant, key, seed):
    return os.path.join(args.output, "runs", variant, key, f"seed{seed}.json")


# ## Summaries, rewritten after every run from the run files on disk.
def load_runs(variant, key):
    runs = []
    for seed in range(args.seeds):
        if os.path.exists(run_path(variant, key, seed)):
            with open(run_path(variant, key, seed)) as file:
                runs.append(json.load(file))
    return runs


def mean_std(values):
    return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def summarize():
    summary = {"settings": identity, "seeds": args.seeds, "variants": {}}
    lines = [f"# Ablations ({backend}, {args.steps} steps, seeds 0..{args.seeds - 1}, {args.num_samples} samples)", ""]
    for variant in args.variants:
        summary["variants"][variant] = {}
        for table in args.tables:
            rows = []
            for label, settings in TABLE_ROWS[table]:
                runs = load_runs(variant, row_key(settings))
                if not runs:
                    continue
                row = {"row": label, "key": row_key(settings), "settings": settings, "seeds": len(runs)}
                for sampler in ("one_step", "two_step"):
                    for metric in ("frechet_distance", "recall"):
                        row[f"{sampler}_{metric}"] = mean_std([run[sampler][metric] for run in runs])
                rows.append(row)
            if not rows:
                continue
            summary["variants"][variant][table] = rows
            lines += [f"## {variant}, table {TABLE_TITLES[table]}", "",
                      "| row | 1-step FD | 1-step recall | 2-step FD | 2-step recall | seeds |", "|---|---|---|---|---|---|"]
            for row in rows:
                cells = [f"{row[name][0]:.2f} ± {row[name][1]:.2f}" for name in
                         ("one_step_frechet_distance", "one_step_recall", "two_step_frechet_distance", "two_step_recall")]
                lines.append(f"| {row['row']} | " + " | ".join(cells) + f" | {row['seeds']} |")
            lines.append("")
    write_json_atomic(os.path.join(args.output, "results.json"), summary)
    write_text_atomic(os.path.join(args.output, "results.md"), "\n".join(lines))
    for variant in args.variants:
        for table in args.tables:
            plot_curves(variant, table)
            plot_grids(variant, table)


def plot_curves(variant, table):
    figure = new_figure(6, 4)
    axes = figure.subplots()
    for label, settings in TABLE_ROWS[table]:
        curves = [np.asarray(run["curve"]) for run in load_runs(variant, row_key(settings)) if run["curve"]]
        if curves:
            length = min(len(curve) for curve in curves)
            values = np.stack([curve[:length, 1] for curve in curves])
            steps, mean = curves[0][:length, 0], values.mean(axis=0)
            axes.plot(steps, mean, marker=".", label=label)
            axes.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.15)
    if not axes.lines:
        return
    axes.set(xlabel="training step", ylabel="1-step Frechet distance", yscale="log",
             title=f"table {table} on {variant} latents (mean; band: min-max over seeds)")
    axes.legend(fontsize=8)
    save_figure(figure, os.path.join(args.output, f"curves_{variant}_{table}.png"))


def plot_grids(variant, table):
    grids = [(label, os.path.join(args.output, "runs", variant, row_key(settings), "samples.png"))
             for label, settings in TABLE_ROWS[table]]
    grids = [(label, path) for label, path in grids if os.path.exists(path)]
    if not grids:
        return
    from PIL import Image

    figure = new_figure(2.2 * len(grids), 2.6)
    for panel, (label, path) in zip(np.atleast_1d(figure.subplots(1, len(grids))), grids):
        panel.imshow(np.asarray(Image.open(path)))
        panel.set_title(label, fontsize=9)
        panel.axis("off")
    save_figure(figure, os.path.join(args.output, f"grids_{variant}_{table}.png"))


# ## The premise, measured: fig. 1's statistics of each variant's latents.
statistics_path = os.path.join(args.output, "latent_statistics.json")
latent_statistics = {}
if os.path.exists(statistics_path):
    with open(statistics_path) as file:
        latent_statistics = json.load(file)
for variant in variants:
    latent_statistics[variant] = analysis.box_statistics(variants[variant]["latents"], name=f"{variant} latents")
write_json_atomic(statistics_path, latent_statistics)

if args.report_only:
    summarize()
    stage(f"reported the runs done so far in {args.output}/: results.md, results.json, curves_*.png, grids_*.png")
    raise SystemExit(0)

# ## The plan, run by run; finished runs are skipped.
total, done_before = len(plan) * args.seeds, 0
for index, ((variant, key), settings) in enumerate(plan.items()):
    for seed in range(args.seeds):
        number = index * args.seeds + seed + 1
        path = run_path(variant, key, seed)
        if os.path.exists(path):
            done_before += 1
            continue
        run_started = time.time()
        result, one_step = train_and_score(variant, settings, seed)
        result.update(settings=settings, seed=seed, variant=variant, seconds=round(time.time() - run_started, 1))
        if seed == 0:  # framed, shown 4x
            save_enlarged_grid(framed(one_step[:64]), os.path.join(os.path.dirname(path), "samples.png"), columns=8)
        write_json_atomic(path, result)
        stage(f"run {number}/{total} {variant} {key} seed {seed}: 1-step FD {result['one_step']['frechet_distance']:.2f}, "
              f"2-step FD {result['two_step']['frechet_distance']:.2f} ({result['seconds']:.0f} s)")
        summarize()
if done_before:
    stage(f"{done_before} of {total} runs were already done in {args.output} and were skipped")
summarize()
stage(f"done. In {args.output}/: results.md, results.json, latent_statistics.json, curves_*.png, grids_*.png, runs/")
