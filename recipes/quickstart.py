"""Quickstart: latent consistency training on real images, in minutes on a CPU (`make demo`).

The paper's whole pipeline, shrunk to scikit-learn's handwritten digits (1,797 images of 8x8
pixels that ship with the package; nothing is downloaded):

1. a small KL autoencoder (`keras_lct.vae.AutoencoderKL`, the Stable Diffusion VAE's
   architecture, narrower) is trained on the digits and encodes each into a 4x4x4 latent;
2. the latents are normalized per element to std 0.5, as the paper's (section 5.1);
3. a `ConsistencyModel` learns them with the paper's techniques: Cauchy loss (4.2), diffusion
   loss on the lowest-noise quarter (4.3), the exponential curriculum with the adaptive c of
   eq. 11 as published (4.5), and a UNet with Non-scaling LayerNorm (4.6); minibatch OT pairing
   (4.4) is off unless --ot, since on these 64-number latents at batch 64 it measured harmful
   (docs/results.md);
4. for comparison, the same network trained as iLCT (iCT on latents: pseudo-Huber loss,
   GroupNorm, independent noise, no diffusion loss, c fixed at iCT's c0);
5. both are trained from --seeds seeds (3) and scored with the Frechet distance and recall
   (k = 3) in the feature space of a small digits classifier trained here, next to the floor
   (held-out real digits) and the ceiling (an untrained model); the scores are the mean and
   standard deviation over the seeds, and the run says which method won and whether by more
   than the seeds' spread (a single seed's difference here is noise);
6. one more model, class-conditional (the paper's method, the digit as its label, 10% of the labels
   dropped in training, noise paired with data by minibatch OT within each digit, 1200 steps),
   samples each digit on request at 1 step: its conditional accuracy is the share of samples the
   digits classifier assigns to the requested digit (the settings were measured, docs/results.md);
7. fig. 1's box-and-whisker statistics of the digit pixels against their latents.

    KERAS_BACKEND=tensorflow python recipes/quickstart.py            # or jax / torch (slower here)
    KERAS_BACKEND=tensorflow python recipes/quickstart.py --fast     # a 2-minute smoke run (2 seeds)
    KERAS_BACKEND=tensorflow python recipes/quickstart.py --seeds 1  # one seed, about 4 minutes

Everything goes to --output (default runs/quickstart): samples.png (real digits | 1-step |
2-step samples of the first seed's model), conditional_samples.png (the class-conditional model at 1
step, one row per digit 0-9), training.png (the first seed's curves), metrics.json
(means, standard deviations and each seed's scores, the verdict, the run's date, commit and
versions; recipes/report.py renders the docs' tables from it), model.keras (sample from it later with
recipes/sample.py --vae OUTPUT/autoencoder.keras; the first seed's), ilct.keras, conditional.keras (sample a
digit with recipes/sample.py --labels), autoencoder.keras, features.keras
(the metrics' feature network), classifier.keras (the digits classifier of the conditional accuracy),
impulsive_noise.png / .json (fig. 1) and data.npz (training pixels, latents and labels, held-out pixels
and labels; for recipes/analyze.py and recipes/objectives.py). recipes/ablation.py reruns the paper's
ablations (table 2) on this output.

Reference: paper sections 4 and 5.1; docs/results.md for the measured results and the design runs.
"""

import argparse
import os
import time

from run_folder import hold_run_folder  # recipes/run_folder.py: the standard library only

NUM_HOLDOUT = 500  # held-out real digits: the metrics' floor; as many samples are drawn per model
IMAGE_SIZE = 8
# The second noise level of the 2-step sampler, saved with the models (`sample(steps=2)` samples
# at 80, then at it). The paper's (~0.369) was tuned on CelebA-HQ latents; on these latents 1.5
# measured better (docs/results.md), so it is tuned here the same way.
TWO_STEP_LEVEL = 1.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/quickstart", help="folder for every artifact (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=900, help="consistency training steps per model (default: %(default)s)")
    parser.add_argument("--vae-epochs", type=int, default=15, help="autoencoder training epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch size of the consistency models (default: %(default)s; the autoencoder and the classifier use 64)")
    parser.add_argument("--model-channels", type=int, default=32,
                        help="width of the consistency models' UNet (its first level's channels; default: %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=0.995, help="EMA of the weights sampled from (default: %(default)s)")
    parser.add_argument("--curriculum-s1", type=int, default=320,
                        help="the discretization curriculum's final N - 1 (eq. 10's s1; the paper's 640 needs a longer "
                             "run; default: %(default)s)")
    parser.add_argument("--ot", action="store_true",
                        help="pair noise and data by minibatch OT in the paper's method (paper 4.4; off: on these "
                             "latents it measured harmful, docs/results.md)")
    parser.add_argument("--no-ilct", action="store_true", help="skip the iLCT comparison model")
    parser.add_argument("--no-conditional", action="store_true", help="skip the class-conditional model")
    parser.add_argument("--conditional-steps", type=int, default=1200,
                        help="training steps of the class-conditional model (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="a smoke run: few steps and epochs, 2 seeds at most (the results are not digits)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, the autoencoder and the first "
                        "consistency models (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds each consistency model is trained from, "
                        "--seed, --seed + 1, ...; the scores are their mean and std (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.vae_epochs, args.ema_decay, args.seeds = 100, 3, 0.9, min(args.seeds, 2)
        args.conditional_steps = args.steps
    for name in ("steps", "vae_epochs", "batch_size", "seeds", "model_channels", "conditional_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; received {getattr(args, name)}.")
    if args.curriculum_s1 < 10:
        parser.error(f"--curriculum-s1 must be at least the curriculum's s0, 10; received {args.curriculum_s1}.")
    return args


args = parse_args()
started = time.time()
hold_run_folder(args.output)  # before a framework loads: a folder another live run writes to is refused at once

import json  # noqa: E402

import keras  # noqa: E402  (after --help, which should not wait for a backend)
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_lct  # noqa: E402
from keras_lct import analysis  # noqa: E402
from keras_lct.callbacks import AdaptiveC  # noqa: E402
from keras_lct.callbacks import ExpCurriculum  # noqa: E402
from keras_lct.data import LatentDecoder  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402
from keras_lct.data import encode_latents  # noqa: E402
from keras_lct.models import ConsistencyModel  # noqa: E402
from keras_lct.models import UNet  # noqa: E402
from keras_lct.optimizers import RAdam  # noqa: E402
from keras_lct.analysis import new_figure  # noqa: E402
from keras_lct.analysis import save_figure  # noqa: E402
from keras_lct.saving import atomic_path  # noqa: E402
from keras_lct.saving import save_model_atomic  # noqa: E402
from keras_lct.saving import write_json_atomic  # noqa: E402
from keras_lct.vae import AutoencoderKL  # noqa: E402
from keras_lct.vae import AutoencoderTrainer  # noqa: E402

from common import features  # noqa: E402  (recipes/common.py: what only the recipes share)
from common import framed  # noqa: E402
from common import run_provenance  # noqa: E402
from common import save_enlarged_grid  # noqa: E402
from common import scores  # noqa: E402
from common import stage_printer  # noqa: E402
from report import one_step_verdict  # noqa: E402  (recipes/report.py renders the docs from metrics.json)
from report import seed_summary  # noqa: E402

os.makedirs(args.output, exist_ok=True)
backend = keras.backend.backend()
print(f"keras-lct {keras_lct.__version__} quickstart on {backend}; writing to {args.output}/")
stage = stage_printer(started)  # prints "[  seconds] message"

# ## The data: 1,797 digits in [-1, 1], 500 held out.
# They are 8x8 grayscale images with values 0..16.
digits = load_digits()
pixels = (digits.images.astype("float32") / 8.0 - 1.0)[..., None]
order = np.random.default_rng(args.seed).permutation(len(pixels))
train_pixels, holdout_pixels = pixels[order[NUM_HOLDOUT:]], pixels[order[:NUM_HOLDOUT]]
train_labels, holdout_labels = digits.target[order[NUM_HOLDOUT:]], digits.target[order[:NUM_HOLDOUT]]
stage(f"{len(train_pixels)} training and {len(holdout_pixels)} held-out digits, {IMAGE_SIZE}x{IMAGE_SIZE}x1")
keras.utils.set_random_seed(args.seed)

# ## The autoencoder: Stable Diffusion's VAE architecture at a CPU's size, trained here.
# Two levels (f = 2) turn an 8x8x1 digit into a 4x4x4 latent. The loss is the reconstruction
# error plus a tiny KL penalty, which leaves the latents unbounded, as Stable Diffusion's.
autoencoder = AutoencoderKL(
    in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4
)
trainer = AutoencoderTrainer(autoencoder, kl_weight=1e-6, seed=args.seed)
trainer.compile(optimizer=keras.optimizers.Adam(2e-3))
stage(f"training the autoencoder ({autoencoder.count_params():,} parameters) for {args.vae_epochs} epochs")
trainer.fit(train_pixels, batch_size=64, epochs=args.vae_epochs, verbose=2)
save_model_atomic(autoencoder, os.path.join(args.output, "autoencoder.keras"))

# ## Latents: one posterior sample per digit, normalized per element to std 0.5.
# The normalization travels with the consistency model, so model.keras can be decoded later.
latents, normalization = encode_latents(autoencoder, train_pixels, seed=args.seed)
decode = LatentDecoder(normalization, autoencoder, batch_size=256)
reconstruction_error = float(np.mean((decode(latents[:NUM_HOLDOUT]) - train_pixels[:NUM_HOLDOUT]) ** 2))
stage(f"latents {latents.shape[1:]}: values in [{latents.min():.2f}, {latents.max():.2f}], "
      f"reconstruction MSE {reconstruction_error:.4f}")
with atomic_path(os.path.join(args.output, "data.npz")) as temporary:
    np.savez(temporary, pixels=train_pixels, latents=latents, holdout_pixels=holdout_pixels,
             labels=train_labels, holdout_labels=holdout_labels)


# ## The feature space of the metrics: a small digits classifier.
# Its penultimate layer plays the part Inception's pool3 plays for FID on natural images.
inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
hidden = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(inputs))
penultimate = keras.layers.Dense(32, activation="relu", name="features")(hidden)
classifier = keras.Model(inputs, keras.layers.Dense(10)(penultimate))
classifier.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
classifier.fit(train_pixels, train_labels, batch_size=64, epochs=60, verbose=0)
accuracy = float(classifier.evaluate(holdout_pixels, holdout_labels, verbose=0)[1])
embed = keras.Model(inputs, penultimate)
save_model_atomic(embed, os.path.join(args.output, "features.keras"))
save_model_atomic(classifier, os.path.join(args.output, "classifier.keras"))  # conditional accuracy, here and later
reference = features(embed, train_pixels)  # each model's 500 samples are scored against these
stage(f"digits classifier: {100 * accuracy:.1f}% held-out accuracy")


# ## The consistency models: the paper's method and, for comparison, iLCT, from each seed.
# One network for both: a UNet over the 4x4 latents, 4x4 and 2x2 levels, no attention.
METHODS = {
    "the paper's method": dict(norm="nsln", loss="cauchy", diffusion_fraction=0.25, ot=args.ot, adaptive_c=True),
    "iLCT": dict(norm="group", loss="pseudo_huber", diffusion_fraction=0.0, ot=False, adaptive_c=False),
}


NUM_DIGITS = 10
LABEL_DROPOUT = 0.1  # the conditional model also samples without a label (the null class), as DiT's training
REQUESTED_DIGITS = np.arange(NUM_HOLDOUT) % NUM_DIGITS  # the labels of a conditional model's samples: 0-9 in turn


def consistency_model(norm, loss, diffusion_fraction, seed, num_classes=0):
    # One attention head in the middle block, over its 2 x model_channels.
    network = UNet(
        img_resolution=latents.shape[1], in_channels=4, out_channels=4, model_channels=args.model_channels,
        channel_mult=(1, 2), num_blocks=1, attn_resolutions=(), channels_per_head=2 * args.model_channels, norm=norm,
        num_classes=num_classes, label_dropout=LABEL_DROPOUT if num_classes else 0.0,
    )
    # A short run needs a fast EMA (the paper's 0.99993 averages over ~14k steps).
    model = ConsistencyModel(network, loss=loss, diffusion_fraction=diffusion_fraction, ema_decays=(args.ema_decay,),
                             seed=seed, latent_normalization=normalization, two_step_level=TWO_STEP_LEVEL)
    model.build((None,) + latents.shape[1:])
    model.compile(optimizer=RAdam(1e-3))
    return model


def train(name, seed, norm, loss, diffusion_fraction, ot, adaptive_c, conditional=False, steps=args.steps):
    """A model of `name`'s settings trained from `seed` for `steps`, its history and its 1- and 2-step samples, decoded.

    A `conditional` model learns the digits' labels (OT pairs noise with data within each digit);
    its samples are drawn for labels 0-9 in turn.
    """
    model = consistency_model(norm, loss, diffusion_fraction, seed, num_classes=NUM_DIGITS if conditional else 0)
    batches = NoisePairedDataset(latents, batch_size=args.batch_size, ot=ot, seed=seed,
                                 labels=train_labels if conditional else None)
    epochs = -(-steps // len(batches))
    callbacks = [ExpCurriculum(s1=args.curriculum_s1)]  # N's curriculum over the whole fit: epochs x len(batches) steps
    if adaptive_c:
        callbacks.append(AdaptiveC())
    stage(f"training {name}, seed {seed} ({model.network.count_params():,} parameters): "
          f"{epochs} epochs of {len(batches)} steps")
    progress = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: (epoch + 1) % max(1, epochs // 5) == 0 and stage(
            f"  {name} epoch {epoch + 1}/{epochs}: loss {logs['loss']:.4g}, N {logs['num_scales']:.0f}, c {logs['c']:.3g}"
        )
    )
    history = model.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks + [progress])
    history = {key: [float(value) for value in values] for key, values in history.history.items()}
    # Every model samples from the same noise (seed 10_000), so the grids of two seeds compare digit by digit.
    labels = REQUESTED_DIGITS if conditional else None
    samples = {f"{steps_name}_step": decode(model.sample(NUM_HOLDOUT, steps=steps, seed=10_000, labels=labels))
               for steps, steps_name in ((1, "one"), (2, "two"))}  # 2 steps: at 80, then TWO_STEP_LEVEL
    return model, history, samples, len(batches)


seeds = [args.seed + offset for offset in range(args.seeds)]
compared = {name: settings for name, settings in METHODS.items() if name != "iLCT" or not args.no_ilct}
per_seed = {name: [] for name in compared}  # {name: [{"one_step": scores, "two_step": scores}, ...]}
first_seed = {}  # {name: (history, samples)} of the first seed's model, which is saved, pictured and plotted
for seed in seeds:
    for name, settings in compared.items():
        model, history, samples, steps_per_epoch = train(name, seed, **settings)
        per_seed[name].append({key: scores(embed, reference, images) for key, images in samples.items()})
        stage(f"  {name}, seed {seed}: 1-step Frechet distance {per_seed[name][-1]['one_step']['frechet_distance']:.2f}")
        if seed == seeds[0]:
            save_model_atomic(model, os.path.join(args.output, "model.keras" if name != "iLCT" else "ilct.keras"))
            first_seed[name] = history, samples

# ## A class-conditional model: the paper's method told which digit to draw.
# It trains on (latent, label) pairs, a tenth of the labels dropped, and samples 50 of each digit.
# Its conditional accuracy is the share of samples the digits classifier calls the requested digit.
# OT within each digit and 1200 steps measured 90% at 1 step, against 84% without OT at 900 steps.
if not args.no_conditional:
    conditional_model, _, conditional_samples, _ = train(
        "the class-conditional model", args.seed, conditional=True, steps=args.conditional_steps,
        **dict(METHODS["the paper's method"], ot=True))
    conditional = {
        key: dict(scores(embed, reference, images),
                  accuracy=float(np.mean(np.argmax(classifier.predict(images, batch_size=NUM_HOLDOUT, verbose=0), axis=-1)
                                         == REQUESTED_DIGITS)))
        for key, images in conditional_samples.items()
    }
    stage(f"  the class-conditional model: 1-step accuracy {100 * conditional['one_step']['accuracy']:.1f}%, "
          f"Frechet distance {conditional['one_step']['frechet_distance']:.2f}")
    save_model_atomic(conditional_model, os.path.join(args.output, "conditional.keras"))
    # One row per digit, 0 to 9, at 1 step: tiles[j, d] is the j-th sample of digit d.
    tiles = framed(conditional_samples["one_step"][: NUM_DIGITS**2]).reshape(
        NUM_DIGITS, NUM_DIGITS, IMAGE_SIZE + 2, IMAGE_SIZE + 2, 1)
    save_enlarged_grid(tiles.transpose(1, 2, 0, 3, 4).reshape(NUM_DIGITS * (IMAGE_SIZE + 2), -1, 1)[None],
                       os.path.join(args.output, "conditional_samples.png"))

# ## The scores over the seeds: mean and standard deviation, and which method won.
results = {"seeds": seeds, **seed_summary(per_seed["the paper's method"])}
if not args.no_ilct:
    results["ilct"] = seed_summary(per_seed["iLCT"])
    results["verdict"] = one_step_verdict(results, results["ilct"], len(seeds))
results["per_seed"] = {"the_papers_method": per_seed["the paper's method"], "ilct": per_seed.get("iLCT", [])}
results["real_holdout"] = scores(embed, reference, holdout_pixels)
if not args.no_conditional:
    results["conditional"] = dict(conditional, seed=args.seed, label_dropout=LABEL_DROPOUT, steps=args.conditional_steps,
                                  minibatch_ot="within each digit")
untrained = consistency_model("nsln", "cauchy", 0.25, args.seed + 1)
results["untrained"] = scores(embed, reference, decode(untrained.sample(NUM_HOLDOUT, steps=1, seed=10_000, ema=False)))

# ## Pictures: real digits beside 1-step and 2-step samples (the first seed's), and the training curves.
# Each digit gets a gray frame, each group a light-gray gap; pixels are shown 4x.
columns, rows = 10, 8
gap = np.full((rows * (IMAGE_SIZE + 2), 4, 1), 0.5, np.float32)
panels = []
_, samples = first_seed["the paper's method"]
for images in (holdout_pixels, samples["one_step"], samples["two_step"]):
    tiles = framed(images[: rows * columns]).reshape(rows, columns, IMAGE_SIZE + 2, IMAGE_SIZE + 2, 1)
    panels += [tiles.transpose(0, 2, 1, 3, 4).reshape(rows * (IMAGE_SIZE + 2), columns * (IMAGE_SIZE + 2), 1), gap]
grid = np.concatenate(panels[:-1], axis=1)
save_enlarged_grid(grid[None], os.path.join(args.output, "samples.png"))


def plot_training(path):
    figure = new_figure(12, 3.4)
    panels = figure.subplots(1, 4)
    for label, (history, _) in first_seed.items():
        steps = steps_per_epoch * (1 + np.arange(len(history["loss"])))
        panels[0].plot(steps, history["consistency_loss"], label=label)
        panels[1].plot(steps, history["diffusion_loss"], label=label)
        panels[2].plot(steps, history["num_scales"], label=label)
        panels[3].plot(steps, history["c"], label=label)
    titles = ("consistency loss (epoch mean)", "diffusion loss", "discretization N", "robustness c")
    for panel, title in zip(panels, titles):
        panel.set_title(title, fontsize=10)
        panel.set_xlabel("step")
        panel.set_yscale("log")
    panels[0].legend(fontsize=8)
    save_figure(figure, path)


plot_training(os.path.join(args.output, "training.png"))

# ## Fig. 1: impulsive outliers of the digit pixels against their latents.
# Both networks untrained (F = 0): the TD values show what the data alone feeds the loss.
pixel_model = ConsistencyModel(
    UNet(img_resolution=IMAGE_SIZE, in_channels=1, out_channels=1, model_channels=32, channel_mult=(1, 2),
         num_blocks=1, attn_resolutions=()),
    ema_decays=(),
)
report, values = analysis.impulsive_noise_report(
    pixels=train_pixels, latents=latents, pixel_model=pixel_model, latent_model=untrained, num_scales=21, seed=args.seed
)
analysis.plot_impulsive_noise(values, os.path.join(args.output, "impulsive_noise.png"), num_scales=21, seed=args.seed)
write_json_atomic(os.path.join(args.output, "impulsive_noise.json"), report)

results.update(
    backend=backend,
    seconds=round(time.time() - started, 1),
    steps=args.steps,
    curriculum_s1=args.curriculum_s1,
    minibatch_ot=args.ot,
    two_step_level=TWO_STEP_LEVEL,
    classifier_accuracy=accuracy,
    autoencoder_reconstruction_mse=reconstruction_error,
    num_samples=NUM_HOLDOUT,
    reference="features of the training digits",
    **run_provenance(backend),  # date (UTC, the run's end), commit, versions: for recipes/report.py
)
write_json_atomic(os.path.join(args.output, "metrics.json"), results)

# ## Where everything went, and who won.
print(json.dumps({key: results[key] for key in ("one_step", "two_step", "real_holdout", "untrained", "conditional")
                  if key in results}, indent=1))
if not args.no_ilct:
    print("iLCT:", json.dumps(results["ilct"]))
    print(results["verdict"]["sentence"])
written = ["samples.png (held-out real | 1-step | 2-step)", "training.png", "metrics.json", "model.keras",
           "autoencoder.keras", "features.keras", "classifier.keras", "impulsive_noise.png", "impulsive_noise.json", "data.npz"]
if not args.no_ilct:
    written.insert(4, "ilct.keras")
if not args.no_conditional:
    written[1:1] = ["conditional_samples.png (one row per digit, 1 step)"]
    written.insert(written.index("model.keras") + 1, "conditional.keras")
stage(f"done. In {args.output}/: " + ", ".join(written))
