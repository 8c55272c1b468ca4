"""The quickstart (`make demo`) in its --fast mode: every artifact, and a trained model beats an untrained one."""

import json
import math
import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_lct  # noqa: F401  (registers the classes of the saved models)
from test_recipes import run_recipe

ARTIFACTS = [
    "samples.png", "training.png", "metrics.json", "model.keras", "ilct.keras", "autoencoder.keras",
    "impulsive_noise.png", "impulsive_noise.json", "data.npz",
]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    output = tmp_path_factory.mktemp("quickstart")
    result = run_recipe("quickstart.py", "--fast", "--output", output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return output, result


def test_quickstart_writes_every_artifact(quickstart):
    output, result = quickstart
    for name in ARTIFACTS:
        assert os.path.getsize(output / name) > 0, name
        assert name in result.stdout  # it says where everything went
    grid = np.asarray(Image.open(output / "samples.png"))
    assert grid.ndim == 3 and grid.shape[1] > grid.shape[0]  # real | 1-step | 2-step side by side
    data = np.load(output / "data.npz")
    assert data["pixels"].shape[1:] == (8, 8, 1) and data["latents"].shape[1:] == (4, 4, 4)
    fig1 = json.loads((output / "impulsive_noise.json").read_text())
    assert {"pixel", "latent"} <= set(fig1)


def test_quickstart_metrics_are_complete_and_the_trained_model_beats_the_untrained(quickstart):
    output, _ = quickstart
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["backend"] == keras.backend.backend() and metrics["seconds"] > 0
    runs = [metrics[key] for key in ("one_step", "two_step", "real_holdout", "untrained")]
    runs += [metrics["ilct"]["one_step"], metrics["ilct"]["two_step"]]
    for scores in runs:
        assert set(scores) == {"frechet_distance", "recall"}
        assert math.isfinite(scores["frechet_distance"]) and 0 <= scores["recall"] <= 1
    # Floor and ceiling of the scale, and a model trained for 100 steps between them (far from the
    # floor: its recall is often still 0, like the untrained model's, so recall is compared loosely).
    for trained in (metrics["one_step"], metrics["two_step"]):
        assert metrics["real_holdout"]["frechet_distance"] < trained["frechet_distance"]
        assert trained["frechet_distance"] < 0.8 * metrics["untrained"]["frechet_distance"]
        assert trained["recall"] >= metrics["untrained"]["recall"]
    assert metrics["real_holdout"]["recall"] > 0.5


def test_saved_model_samples_on_this_backend_and_decodes_with_the_saved_autoencoder(quickstart):
    output, _ = quickstart
    model = keras.saving.load_model(output / "model.keras", compile=False)
    autoencoder = keras.saving.load_model(output / "autoencoder.keras", compile=False)
    images = keras_lct.data.LatentDecoder(model.latent_normalization, autoencoder)(model.sample(4, steps=2, seed=0))
    assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all()


def test_quickstart_documents_its_options_and_refuses_bad_ones():
    result = run_recipe("quickstart.py", "--help", timeout=120)
    assert result.returncode == 0
    for option in ("--output", "--steps", "--fast", "--no-ilct", "--seed"):
        assert option in result.stdout
    result = run_recipe("quickstart.py", "--steps", "0", timeout=120)
    assert result.returncode == 2 and "--steps must be at least 1" in result.stderr
