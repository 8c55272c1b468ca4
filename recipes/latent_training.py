"""Train a latent consistency model on a folder of images: images -> latents -> model -> images.

This is the one training entry point behind `celeba.py`, `ffhq.py`,
`lsun_church.py` and `imagenet.py` (which only set their data set's settings),
and it trains on any folder of images of your own:

    KERAS_BACKEND=torch python recipes/latent_training.py --images my_images/ \\
        --vae weights/sd-vae-ft-ema --output runs/mine

What one command does, and where it writes (all under --output):

1. reads the images (center crop, resize; unreadable files skipped and
   reported) and encodes them once with the Stable Diffusion VAE into a latent
   cache (`latents/`; resumable, reused by later runs);
2. trains the paper's model on the normalized latents with every technique on:
   Cauchy loss, diffusion loss on the low-noise quarter, minibatch OT pairing,
   the exponential curriculum with adaptive c, the NsLN UNet; RAdam, EMA.
   `--network` takes any UNet or DiT preset (`--help` lists them); with
   `--labels` every subfolder of --images is a class (or --tfds keeps its
   labels), the network is class-conditional and drops `--label-dropout` of
   the labels to the null class in training, so it samples with and without;
   `--objective meanflow` trains the network as a MeanFlow average velocity
   instead (keras_lct.objectives.MeanFlow, with the --loss distance);
   `--objective edm` trains it as an EDM diffusion model, and `--objective
   ect --init-from runs/mine-edm/lct.keras` tunes that diffusion model into a
   consistency model (ECT, keras_lct.objectives.ECT; `ect_imgnet` for the
   settings of ECT's ImageNet code);
3. saves `checkpoint.keras` every --checkpoint-every epochs, PNG grids of
   decoded 1-step and 2-step samples in `samples/`, TensorBoard logs in
   `logs/`, and the final `lct.keras`.

Rerunning the same command continues from the checkpoint (same step, N, c,
EMA and optimizer state). `--smoke` runs the whole path on generated images, a
tiny random VAE and the `smoke` UNet (`DiT-smoke` when --network is a DiT: each
family's fewest blocks) in under a
minute on a CPU (with `--labels`, on generated images in three classes).
`recipes/sample.py` turns the final model into images (`--labels` for a
class-conditional one). On jax, the compiled steps are kept in `jax_cache/` of
the run (or where `JAX_COMPILATION_CACHE_DIR` says), so a resumed run skips
compilation (60-80 s for the paper's network on an H100; the smoke run goes from
~50 s to ~26 s) and the compiler's memory (a quarter of the peak for the tiny and
small UNets on a CPU, docs/benchmarks.md "Memory").

Reference: paper section 5.1; docs/reference.md "Training setup", "Latents".
"""

import argparse
import contextlib
import json
import math
import os
import sys

from run_folder import hold_run_folder  # recipes/run_folder.py: the standard library only, so --help stays instant

# The paper's settings per data set (docs/reference.md "Training setup"); every one
# can be overridden on the command line.
_PAPER = dict(network="celeba256", labels=False, ot=True, clip_gradient_norm=None, optimizer_epsilon=1e-8,
              reference="paper section 5.1")
DATASETS = {
    "custom": dict(_PAPER, title="your images", resolution=256, batch_size=128, epochs=1400, flip=False, two_step_level=440),
    "celeba": dict(_PAPER, title="CelebA-HQ 256", resolution=256, batch_size=128, epochs=1400, flip=False, two_step_level=440),
    "ffhq": dict(_PAPER, title="FFHQ 256", resolution=256, batch_size=256, epochs=1400, flip=False, two_step_level=440),
    "lsun_church": dict(_PAPER, title="LSUN Church 256", resolution=256, batch_size=256, epochs=1800, flip=True,
                        two_step_level=420),
    # docs/reference.md "ImageNet": the authors' class-conditional ImageNet script (batch 640, 140 epochs,
    # 1000 classes, minibatch OT left off, RAdam epsilon 1e-4, gradients clipped at norm 100) with the
    # DiT-B/2 their DiT runs train.
    "imagenet": dict(title="ImageNet 256, class-conditional", resolution=256, batch_size=640, epochs=140, flip=False,
                     two_step_level=440, network="DiT-B/2", labels=True, ot=False, clip_gradient_norm=100.0,
                     optimizer_epsilon=1e-4, reference='beyond the paper: docs/reference.md "ImageNet"'),
}
WHERE_TO_GET_IMAGES = {
    "custom": "a folder of your own images",
    "celeba": (
        "CelebA-HQ at 256x256: the 30,000 images of Karras et al. (2018), built with the scripts of "
        "github.com/tkarras/progressive_growing_of_gans or downloaded as a resized 256x256 copy; the "
        "paper trains on 27,000 of them (hold 3,000 out for evaluation). tensorflow-datasets can also "
        "build it offline from the manually downloaded files: --tfds celeb_a_hq/256 --tfds-manual-dir DIR"
    ),
    "ffhq": "FFHQ (github.com/NVlabs/ffhq-dataset): the 70,000 PNG images; any resolution >= 256 is resized",
    "lsun_church": (
        "LSUN church_outdoor train (github.com/fyu/lsun): export the LMDB to image files; flipped "
        "copies are added by default (--no-flip to turn off)"
    ),
    "imagenet": (
        "the ImageNet-1k train set (image-net.org) as one subfolder per class, e.g. train/n01440764/*.JPEG "
        "(the layout of the official ILSVRC2012 train archive once each class's tar is extracted); "
        "the sorted folder names are the labels 0-999"
    ),
}
WHERE_TO_GET_VAE = (
    "the Stable Diffusion VAE of the paper, stabilityai/sd-vae-ft-ema: download config.json and "
    "diffusion_pytorch_model.safetensors from https://huggingface.co/stabilityai/sd-vae-ft-ema into "
    "a folder and pass --vae FOLDER (an original LDM/SD checkpoint, .safetensors or .ckpt, also works)"
)
# The library's network presets (keras_lct.models.NETWORK_PRESETS; tests/test_recipes.py checks that they
# are the same), named here so that --help answers without importing a framework.
UNET_PRESETS = ("celeba256", "small", "tiny", "smoke")
DIT_PRESETS = ("DiT-S/2", "DiT-S/4", "DiT-B/2", "DiT-B/4", "DiT-L/2", "DiT-XL/2", "DiT-digits", "DiT-smoke")
NETWORK_PRESETS = UNET_PRESETS + DIT_PRESETS
# Settings that define a run: a checkpoint trained with others is not resumed.
RUN_IDENTITY = (
    "dataset", "resolution", "flip", "batch_size", "loss", "norm", "network", "dropout", "ot",
    "diffusion_fraction", "diffusion_weight", "c_schedule", "c0", "ema", "lr", "weight_decay", "seed",
    "mixed_precision", "accumulate", "labels", "label_dropout", "clip_gradient_norm", "optimizer_epsilon",
    "objective", "time_scale", "init_from", "stage_steps",
)
# What run.json files written before a setting existed mean by it (their "unet" is the network).
RUN_IDENTITY_DEFAULTS = {"mixed_precision": "float32", "accumulate": 1, "labels": False, "label_dropout": 0.1,
                         "clip_gradient_norm": None, "optimizer_epsilon": 1e-8, "objective": "consistency",
                         "time_scale": 1.0, "init_from": None, "stage_steps": None}
SMOKE = dict(resolution=128, batch_size=8, epochs=2, ema=[0.9], grid_samples=8, checkpoint_every=1, grid_every=2,
             encode_batch_size=8)
SMOKE_NETWORKS = {"unet": "smoke", "dit": "DiT-smoke"}  # the fewest blocks of each family, for --smoke


def parse_args(dataset, argv=None):
    defaults = DATASETS[dataset]
    parser = argparse.ArgumentParser(
        description=f"Train a latent consistency model on {defaults['title']} ({defaults['reference']}).\n\n"
        + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--images", help=f"folder of training images: {WHERE_TO_GET_IMAGES[dataset]}")
    data.add_argument("--tfds", metavar="NAME", help="a tensorflow-datasets builder instead of --images, e.g. celeb_a_hq/256")
    data.add_argument("--tfds-split", default="train", help="split of the --tfds builder (default: train)")
    data.add_argument("--tfds-data-dir", help="tensorflow-datasets data folder")
    data.add_argument("--tfds-manual-dir", help="folder of manually downloaded files for the --tfds builder")
    data.add_argument("--tfds-label-key", default="label", help="the --tfds feature holding the class, with --labels "
                      "(default: %(default)s)")
    data.add_argument("--resolution", type=int, default=defaults["resolution"], help="image side in pixels (default: %(default)s)")
    data.add_argument("--flip", action=argparse.BooleanOptionalAction, default=defaults["flip"],
                      help="add horizontally flipped copies of every image (default: %(default)s)")
    data.add_argument("--vae", help=f"autoencoder weights: {WHERE_TO_GET_VAE}")
    data.add_argument("--vae-preset", help="autoencoder config of a single weights file (default: sd-vae-ft-ema)")
    data.add_argument("--cache", help="latent cache folder (default: OUTPUT/latents)")
    data.add_argument("--encode-batch-size", type=int, default=16, help="images per VAE call while encoding (default: %(default)s)")

    training = parser.add_argument_group("training (defaults: the paper's)")
    training.add_argument("--output", default=f"runs/{dataset}", help="run folder (default: %(default)s)")
    training.add_argument("--epochs", type=int, default=defaults["epochs"], help="epochs (default: %(default)s)")
    training.add_argument("--steps", type=int, help="training steps instead of --epochs (rounded up to whole epochs)")
    training.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="global batch size (default: %(default)s)")
    training.add_argument("--objective", default="consistency", choices=["consistency", "meanflow", "edm", "ect", "ect_imgnet"],
                          help="the training objective (docs/objectives.md): the paper's consistency training; MeanFlow's "
                               "average velocity (the network gets an interval input; OT, --loss, labels with guidance "
                               "and NsLN apply; no curriculum); EDM diffusion training; or ECT, tuning a diffusion model "
                               "(--init-from) into a consistency model in stages (ect: the settings of ECT's main code, "
                               "ect_imgnet: of its ImageNet code) (default: %(default)s)")
    training.add_argument("--loss", default="cauchy",
                          choices=["cauchy", "pseudo_huber", "geman_mcclure", "l2", "squared_norm", "pseudo_huber_norm"],
                          help="robust distance (default: %(default)s); with --objective meanflow also squared_norm, "
                               "the official ||u - u_tgt||^2 with its adaptive weight (a robust distance weighs the "
                               "samples itself: no adaptive weight); with --objective ect also pseudo_huber_norm, the "
                               "official sqrt(||f_t - f_r||^2 + c^2) - c (c 0: the L2 norm; 0.06 for ect_imgnet); "
                               "--objective edm has its own")
    training.add_argument("--init-from", metavar="MODEL",
                          help="start from the weights (the first EMA) of this diffusion model, a .keras file trained "
                               "with --objective edm on the same latents and --network (ECT's start)")
    training.add_argument("--stage-steps", type=int,
                          help="--objective ect: steps per stage; the gap t - r halves (ect_imgnet: quarters) every "
                               "stage (default: an eighth of the run)")
    training.add_argument("--time-scale", type=float, default=1.0,
                          help="--objective meanflow: the network gets this times t and t - r (default: %(default)s, "
                               "the official code's)")
    training.add_argument("--network", "--unet", default=defaults["network"], choices=list(NETWORK_PRESETS),
                          metavar="PRESET",
                          help=f"the denoiser: a UNet or DiT preset, one of {', '.join(NETWORK_PRESETS)} "
                               "(default: %(default)s)")
    training.add_argument("--norm", choices=["nsln", "group", "instance", "layer", "rms"],
                          help="normalization: the UNet's every norm (default nsln, the paper's); a DiT's "
                               "'layer' (Meta's DiT, the default) or 'nsln' (qk-norm with NsLN, the authors' master)")
    training.add_argument("--dropout", type=float, default=0.0, help="dropout in the UNet blocks (default: %(default)s)")
    training.add_argument("--labels", action=argparse.BooleanOptionalAction, default=defaults["labels"],
                          help="train class-conditionally: each subfolder of --images is a class (or --tfds-label-key "
                               "names the label feature) (default: %(default)s)")
    training.add_argument("--label-dropout", type=float, default=0.1,
                          help="share of training labels replaced by the null class, so that the model also samples "
                               "without a label; with --labels (default: %(default)s, DiT's)")
    training.add_argument("--ot", action=argparse.BooleanOptionalAction, default=defaults["ot"],
                          help="pair noise and data by minibatch OT, within each class with --labels "
                               "(default: %(default)s)")
    training.add_argument("--diffusion-fraction", type=float, default=0.25,
                          help="r: lowest-noise fraction of the grid with the diffusion loss, 0 = off (default: %(default)s)")
    training.add_argument("--diffusion-weight", type=float, default=5.0, help="weight of the diffusion loss (default: %(default)s)")
    training.add_argument("--c-schedule", default="paper", choices=["paper", "authors_code", "fixed"],
                          help="robustness scale c: eq. 11's constants, the authors' code's, or fixed c0 (default: %(default)s)")
    training.add_argument("--c0", type=float, help="initial (or fixed) c (default: 0.00054 sqrt(d))")
    training.add_argument("--ema", type=float, nargs="+", default=[0.99993],
                          help="EMA decay(s) kept for sampling, the first one used (default: %(default)s)")
    training.add_argument("--lr", type=float, default=1e-4, help="RAdam learning rate (default: %(default)s)")
    training.add_argument("--weight-decay", type=float, default=1e-4, help="RAdam coupled weight decay (default: %(default)s)")
    training.add_argument("--optimizer-epsilon", type=float, default=defaults["optimizer_epsilon"],
                          help="RAdam's epsilon (default: %(default)s)")
    training.add_argument("--clip-gradient-norm", type=float, default=defaults["clip_gradient_norm"],
                          help="clip the gradients to this global norm (default: %(default)s, no clipping)")
    training.add_argument("--seed", type=int, default=0, help="seed of the latents, noise and initialization (default: %(default)s)")

    scale = parser.add_argument_group("devices and precision")
    scale.add_argument("--distribute", action="store_true",
                       help="data-parallel on all visible devices (jax, tensorflow; torch: launch with torchrun, "
                            "one process per device). --batch-size stays the global batch; docs/distributed.md")
    scale.add_argument("--mixed-precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"],
                       help="dtype policy: bfloat16 or float16 (with loss scaling) convolutions, float32 weights, "
                            "norms, attention softmax and losses (default: %(default)s)")
    scale.add_argument("--accumulate", type=int, default=1, metavar="K",
                       help="gradient accumulation: each update averages K micro-batches of --batch-size / K "
                            "(default: %(default)s)")

    progress = parser.add_argument_group("checkpoints and progress")
    progress.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints (default: %(default)s)")
    progress.add_argument("--grid-every", type=int, default=10, help="epochs between sample grids (default: %(default)s)")
    progress.add_argument("--grid-samples", type=int, default=64, help="samples per grid (default: %(default)s)")
    progress.add_argument("--two-step-level", type=int, default=defaults["two_step_level"],
                          help="grid level (of 641) of the second sampling step, saved with the model; a resumed "
                               "run keeps its model's (default: %(default)s)")
    progress.add_argument("--stop-after-epochs", type=int,
                          help="train at most this many epochs in this invocation, then exit (rerun to continue)")
    progress.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="fit's verbosity (default: %(default)s)")
    progress.add_argument("--smoke", action="store_true",
                          help="the whole path on generated images and a tiny random VAE, in about a minute")
    known = parser.parse_known_args(argv)[0]
    if known.smoke:
        network = SMOKE_NETWORKS["dit" if known.network in DIT_PRESETS else "unet"]
        parser.set_defaults(output=f"runs/{dataset}-smoke", network=network, **SMOKE)
    args = parser.parse_args(argv)
    args.dataset = dataset
    if not args.smoke and not (args.images or args.tfds):
        parser.error(f"no training images. Pass --images FOLDER with {WHERE_TO_GET_IMAGES[dataset]}; "
                     "or --tfds NAME; or --smoke to try the whole path on generated images.")
    if not args.smoke and not args.vae:
        parser.error(f"no autoencoder weights. Pass --vae with {WHERE_TO_GET_VAE}.")
    if args.images and args.tfds:
        parser.error("pass either --images or --tfds, not both.")
    if not 0 <= args.label_dropout < 1:
        parser.error(f"--label-dropout must be in [0, 1); received {args.label_dropout}.")
    if args.network in DIT_PRESETS:
        if args.norm not in (None, "layer", "nsln"):
            parser.error(f"a DiT takes --norm layer or nsln; received {args.norm}.")
        if args.dropout:
            parser.error("--dropout applies to the UNet's blocks; a DiT has none.")
    args.norm = args.norm or ("layer" if args.network in DIT_PRESETS else "nsln")
    if args.accumulate < 1 or args.batch_size % args.accumulate:
        parser.error(f"--accumulate {args.accumulate} must be >= 1 and divide --batch-size {args.batch_size}.")
    if args.loss == "squared_norm" and args.objective != "meanflow":
        parser.error("--loss squared_norm is MeanFlow's: pass --objective meanflow, or a robust distance.")
    if args.loss == "pseudo_huber_norm" and not args.objective.startswith("ect"):
        parser.error("--loss pseudo_huber_norm is ECT's: pass --objective ect, or a robust distance.")
    if args.stage_steps is not None and (args.stage_steps < 1 or not args.objective.startswith("ect")):
        parser.error(f"--stage-steps ({args.stage_steps}) is ECT's steps per stage: at least 1, with --objective ect.")
    if args.time_scale <= 0:
        parser.error(f"--time-scale must be positive; received {args.time_scale}.")
    return args


def main(dataset="custom", argv=None):
    args = parse_args(dataset, argv)
    if not args.distribute:  # one process: a folder in use is refused at once, before a framework loads
        hold_run_folder(args.output)

    import keras

    import keras_lct
    from keras_lct import backend
    from keras_lct import callbacks as lct_callbacks
    from keras_lct import data
    from keras_lct import distribute
    from keras_lct import saving
    from keras_lct.optimizers import RAdam
    from keras_lct.vae import AutoencoderKL
    from keras_lct.vae import load_autoencoder

    from keras_lct.models import initialization

    # A --init-from that is missing or no diffusion model is refused before anything is written.
    diffusion = None
    if args.init_from:
        try:
            diffusion = initialization.load_diffusion(args.init_from)
        except ValueError as error:
            raise SystemExit(f"error: --init-from: {error}") from None

    # ## 0. Devices and precision.
    compilation_cache = backend.keep_compiled_steps(os.path.join(args.output, "jax_cache"))
    run = distribute.data_parallel() if args.distribute else None
    chief = run is None or run.is_chief  # the one process that writes files
    say = print if chief else (lambda *a, **k: None)
    say(f"keras-lct {keras_lct.__version__}, Keras {keras.__version__} on {keras.backend.backend()}"
        f"{f' ({run})' if run else ''}: {DATASETS[dataset]['title']} -> {args.output}"
        f"{f'; compiled steps kept in {compilation_cache}' if compilation_cache else ''}")
    keras.config.set_dtype_policy(args.mixed_precision)
    micro_batch_size = args.batch_size // args.accumulate
    if run is not None:
        run.per_replica_batch_size(micro_batch_size)  # an error now, not in the first step
    os.makedirs(args.output, exist_ok=True)
    if chief:
        hold_run_folder(args.output)  # under --distribute the chief, before it writes there (held already otherwise)
    keras.utils.set_random_seed(args.seed)

    # ## 1. Images and the autoencoder.
    if args.smoke:
        smoke_inputs = os.path.join(args.output, "smoke_inputs")
        if chief:
            write_smoke_inputs(smoke_inputs, args, AutoencoderKL)
        if run is not None:
            run.barrier("smoke inputs")
        args.images, args.vae = write_smoke_inputs(smoke_inputs, args, AutoencoderKL)  # written: their paths
    vae = load_autoencoder(args.vae, preset=args.vae_preset)
    if args.tfds:
        images = data.TFDSImages(args.tfds, args.resolution, split=args.tfds_split, data_dir=args.tfds_data_dir,
                                 manual_dir=args.tfds_manual_dir, flip=args.flip,
                                 label_key=args.tfds_label_key if args.labels else None)
    else:
        images = data.ImageFolder(args.images, args.resolution, flip=args.flip, labels=args.labels)

    # ## 2. Latents: encoded once (by the chief), memory-mapped, normalized per element.
    cache_folder = args.cache or os.path.join(args.output, "latents")
    def latent_cache():
        return data.build_latent_cache(images, vae, cache_folder, batch_size=args.encode_batch_size, seed=args.seed)

    cache = latent_cache() if chief else None
    if run is not None:
        run.barrier("latent cache")
        if cache is None:
            cache = latent_cache()  # the chief's, opened
    # Micro-batches of the global batch, whole updates per epoch; OT pairs noise within each device's part.
    updates_per_epoch = len(cache) // args.batch_size
    if updates_per_epoch == 0:
        raise SystemExit(f"error: {len(cache)} latents make no full batch of {args.batch_size}; lower --batch-size.")
    batches = data.NoisePairedDataset(
        cache.training_data(), batch_size=micro_batch_size, ot=args.ot, seed=args.seed,
        labels=cache.labels if args.labels else None,
        batches_per_epoch=updates_per_epoch * args.accumulate, shard=run.shard if run is not None else None,
        ot_group_size=run.per_replica_batch_size(micro_batch_size) if run is not None and run.num_replicas > 1 else None,
    )
    epochs = math.ceil(args.steps / updates_per_epoch) if args.steps else args.epochs
    total_steps = epochs * updates_per_epoch

    # ## 3. The model: a new one (from --init-from's diffusion model, refused before run.json is written if
    # it does not fit), or the checkpoint of this run.
    checkpoint = os.path.join(args.output, "checkpoint.keras")
    scope = run.scope if run is not None else contextlib.nullcontext
    model = None
    if diffusion is not None and not os.path.exists(checkpoint):
        with scope():
            model = new_model(args, cache, total_steps, diffusion)
    if chief:
        check_run_folder(args, total_steps, cache.info)
    with scope():
        if os.path.exists(checkpoint):
            model = keras_lct.saving.load_model(checkpoint)
            say(f"Resuming {checkpoint} at step {step_of(model)} of {total_steps}.")
        elif model is None:
            model = new_model(args, cache, total_steps, diffusion)
        if not model.compiled:
            say(f"Network {args.network}: {model.network.count_params():,} parameters"
                f"{f', {cache.num_classes} classes' if args.labels else ''}"
                f"{f'; from the diffusion model {args.init_from}' if args.init_from else ''}.")
            accumulation = args.accumulate if args.accumulate > 1 else None
            model.compile(optimizer=RAdam(args.lr, weight_decay=args.weight_decay, epsilon=args.optimizer_epsilon,
                                          global_clipnorm=args.clip_gradient_norm,
                                          gradient_accumulation_steps=accumulation))
    initial_epoch = step_of(model) // updates_per_epoch
    final_epoch = epochs if args.stop_after_epochs is None else min(epochs, initial_epoch + args.stop_after_epochs)
    final = os.path.join(args.output, "lct.keras")
    if initial_epoch >= epochs and os.path.exists(final):
        say(f"Already trained: {final} (step {step_of(model)}); nothing to do.")
        return

    # ## 4. Training, with the curriculum, adaptive c, checkpoints, grids and logs (written by the chief).
    # The curriculum's K is the whole run's, given: this fit may stop early (--stop-after-epochs).
    training_callbacks = [lct_callbacks.ExpCurriculum(total_steps)] if args.objective == "consistency" else []
    if args.c_schedule != "fixed" and args.objective == "consistency":
        training_callbacks.append(lct_callbacks.AdaptiveC(args.c_schedule, c0=args.c0))
    if chief:
        training_callbacks += [
            lct_callbacks.Checkpoint(checkpoint, every_epochs=args.checkpoint_every),
            lct_callbacks.SampleGrid(os.path.join(args.output, "samples"), every_epochs=args.grid_every,
                                     num_samples=args.grid_samples, steps=(1, 2),
                                     decode=data.LatentDecoder(model.latent_normalization, vae)),
            *tensorboard(os.path.join(args.output, "logs")),
        ]
    try:
        # Every Ctrl-C from here on stops the run (Python drops some, e.g. in jax's gc callback).
        with backend.fit_guards.interrupts_delivered(training_callbacks) as training_callbacks:
            if initial_epoch < final_epoch:
                say(f"Training epochs {initial_epoch + 1}-{final_epoch} of {epochs} ({updates_per_epoch} updates "
                    f"each, batch {args.batch_size}{f' in {args.accumulate} micro-batches' if args.accumulate > 1 else ''}, "
                    f"{len(cache)} latents {cache.latents.shape[1:]}).")
                model.fit(batches, epochs=final_epoch, initial_epoch=initial_epoch, callbacks=training_callbacks,
                          verbose=args.verbose if chief else 0)

            # ## 5. The final model, self-contained for sampling.
            if final_epoch < epochs:
                say(f"Stopped after epoch {final_epoch} of {epochs}; rerun the same command to continue.")
                return
            if chief:
                saving.save_model_atomic(model, final)
    except KeyboardInterrupt:
        # The model holds its last completed step, but a checkpoint taken mid-epoch would not
        # resume exactly (runs resume at epoch starts); the last epoch's checkpoint is kept.
        kept = f"{checkpoint} is kept" if os.path.exists(checkpoint) else "no checkpoint was written yet"
        print(f"\nInterrupted at step {step_of(model)}; {kept}. Rerun the same command to "
              f"continue from the last checkpoint (written every {args.checkpoint_every} epoch(s)).",
              file=sys.stderr)
        raise SystemExit(130) from None
    say(f"Done: {final} (step {step_of(model)}). Samples in {os.path.join(args.output, 'samples')}; "
        f"images: python recipes/sample.py --model {final} --vae {args.vae} --out samples.png")


def new_model(args, cache, total_steps, diffusion=None):
    """The run's model for the latents of `cache`: the network of --network, the objective, the EMA; with
    the weights of `diffusion` (--init-from's model) if given, or a SystemExit saying what differs."""
    from keras_lct import objectives
    from keras_lct import schedules
    from keras_lct.models import ConsistencyModel
    from keras_lct.models import network_from_preset

    latent_shape = cache.latents.shape[1:]
    options = dict(norm=args.norm, interval_embedding=args.objective == "meanflow")
    if args.labels:
        options.update(num_classes=cache.num_classes, label_dropout=args.label_dropout)
    if args.dropout:
        options["dropout"] = args.dropout
    network = network_from_preset(args.network, latent_shape, **options)
    objective = None
    if args.objective == "meanflow":
        objective = objectives.MeanFlow(distance=args.loss, norm_p=1.0 if args.loss == "squared_norm" else 0.0,
                                        time_scale=args.time_scale)
    elif args.objective.startswith("ect"):
        stage_steps = args.stage_steps or max(1, total_steps // 8)
        scale = {} if args.loss == "pseudo_huber_norm" else {"c": None}  # a robust distance: the model's c
        objective = objectives.ECT.from_branch("imgnet" if args.objective == "ect_imgnet" else "main",
                                               stage_steps=stage_steps, distance=args.loss, **scale)
    elif args.objective == "edm":
        objective = objectives.EDMDiffusion()
    model = ConsistencyModel(network, objective=objective, loss=args.loss if objective is None else "cauchy",
                             diffusion_fraction=args.diffusion_fraction,
                             diffusion_weight=args.diffusion_weight, c=args.c0, ema_decays=tuple(args.ema),
                             seed=args.seed, latent_normalization=cache.normalization(),
                             two_step_level=(args.two_step_level, schedules.FINAL_NUM_SCALES))
    model.build((None,) + latent_shape)
    if diffusion is not None:
        try:
            model.initialize_from(diffusion)
        except ValueError as error:
            raise SystemExit(f"error: --init-from {args.init_from}: {error}") from None
    return model


def step_of(model):
    """The model's training step (its optimizer updates), as an int on every backend and strategy."""
    import keras

    return int(keras.ops.convert_to_numpy(model.training_step))


def check_run_folder(args, total_steps, cache_info):
    """Writes run.json; refuses an output folder that holds another run (its images, VAE and settings)."""
    from common import claim_run_folder  # recipes/common.py: what only the recipes share

    settings = {name: getattr(args, name) for name in RUN_IDENTITY}
    settings.update(total_steps=total_steps, vae_fingerprint=cache_info["autoencoder_fingerprint"],
                    images={key: value for key, value in cache_info["source"].items() if key != "path"})
    path = os.path.join(args.output, "run.json")
    defaults = dict(RUN_IDENTITY_DEFAULTS)
    if os.path.exists(path):
        with open(path) as file:
            defaults["network"] = json.load(file).get("unet")  # run.json files from before --network
    claim_run_folder(path, settings, "another run", "Its checkpoint is not resumed and nothing in it is overwritten: "
                     "pass another --output, or delete the folder to start over.", defaults=defaults)


def tensorboard(log_dir):
    """Keras' TensorBoard callback, if TensorBoard and TensorFlow (its writer) are installed."""
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        print("TensorBoard logs need tensorboard and tensorflow-cpu installed (pip install "
              "'keras-lct[data]' tensorflow-cpu); training without them.")
        return []
    import keras

    return [keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False)]


def write_smoke_inputs(folder, args, autoencoder_class):
    """A tiny generated image set (with one of each kind of awkward file) and a tiny random VAE."""
    import numpy as np
    from PIL import Image

    image_folder = os.path.join(folder, "labelled_images" if args.labels else "images")
    vae_path = os.path.join(folder, "vae.keras")
    if not os.path.isdir(image_folder):
        rng = np.random.default_rng(args.seed)
        size = args.resolution
        rows, columns = np.mgrid[0:size, 0:size] / size
        # With --labels, three classes told apart by their shape's size: small, medium and large discs.
        classes = ("small", "medium", "large") if args.labels else ("",)
        for name in classes:
            os.makedirs(os.path.join(image_folder, name))
        for index in range(40):
            label = index % len(classes)
            colors = rng.uniform(0, 255, size=(3, 3))
            background = colors[0] * rows[..., None] + colors[1] * (1 - rows[..., None])
            center, radius = rng.uniform(0.25, 0.75, 2), rng.uniform(0.1, 0.3) if not args.labels else 0.1 * (label + 1)
            disc = ((rows - center[0]) ** 2 + (columns - center[1]) ** 2) < radius**2
            pixels = np.where(disc[..., None], colors[2], background).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(image_folder, classes[label], f"shape_{index:03d}.png"))
        awkward = os.path.join(image_folder, classes[0])
        Image.fromarray(pixels[..., 0]).save(os.path.join(awkward, "grayscale.png"))
        Image.fromarray(np.dstack([pixels, np.full((size, size), 128, np.uint8)])).save(
            os.path.join(awkward, "transparent.png"))
        Image.fromarray(np.tile(pixels, (1, 2, 1))).save(os.path.join(awkward, "wide.jpg"))
        with open(os.path.join(awkward, "broken.png"), "wb") as file:
            file.write(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    if not os.path.exists(vae_path):
        from keras_lct.saving import save_model_atomic

        save_model_atomic(autoencoder_class.from_preset("tiny"), vae_path)
    return image_folder, vae_path


if __name__ == "__main__":
    main()
