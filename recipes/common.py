"""What the recipes share, and only they: progress lines, sample scores, a training clock, the run-folder guards, grids, provenance.

This is no part of the library: a recipe uses keras-lct's public API, and these few helpers
that only recipes need. The recipes run as scripts (`python recipes/quickstart.py`), so Python
finds this file beside them. It imports Keras (through keras-lct): a recipe imports it after
parsing its command line, as it imports keras-lct, so that `--help` does not wait for a backend.
"""

import datetime
import importlib
import json
import os
import subprocess
import time

import keras
import numpy as np

from keras_lct import metrics
from keras_lct.callbacks import save_image_grid
from keras_lct.saving import write_json_atomic
from run_folder import hold_run_folder  # noqa: F401  (re-exported: every recipe with an --output folder holds it)

FRAME = -0.6  # the gray of the frame around each small image of a grid, in [-1, 1]


def stage_printer(started):
    """A `stage(message)` that prints `[    12 s] message` at once, the seconds since `started`.

    Args:
        started: the run's start, a `time.time()`.
    """

    def stage(message):
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    return stage


class TrainingClock(keras.callbacks.Callback):
    """The seconds of training after the first step (which traces and compiles the step); with
    `budget`, stops `fit` at the first batch end after that many.

    The comparisons at equal wall time (recipes/compare_objectives.py, recipes/compare_ect.py)
    train each model for the budget counted so, from the end of its first step.

    Args:
        budget: seconds after the first step, or None to only count them (`clock.seconds`).
    """

    def __init__(self, budget=None):
        super().__init__()
        self.budget, self.start, self.seconds = budget, None, 0.0

    def on_train_batch_end(self, batch, logs=None):
        if self.start is None:
            self.start = time.time()
            return
        self.seconds = time.time() - self.start
        if self.budget is not None and self.seconds >= self.budget:
            self.model.stop_training = True


def features(network, images):
    """The outputs of the feature `network` for `images`, as float64 NumPy.

    All `images` go in one batch: the network's compiled predict step then takes one shape per
    image count (the reference set, the samples), not again for a short last batch (on tensorflow
    such traces, with those of the other models, print its retracing warning).
    """
    return np.asarray(network.predict(images, batch_size=len(images), verbose=0), np.float64)


def scores(network, reference, images):
    """The Frechet distance and recall (k = 3) of `images` against `reference`, features of real data.

    Args:
        network: the feature network (e.g. the quickstart's digits classifier up to its
            penultimate layer), a Keras model from images to feature vectors.
        reference: `features(network, real_images)`.
        images: the images to score, as `network` takes them.

    Returns:
        `{"frechet_distance": float, "recall": float}`.
    """
    fake = features(network, images)
    return {
        "frechet_distance": metrics.frechet_distance(reference, fake),
        "recall": metrics.precision_recall(reference, fake, k=3)["recall"],
    }


def claim_run_folder(path, settings, holder, advice, defaults=None):
    """Writes `settings` to the JSON file `path`, or refuses a folder whose file holds other settings.

    A run folder holds one run: resuming it, or adding to it, with other settings would mix two
    runs. The settings are compared as JSON holds them (tuples as lists); a setting the file
    lacks reads as its value in `defaults` (what files written before the setting existed
    meant), else as None. Settings the file has and `settings` lacks are not compared.

    Args:
        path: the settings file, e.g. `OUTPUT/run.json`.
        settings: a dict of what defines the run, JSON-serializable.
        holder: what the folder holds, for the message: "another run", "an ablation".
        advice: the sentence that says what to do instead.
        defaults: optional dict of the meanings of settings that older files lack.

    Raises:
        SystemExit: naming every changed setting, `recorded -> now`; nothing is written.
    """
    settings = json.loads(json.dumps(settings))
    if os.path.exists(path):
        with open(path) as file:
            recorded = dict(defaults or {}, **json.load(file))
        changed = [f"{key}: {recorded.get(key)!r} -> {value!r}" for key, value in settings.items()
                   if recorded.get(key) != value]
        if changed:
            raise SystemExit(
                f"error: {os.path.dirname(path) or '.'} holds {holder} with other settings ({'; '.join(changed)}; "
                f"see its {os.path.basename(path)}). {advice}"
            )
    write_json_atomic(path, settings)


def git_commit(folder):
    """The short commit of the git checkout holding `folder`, `" (modified)"` appended when tracked files changed.

    "unknown" when git is not installed, `folder` is in no checkout, or git fails in any other
    way: a run's record never stops the run. Untracked files do not count as a modification.
    """

    def git(*arguments):
        return subprocess.run(["git", *arguments], cwd=folder, capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        modified = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + " (modified)" if modified else commit) or "unknown"


def run_provenance(backend):
    """What a run's metrics need to be traced: `{"date", "commit", "versions"}`.

    `date` is now, in UTC (ISO 8601, to the second); `commit` is `git_commit` of the recipes'
    folder; `versions` maps keras, keras_lct and the backend's framework (jax, torch,
    tensorflow) to their versions ("unknown" where a module has none).
    """
    modules = ("keras", "keras_lct", backend)
    versions = {}
    for name in dict.fromkeys(modules):
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            versions[name] = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(os.path.dirname(os.path.abspath(__file__))),
        "versions": versions,
    }


def framed(images, value=FRAME):
    """`images` `(n, H, W, C)`, each inside a 1-pixel frame of `value`: `(n, H + 2, W + 2, C)`."""
    return np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=value)


def save_enlarged_grid(images, path, columns=None, factor=4):
    """`keras_lct.callbacks.save_image_grid` of small images, each pixel a `factor` x `factor` block."""
    save_image_grid(np.repeat(np.repeat(images, factor, axis=1), factor, axis=2), path, columns=columns)
