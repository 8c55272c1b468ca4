"""Fig. 1 of the paper: the impulsive outliers of latent data, and the TD values they bring into the loss.

    KERAS_BACKEND=jax python recipes/analyze.py --quickstart runs/quickstart
    KERAS_BACKEND=jax python recipes/analyze.py --latent-cache runs/celeba/latents --model runs/celeba/lct.keras

Pixel data is bounded in [-1, 1]; normalized VAE latents are not, and hold rare, very large values
(impulsive outliers). This recipe measures both with box-and-whisker statistics (quartiles, Tukey's
inner fences at 1.5 IQR and outer fences at 3 IQR, the outliers beyond them), for the data values
and for the temporal differences the consistency loss compares,

    TD = f(x0 + t z, t) - f(x0 + t2 z, t2),   t = sigma_i > t2 = sigma_{i+1} on the N-level Karras grid,

with i uniform and one noise z per sample (N = 21 in fig. 1). With an untrained model (the UNet's
output layer starts at zero, so f = c_skip(sigma) x) the TD shows how data outliers enter the loss
before any learning; with --model, a trained ConsistencyModel of the latents, it shows the TD the
loss sees at that point of training (online weights).

Inputs, one of:
  --quickstart DIR     DIR/data.npz written by recipes/quickstart.py: `pixels` (n, H, W, 1) in
                       [-1, 1] and `latents` (n, h, w, 4), the normalized latents it trains on.
                       Two groups, pixel and latent: fig. 1's 2x2 figure.
  --latent-cache DIR   a latent cache folder written by the training recipes (e.g.
                       runs/celeba/latents): its normalized latents, one group.

Writes <output>/impulsive_noise.png (the figure) and <output>/impulsive_noise.json (the numbers);
docs/analysis.md explains how to read them.

Reference: paper section 4.1, fig. 1.
"""

import argparse
import os

UNTRAINED_UNET = dict(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
UNTRAINED_DESCRIPTION = "untrained (F = 0): UNet({})".format(
    ", ".join(f"{key}={value}" for key, value in UNTRAINED_UNET.items())
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--quickstart", metavar="DIR", help="folder holding the quickstart's data.npz")
    source.add_argument("--latent-cache", metavar="DIR", help="a latent cache folder (latent group only)")
    parser.add_argument("--model", help="a trained ConsistencyModel (.keras) of the latents; default: an untrained one")
    parser.add_argument("--num-scales", type=int, default=21, help="N, levels of the Karras grid (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=512, help="samples per group, drawn at random (default: %(default)s)")
    parser.add_argument("--max-values", type=int, default=1_000_000,
                        help="values per panel kept for the statistics, a seeded subsample (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per network call (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples, timesteps and noise (default: %(default)s)")
    parser.add_argument("--output", default="runs/analysis", help="folder for the PNG and JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    for name, minimum in (("num_scales", 2), ("num_samples", 1), ("max_values", 1), ("batch_size", 1)):
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}")
    return args


def load_quickstart(folder):
    """The quickstart's pixels and latents, checked before any backend is imported."""
    import numpy as np

    path = os.path.join(folder, "data.npz")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no {path}. Write it with `python recipes/quickstart.py --output {folder}` first.")
    with np.load(path) as arrays:
        missing = [key for key in ("pixels", "latents") if key not in arrays]
        if missing:
            raise SystemExit(f"error: {path} has no {' or '.join(missing)} (it holds {sorted(arrays)}).")
        pixels, latents = arrays["pixels"], arrays["latents"]
    for key, array in (("pixels", pixels), ("latents", latents)):
        if array.ndim != 4 or len(array) == 0 or not np.issubdtype(array.dtype, np.floating):
            raise SystemExit(
                f"error: `{key}` of {path} must be float samples (n, H, W, C); it is {array.dtype} {array.shape}."
            )
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise SystemExit(f"error: `{key}` of {path} holds {bad} NaN or inf values; write data.npz again.")
    if pixels.min() < -1.001 or pixels.max() > 1.001:
        print(f"Warning: pixels span [{pixels.min():.3g}, {pixels.max():.3g}], not [-1, 1].")
    return pixels.astype("float32"), latents.astype("float32")


def main(argv=None):
    args = parse_args(argv)
    if args.latent_cache and not os.path.isfile(os.path.join(args.latent_cache, "cache.json")):
        raise SystemExit(f"error: {args.latent_cache!r} is not a latent cache folder (no cache.json).")
    if args.model and not os.path.isfile(args.model):
        raise SystemExit(f"error: no model at {args.model!r}.")
    groups = {}
    if args.quickstart:
        groups["pixel"], groups["latent"] = load_quickstart(args.quickstart)

    import keras
    import numpy as np

    import keras_lct
    from keras_lct import analysis
    from keras_lct.data import LatentCache
    from keras_lct.models import ConsistencyModel
    from keras_lct.models import UNet
    from keras_lct.saving import write_json_atomic

    from common import hold_run_folder  # recipes/common.py: what only the recipes share

    hold_run_folder(args.output)  # refused while another live run writes there
    print(f"keras-lct {keras_lct.__version__} on {keras.backend.backend()}: fig. 1 at N = {args.num_scales}.")
    if args.latent_cache:
        groups["latent"] = LatentCache(args.latent_cache).training_data()

    # ## The samples: --num-samples rows of each group, the same rows on every backend.
    rng = np.random.default_rng(args.seed)
    for group, x0 in groups.items():
        rows = np.sort(rng.choice(len(x0), size=min(args.num_samples, len(x0)), replace=False))
        groups[group] = np.asarray(x0[rows], np.float32)
        print(f"{group}: {len(rows)} of {len(x0)} samples of shape {groups[group].shape[1:]}.")

    # ## The models: untrained (F = 0 at initialization) unless --model gives the latent one.
    def untrained_model(sample_shape):
        height, width, channels = sample_shape
        if height != width or height % 2:
            raise SystemExit(f"error: the UNet takes square samples of even side; received {sample_shape}.")
        # The UNet's output convolution starts at zero: F = 0 whatever the other (unseeded) weights.
        network = UNet(img_resolution=height, in_channels=channels, out_channels=channels, **UNTRAINED_UNET)
        model = ConsistencyModel(network, ema_decays=(), seed=args.seed)
        model.build((None,) + tuple(sample_shape))
        return model

    models, described = {}, {}
    for group, x0 in groups.items():
        if group == "latent" and args.model:
            model = keras_lct.saving.load_model(args.model, compile=False)
            if not isinstance(model, ConsistencyModel):
                raise SystemExit(f"error: {args.model} holds a {type(model).__name__}, not a ConsistencyModel.")
            if tuple(model.data_shape) != x0.shape[1:]:
                raise SystemExit(
                    f"error: {args.model} was trained on samples of shape {tuple(model.data_shape)}, "
                    f"but the latents have shape {x0.shape[1:]}."
                )
            models[group], described[group] = model, f"trained: {args.model} (step {int(model.training_step)})"
        else:
            models[group], described[group] = untrained_model(x0.shape[1:]), UNTRAINED_DESCRIPTION
        print(f"{group} model: {described[group]}.")

    # ## The statistics: data values and TD values, subsampled to --max-values per panel.
    print(f"Computing TD values at N = {args.num_scales} ...")
    report, values = analysis.impulsive_noise_report(
        pixels=groups.get("pixel"),
        latents=groups.get("latent"),
        pixel_model=models.get("pixel"),
        latent_model=models.get("latent"),
        num_scales=args.num_scales,
        seed=args.seed,
        batch_size=args.batch_size,
        max_values=args.max_values,
    )
    report["source"] = {"quickstart": args.quickstart} if args.quickstart else {"latent_cache": args.latent_cache}
    report["backend"] = keras.backend.backend()
    for group in groups:
        report[group]["model"] = described[group]

    # ## The outputs: the figure and the numbers.
    png = os.path.join(args.output, "impulsive_noise.png")
    json_path = os.path.join(args.output, "impulsive_noise.json")
    analysis.plot_impulsive_noise(values, png, num_scales=args.num_scales, seed=args.seed)
    write_json_atomic(json_path, report)

    header = f"{'panel':<14}{'values':>9}{'Q1':>9}{'Q3':>9}{'IQR':>9}{'min':>9}{'max':>9}{'outliers':>10}{'extreme':>9}"
    print(header)
    for group in groups:
        for panel in ("data", "td"):
            stats = report[group][panel]
            print(
                f"{group + ' ' + panel:<14}{stats['count']:>9}{stats['q1']:>9.3f}{stats['q3']:>9.3f}{stats['iqr']:>9.3f}"
                f"{stats['min']:>9.3f}{stats['max']:>9.3f}{100 * stats['outliers']['fraction']:>9.2f}%"
                f"{100 * stats['extreme_outliers']['fraction']:>8.2f}%"
            )
    print(f"Wrote {png} and {json_path}.")


if __name__ == "__main__":
    main()
