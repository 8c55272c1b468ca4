"""Sample images from a trained latent consistency model: 1 or 2 network calls, then the VAE decoder.

    KERAS_BACKEND=jax python recipes/sample.py --model runs/celeba/lct.keras \
        --vae weights/sd-vae-ft-ema --num 64 --steps 2 --out grid.png

The `.keras` file written by the training recipes carries the latent statistics, the scaling
factor and the identity of the VAE it was trained with; `--vae` must be that VAE (a diffusers
folder, an LDM/SD checkpoint, or a `.keras` autoencoder), and a different one is refused. Writes a
PNG grid (`--out`), one PNG per image (`--out-dir`), or both. Works on any backend, whatever backend the
model was trained on; with the same --seed the samples are the same on every backend.

A class-conditional model (trained with --labels, e.g. by recipes/imagenet.py) samples the classes
given by `--labels` (repeated in turn to --num images; `--labels all` cycles through every class), or
without labels (the null class) when it was trained with label dropout:

    KERAS_BACKEND=jax python recipes/sample.py --model runs/imagenet/lct.keras --vae sd-vae-ft-ema/ \
        --labels 207 360 387 --num 12 --out dogs_otters_pandas.png

Reference: paper table 1 (1 and 2 NFE); docs/reference.md "Sampling".
"""

import argparse
import os


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the trained model, e.g. runs/celeba/lct.keras")
    parser.add_argument("--vae", required=True, help="the autoencoder the model's latents came from")
    parser.add_argument("--vae-preset", help="autoencoder config of a single weights file (default: sd-vae-ft-ema)")
    parser.add_argument("--num", type=int, default=64, help="number of images (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1,
                        help="network evaluations, 1 or 2; a diffusion model (--objective edm): the levels of EDM's "
                             "Heun sampler, e.g. 18 (default: %(default)s)")
    parser.add_argument("--ts", type=float, nargs="+", help="noise levels of a multistep sampler instead of --steps, e.g. 80 0.8 0.2 "
                        "(a MeanFlow model: times in (0, 1], e.g. 1 0.6 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per network call (default: %(default)s)")
    parser.add_argument("--online", action="store_true", help="sample with the online weights instead of the EMA")
    parser.add_argument("--labels", nargs="+", metavar="CLASS",
                        help="class-conditional models: the class of each image, repeated in turn to --num images, "
                             "or 'all' for every class in turn (default: no label, the null class)")
    parser.add_argument("--out", help="PNG grid to write (default: samples.png unless --out-dir is given)")
    parser.add_argument("--out-dir", help="folder to write one PNG per image into (with or without a grid)")
    args = parser.parse_args(argv)
    if args.out is None and args.out_dir is None:
        args.out = "samples.png"
    if args.labels and args.labels != ["all"]:
        try:
            args.labels = [int(label) for label in args.labels]
        except ValueError:
            parser.error(f"--labels takes class indices (integers) or 'all'; received {' '.join(args.labels)}.")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not os.path.exists(args.model):
        raise SystemExit(f"error: no model at {args.model!r}; the training recipes write OUTPUT/lct.keras.")

    import keras
    from PIL import Image

    import keras_lct  # registers the classes the model is made of
    from keras_lct.callbacks import save_image_grid
    from keras_lct.data import LatentDecoder
    from keras_lct.data import images_to_uint8
    from keras_lct.saving import atomic_path
    from keras_lct.vae import load_autoencoder

    model = keras_lct.saving.load_model(args.model, compile=False)
    labels = None
    if args.labels:
        if not model.num_classes:
            raise SystemExit(f"error: {args.model} is an unconditional model; it samples without --labels.")
        classes = range(model.num_classes) if args.labels == ["all"] else args.labels
        labels = [classes[index % len(classes)] for index in range(args.num)]
    try:  # refused here, before the VAE loads
        model.sampling_labels(args.num, labels)
        model.objective.sampling_levels(model, args.steps, args.ts)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    decode = LatentDecoder(model.latent_normalization, load_autoencoder(args.vae, preset=args.vae_preset),
                           batch_size=args.batch_size)
    how = f"levels {args.ts}" if args.ts else f"{args.steps} step(s)"
    which = f" of classes {sorted(set(labels))}" if labels else " without labels" if model.num_classes else ""
    print(f"Sampling {args.num} images{which} from {args.model} with {how} on {keras.backend.backend()}.")
    samples = model.sample(args.num, steps=args.steps, ts=args.ts, seed=args.seed, batch_size=args.batch_size,
                           ema=not args.online, verbose=1, labels=labels)
    images = decode(samples)
    if args.out_dir:
        for index, image in enumerate(images_to_uint8(images)):
            with atomic_path(os.path.join(args.out_dir, f"{index:06d}.png")) as temporary:
                Image.fromarray(image).save(temporary, format="PNG")
        print(f"Wrote {len(images)} images to {args.out_dir}.")
    if args.out:
        save_image_grid(images, args.out)
        print(f"Wrote {args.out} ({len(images)} images, {images.shape[1]}x{images.shape[2]} each).")


if __name__ == "__main__":
    main()
