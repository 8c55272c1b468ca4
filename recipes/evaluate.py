"""Evaluate a trained latent consistency model as in the paper's table 1: FID, precision and recall.

    KERAS_BACKEND=torch python recipes/evaluate.py --model runs/celeba/lct.keras \\
        --vae weights/sd-vae-ft-ema --reference celeba_hq_256/ --save-reference celeba_hq_256.npz \\
        --inception-weights weights/pt_inception-2015-12-05-6726825d.pth \\
        --vgg16-weights weights/vgg16.pt --steps 2 --output runs/celeba/evaluation_2step.json

The protocol (docs/reference.md "Evaluation"): --num-samples samples (50,000, as in the paper) with 1
or 2 network evaluations and the EMA weights, decoded by the VAE to uint8 images; FID between the
pytorch-fid Inception features (pool3, 2048-d) of the samples and of the real images; improved
precision and recall (Kynkaenniemi et al. 2019, k = 3) on NVIDIA's VGG16 features. Samples are
generated, decoded and measured one batch at a time: only their features are kept.

--reference is a folder of real images (read like the training images: center crop, resize to
the model's resolution) or an .npz of precomputed Inception statistics `mu`, `sigma` (pytorch-fid's
format, e.g. the authors' CelebA-HQ 256 statistics). --save-reference stores a folder's statistics
and VGG features in such a file for the next evaluations. Recall needs the VGG features of the real
images: it is skipped, with a note, without --vgg16-weights or with a statistics file that has none.

Nothing is downloaded. The two feature networks run on PyTorch whatever the Keras backend:
  pt_inception-2015-12-05-6726825d.pth  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  vgg16.pt                              https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt
The Inception network comes from torch-fidelity (pip install torch-fidelity, or with --no-deps
where no torchvision matching torch can be installed). Writes a JSON report (--output).

Reference: paper table 1; docs/reference.md "Evaluation"; docs/metrics.md.
"""

import argparse
import os
import time

K_NEAREST = 3  # the neighbourhood size of the paper's recall (docs/reference.md "Evaluation")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the trained model, e.g. runs/celeba/lct.keras")
    parser.add_argument("--vae", required=True, help="the autoencoder the model's latents came from")
    parser.add_argument("--vae-preset", help="autoencoder config of a single weights file (default: sd-vae-ft-ema)")
    parser.add_argument("--reference", required=True,
                        help="real images: a folder, or an .npz of Inception statistics (mu, sigma[, vgg_features])")
    parser.add_argument("--save-reference", metavar="PATH.npz",
                        help="store the reference folder's statistics and VGG features here, for reuse")
    parser.add_argument("--inception-weights", default="pt_inception-2015-12-05-6726825d.pth",
                        help="the pytorch-fid Inception weights (default: %(default)s)")
    parser.add_argument("--vgg16-weights", help="NVIDIA's vgg16.pt, for precision and recall (skipped without it)")
    parser.add_argument("--num-samples", type=int, default=50000, help="samples to generate (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1,
                        help="network evaluations, 1 or 2; a diffusion model (--objective edm): the levels of EDM's "
                             "Heun sampler, e.g. 18 (default: %(default)s)")
    parser.add_argument("--ts", type=float, nargs="+", help="noise levels of a multistep sampler instead of --steps, e.g. 80 0.8 0.2")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=50,
                        help="samples generated, decoded and measured at once (default: %(default)s)")
    parser.add_argument("--online", action="store_true", help="sample with the online weights instead of the EMA")
    parser.add_argument("--output", help="JSON report to write (default: evaluation_<N>step.json beside the model)")
    args = parser.parse_args(argv)
    if args.num_samples < 2 or args.batch_size < 1:
        parser.error("--num-samples must be at least 2 and --batch-size at least 1.")
    if args.save_reference and os.path.isfile(args.reference):
        parser.error("--save-reference needs a folder of images as --reference, not a statistics file.")
    if args.output is None:
        network_calls = len(args.ts) if args.ts else args.steps
        args.output = os.path.join(os.path.dirname(args.model), f"evaluation_{network_calls}step.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    for option, path in (("--model", args.model), ("--reference", args.reference)):
        if not os.path.exists(path):
            raise SystemExit(f"error: {option} {path!r} does not exist.")
    started = time.time()

    import keras
    import numpy as np

    import keras_lct  # registers the classes the model is made of
    from keras_lct import metrics
    from keras_lct.data import ImageFolder
    from keras_lct.data import ImageReport
    from keras_lct.data import LatentDecoder
    from keras_lct.data import images_to_uint8
    from keras_lct.saving import write_json_atomic
    from keras_lct.vae import load_autoencoder

    # ## 1. The feature networks, from local files (checked before any sampling).
    try:
        inception = metrics.InceptionFeatures(args.inception_weights)
        vgg = metrics.VGG16Features(args.vgg16_weights) if args.vgg16_weights else None
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise SystemExit(f"error: {error}")
    notes = []
    if vgg is None:
        notes.append(f"Precision and recall skipped: pass --vgg16-weights vgg16.pt ({metrics.VGG16_WEIGHTS_URL}).")

    def extract(images, features):
        """Appends the Inception (and VGG) features of one batch of uint8 images."""
        features["inception"].append(inception(images, batch_size=args.batch_size))
        if vgg is not None:
            features["vgg"].append(vgg(images, batch_size=args.batch_size))

    # ## 2. The model and the autoencoder that decodes its samples.
    model = keras_lct.saving.load_model(args.model, compile=False)
    try:
        model.objective.sampling_levels(model, args.steps, args.ts)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    vae = load_autoencoder(args.vae, preset=args.vae_preset)
    decode = LatentDecoder(model.latent_normalization, vae, batch_size=args.batch_size)
    resolution = model.data_shape[0] * vae.downsampling_factor

    # ## 3. The reference: statistics of the real images (and their VGG features, for recall).
    if os.path.isfile(args.reference):
        try:
            reference_mu, reference_sigma = metrics.load_statistics(args.reference)
        except ValueError as error:
            raise SystemExit(f"error: {error}")
        with np.load(args.reference) as stored:
            reference_vgg = stored["vgg_features"] if "vgg_features" in stored.files else None
            num_reference = int(stored["num_images"]) if "num_images" in stored.files else None
        if reference_vgg is None and vgg is not None:
            notes.append(f"Precision and recall skipped: {args.reference} holds no vgg_features "
                         "(make it with --save-reference from a folder of images and --vgg16-weights).")
            vgg = None
        print(f"Reference statistics: {args.reference}.")
    else:
        images = ImageFolder(args.reference, resolution)
        report = ImageReport()
        reference = {"inception": [], "vgg": []}
        print(f"Reading {len(images)} reference images of {args.reference} at {resolution}x{resolution}.")
        progress = keras.utils.Progbar(len(images), unit_name="image")
        batch = []
        for item in images.iter_images():
            report.add(item)
            if item.pixels is not None:
                batch.append(item.pixels)
            if len(batch) == args.batch_size or (batch and item.index == len(images) - 1):
                extract(np.stack(batch), reference)
                batch = []
            progress.update(item.index + 1)
        print(report.summary())
        if report.read < 2:
            raise SystemExit(f"error: {args.reference} holds {report.read} readable image(s); FID needs at least 2.")
        reference_mu, reference_sigma = metrics.feature_statistics(np.concatenate(reference["inception"]))
        reference_vgg = np.concatenate(reference["vgg"]) if vgg is not None else None
        num_reference = report.read
        if args.save_reference:
            extra = {"vgg_features": reference_vgg} if reference_vgg is not None else {}
            metrics.save_statistics(args.save_reference, reference_mu, reference_sigma, num_images=num_reference, **extra)
            print(f"Wrote {args.save_reference} (mu, sigma{', vgg_features' if extra else ''}): "
                  f"pass it as --reference next time.")

    # ## 4. Samples, batch by batch: noise -> 1 or 2 network calls -> VAE decoder -> uint8 -> features.
    how = f"levels {args.ts}" if args.ts else f"{args.steps} step(s)"
    print(f"Sampling {args.num_samples} images from {args.model} with {how} on {keras.backend.backend()}.")
    generated = {"inception": [], "vgg": []}
    progress = keras.utils.Progbar(args.num_samples, unit_name="sample")
    for batch_index, start in enumerate(range(0, args.num_samples, args.batch_size)):
        count = min(args.batch_size, args.num_samples - start)
        # One seed per batch, derived from --seed: the samples depend on --seed and --batch-size only.
        batch_seed = int(np.random.SeedSequence([args.seed, batch_index]).generate_state(1)[0])
        samples = model.sample(count, steps=args.steps, ts=args.ts, seed=batch_seed, batch_size=args.batch_size,
                               ema=not args.online)
        extract(images_to_uint8(decode(samples)), generated)
        progress.update(start + count)

    # ## 5. The metrics.
    generated_mu, generated_sigma = metrics.feature_statistics(np.concatenate(generated["inception"]))
    fid = metrics.frechet_distance_from_statistics(generated_mu, generated_sigma, reference_mu, reference_sigma)
    scores = {"precision": None, "recall": None}
    if vgg is not None:
        scores = metrics.precision_recall(reference_vgg, np.concatenate(generated["vgg"]), k=K_NEAREST)

    network_calls = len(args.ts) if args.ts else args.steps
    result = {
        "fid": fid,
        "precision": scores["precision"],
        "recall": scores["recall"],
        "num_samples": args.num_samples,
        "steps": network_calls,
        "ts": args.ts,
        "ema": not args.online,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "k": K_NEAREST,
        "resolution": resolution,
        "model": os.path.abspath(args.model),
        "vae": os.path.abspath(args.vae),
        "reference": os.path.abspath(args.reference),
        "num_reference_images": num_reference,
        "inception_weights": os.path.abspath(args.inception_weights),
        "vgg16_weights": os.path.abspath(args.vgg16_weights) if vgg is not None else None,
        "backend": keras.backend.backend(),
        "seconds": round(time.time() - started, 1),
        "protocol": (
            f"{args.num_samples} samples, {network_calls} network evaluation(s) ({'online' if args.online else 'EMA'} "
            f"weights), decoded by the VAE to {resolution}x{resolution} uint8 images. FID: Frechet distance of the "
            "pytorch-fid Inception pool3 features (2048-d, TF1 bilinear resize to 299) to the reference statistics. "
            f"Precision/recall: Kynkaenniemi et al. 2019, k = {K_NEAREST}, on NVIDIA's VGG16 features "
            "(StyleGAN2-ADA vgg16.pt) of the samples and the reference images. docs/reference.md 'Evaluation'."
        ),
        "notes": notes,
    }
    write_json_atomic(args.output, result)
    for note in notes:
        print(note)
    shown = ", ".join(f"{name} {result[name]:.4f}" for name in ("fid", "precision", "recall") if result[name] is not None)
    print(f"{shown} ({args.num_samples} samples, {network_calls} step(s)). Wrote {args.output}.")


if __name__ == "__main__":
    main()
