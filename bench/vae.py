"""Parity with diffusers and encoding throughput of keras_lct.vae.AutoencoderKL on the active backend.

(a) Parity: diffusers' AutoencoderKL with the sd-vae-ft-ema config and
random weights (norms and biases randomized too) is converted with
`set_diffusers_weights`; the posterior mean / logvar of `--parity-images`
images and the decoding of random latents are compared (max abs error, and
that divided by the reference's max abs value).
(b) Throughput: `encode` of a batch of `--image-size` images, after one
untimed call (JAX compiles each op on first use), median over `--repeats`;
the same for diffusers (torch, `no_grad`) as the reference on this machine.
The model is frozen (`trainable = False`), which on torch also stops autograd
recording. Prints one JSON document.

    KERAS_BACKEND=jax python bench/vae.py --output bench/results/vae_jax.json

Needs torch and diffusers (the reference); nothing is downloaded.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd-vae-ft-ema")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--parity-images", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4, help="images per timed encode")
    parser.add_argument("--repeats", type=int, default=3, help="timed encodes (median reported)")
    parser.add_argument("--output", help="also write the JSON here")
    return parser.parse_args()


args = parse_args()

import diffusers  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras import ops  # noqa: E402

from keras_lct.vae import VAE_PRESETS  # noqa: E402
from keras_lct.vae import AutoencoderKL  # noqa: E402
from keras_lct.vae import set_diffusers_weights  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from test_vae import random_reference  # noqa: E402  (the tests' reference: every parameter random)


def errors(actual, expected):
    difference = float(np.abs(ops.convert_to_numpy(actual) - expected).max())
    return {"max_abs_error": difference, "relative_error": difference / float(np.abs(expected).max())}


def nhwc(tensor):
    return tensor.numpy().transpose(0, 2, 3, 1)


def median_seconds(function, repeats):
    function()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), durations


config = VAE_PRESETS[args.preset]
reference = random_reference(config, seed=0)
start = time.perf_counter()
autoencoder = AutoencoderKL(**config)
construction_seconds = time.perf_counter() - start
state_dict = {name: value.numpy() for name, value in reference.state_dict().items()}
set_diffusers_weights(autoencoder, state_dict, source="the random diffusers model")
autoencoder.trainable = False

rng = np.random.default_rng(0)
size = args.image_size
images = rng.uniform(-1, 1, size=(args.parity_images, size, size, 3)).astype("float32")
latents = rng.normal(size=(args.parity_images,) + autoencoder.latent_shape(size)).astype("float32")
with torch.no_grad():
    posterior = reference.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent_dist
    decoded = reference.decode(torch.from_numpy(latents.transpose(0, 3, 1, 2))).sample
mean, logvar = autoencoder.encode(images)
parity = {
    "images": args.parity_images,
    "image_size": size,
    "mean": errors(mean, nhwc(posterior.mean)),
    "logvar": errors(logvar, nhwc(posterior.logvar)),
    "decode": errors(autoencoder.decode(latents), nhwc(decoded)),
}
print(f"parity: {json.dumps(parity)}", flush=True)

batch = rng.uniform(-1, 1, size=(args.batch_size, size, size, 3)).astype("float32")
seconds, durations = median_seconds(lambda: ops.convert_to_numpy(autoencoder.encode(batch)[0]), args.repeats)
torch_batch = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())


def reference_encode():
    with torch.no_grad():
        return reference.encode(torch_batch).latent_dist.mean


reference_seconds, _ = median_seconds(reference_encode, args.repeats)
results = {
    "backend": keras.backend.backend(),
    "keras": keras.__version__,
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "date": datetime.date.today().isoformat(),
    "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    "preset": args.preset,
    "parameters": autoencoder.count_params(),
    "construction_seconds": construction_seconds,
    "parity": parity,
    "encode": {
        "batch_size": args.batch_size,
        "image_size": size,
        "repeats": args.repeats,
        "median_seconds": seconds,
        "images_per_second": args.batch_size / seconds,
        "all_seconds": durations,
    },
    "diffusers_torch_encode_images_per_second": args.batch_size / reference_seconds,
}
print(json.dumps(results, indent=2))
if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=2)
