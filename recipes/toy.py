"""Consistency training on a 2-D toy distribution, end to end, in about a minute on a CPU.

This is the smallest complete run of keras-lct: the paper's training recipe
(Cauchy loss, diffusion loss on the low-noise quarter, minibatch OT pairing,
exponential curriculum with adaptive c) applied to a mixture of 8 Gaussians on
a ring. The denoiser is a small MLP instead of the UNet, so the run is fast
on any backend:

    KERAS_BACKEND=jax python recipes/toy.py --output runs/toy

It writes `samples.png` (data next to 1-step and 2-step samples) and
`training.png` (loss, N and c over the run) into the output folder.

What to expect: after the default 3000 steps the 1-step samples reach all 8
modes but stay blurred between them (mean distance to the nearest mode ~0.14,
against ~0.83 for pure noise); consistency training sharpens slowly (12000
steps: ~0.13). The 2-step level (sigma ~0.369, tuned by the authors for
CelebA-HQ latents) is wider than the gaps between these modes, so 2 steps do
not help here. The adaptive c of eq. 11 is calibrated for 32x32x4 latents.
"""

import argparse
import json
import math
import os


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/toy", help="folder for the PNGs and metrics.json")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--loss", default="cauchy", choices=["cauchy", "pseudo_huber", "geman_mcclure", "l2"])
    parser.add_argument("--no-ot", action="store_true", help="pair data with independent noise instead of OT")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


args = parse_args()

import keras  # noqa: E402  (after --help, which should not wait for a backend)
import numpy as np  # noqa: E402

import keras_lct  # noqa: E402
from keras_lct.callbacks import AdaptiveC  # noqa: E402
from keras_lct.callbacks import ExpCurriculum  # noqa: E402
from keras_lct.data import NoisePairedDataset  # noqa: E402
from keras_lct.models import ConsistencyModel  # noqa: E402
from keras_lct.models import MLPDenoiser  # noqa: E402
from keras_lct.saving import write_json_atomic  # noqa: E402

from keras_lct.analysis import new_figure  # noqa: E402
from keras_lct.analysis import save_figure  # noqa: E402

from common import hold_run_folder  # noqa: E402  (recipes/common.py: what only the recipes share)

hold_run_folder(args.output)  # refused while another live run writes there

# ## The data: 8 Gaussians on a ring of radius 1, scaled to sigma_data = 0.5.
rng = np.random.default_rng(args.seed)
angles = 2 * np.pi * np.arange(8) / 8
modes = 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")
data = modes[rng.integers(0, 8, 20_000)] + 0.02 * rng.standard_normal((20_000, 2)).astype("float32")

# ## The model: f(x, sigma) = c_skip x + c_out F(c_in x, c_noise) around an MLP F.
keras.utils.set_random_seed(args.seed)
model = ConsistencyModel(MLPDenoiser(data_dim=2, width=128, depth=3), loss=args.loss, ema_decays=(0.999,), seed=args.seed)
model.build((None, 2))
model.compile(optimizer=keras.optimizers.Adam(1e-3))

# ## Training: OT-paired (x0, z) batches; N doubles along eq. 10, c follows eq. 11.
# ExpCurriculum() spreads eq. 10's stages over the whole fit: epochs x len(batches) steps.
batches = NoisePairedDataset(data, batch_size=args.batch_size, ot=not args.no_ot, seed=args.seed)
epochs = max(1, math.ceil(args.steps / len(batches)))
total_steps = epochs * len(batches)
print(f"keras-lct {keras_lct.__version__} on {keras.backend.backend()}: {total_steps} steps, {epochs} epochs")
history = model.fit(
    batches,
    epochs=epochs,
    verbose=2,
    callbacks=[ExpCurriculum(), AdaptiveC()],
)

# ## Sampling: 1 and 2 network evaluations from pure noise, with the EMA weights.
one_step = model.sample(2000, steps=1, seed=1)
two_step = model.sample(2000, steps=2, seed=1)


def distance_to_modes(points):
    return float(np.mean(np.min(np.linalg.norm(points[:, None] - modes[None], axis=-1), axis=1)))


def mode_coverage(points):
    nearest = np.argmin(np.linalg.norm(points[:, None] - modes[None], axis=-1), axis=1)
    return int(len(np.unique(nearest)))


metrics = {
    "backend": keras.backend.backend(),
    "steps": total_steps,
    "one_step_distance_to_modes": distance_to_modes(one_step),
    "two_step_distance_to_modes": distance_to_modes(two_step),
    "one_step_modes_covered": mode_coverage(one_step),
    "noise_distance_to_modes": distance_to_modes(rng.standard_normal((2000, 2)).astype("float32")),
}
print(json.dumps(metrics, indent=2))

# ## Pictures: samples next to the data, and the run's loss, N and c.
figure = new_figure(12, 4)
axes = figure.subplots(1, 3, sharex=True, sharey=True)
for axis, points, title in zip(axes, (data[:2000], one_step, two_step), ("data", "1 step", "2 steps")):
    axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    axis.set_title(title)
    axis.set_xlim(-1, 1)
    axis.set_ylim(-1, 1)
    axis.set_aspect("equal")
figure.suptitle(f"{args.loss} loss, {'independent noise' if args.no_ot else 'OT pairing'}, {total_steps} steps")
save_figure(figure, os.path.join(args.output, "samples.png"))

figure = new_figure(12, 3.5)
axes = figure.subplots(1, 3)
for axis, key in zip(axes, ("loss", "num_scales", "c")):
    axis.plot(np.arange(1, epochs + 1), history.history[key])
    axis.set_title(key)
    axis.set_xlabel("epoch")
axes[0].set_yscale("log")
axes[2].set_yscale("log")
save_figure(figure, os.path.join(args.output, "training.png"))
write_json_atomic(os.path.join(args.output, "metrics.json"), metrics)
print(f"wrote {args.output}/samples.png, training.png and metrics.json")
