"""recipes/evaluate.py as a user runs it, on a tiny model, a tiny VAE and generated feature-network files."""

import json
import math
import os

import keras
import numpy as np
import pytest
from feature_network_files import write_random_inception_weights
from feature_network_files import write_tiny_vgg16
from PIL import Image
from test_recipes import run_recipe

from keras_lct.data import LatentNormalization
from keras_lct.metrics import save_statistics
from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.saving import save_model_atomic
from keras_lct.vae import AutoencoderKL

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|save)` is deprecated:DeprecationWarning")
LATENT_SHAPE = (8, 8, 4)  # 16x16 images through the f2 VAE below


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny model trained on the latents of a random f2 VAE, real images, both weight files."""
    folder = tmp_path_factory.mktemp("evaluate")
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
    save_model_atomic(vae, folder / "vae.keras")
    normalization = LatentNormalization(scaling_factor=vae.scaling_factor, autoencoder_fingerprint=vae.fingerprint())
    normalization.set_statistics(np.zeros(LATENT_SHAPE), np.ones(LATENT_SHAPE))
    unet = UNet(img_resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(), channels_per_head=8)
    model = ConsistencyModel(unet, ema_decays=(0.9,), latent_normalization=normalization)
    model.build((None,) + LATENT_SHAPE)
    save_model_atomic(model, folder / "lct.keras")

    os.makedirs(folder / "real")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 16, 3), dtype=np.uint8))
    for index in range(4):
        image.save(folder / "real" / f"{index}.png")
    write_random_inception_weights(folder / "pt_inception.pth")
    write_tiny_vgg16(folder / "vgg16.pt")
    return folder


def evaluate(setup, *args):
    return run_recipe(
        "evaluate.py", "--model", setup / "lct.keras", "--vae", setup / "vae.keras",
        "--inception-weights", setup / "pt_inception.pth", "--num-samples", 4, "--batch-size", 3, *args,
    )


def test_evaluate_measures_against_a_folder_and_saves_its_reference(setup, tmp_path):
    result = evaluate(setup, "--reference", setup / "real", "--save-reference", tmp_path / "reference.npz",
                      "--vgg16-weights", setup / "vgg16.pt", "--steps", 2, "--output", tmp_path / "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("fid", "precision", "recall", "num_samples", "steps", "ts", "model", "backend", "seconds", "protocol"):
        assert key in report, key
    assert all(math.isfinite(report[name]) for name in ("fid", "precision", "recall", "seconds"))
    assert 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    assert report["num_samples"] == 4 and report["steps"] == 2 and report["ts"] is None
    assert report["backend"] == keras.backend.backend() and report["num_reference_images"] == 4
    assert report["resolution"] == 16 and "Inception" in report["protocol"] and "VGG16" in report["protocol"]
    with np.load(tmp_path / "reference.npz") as stored:
        assert stored["mu"].shape == (2048,) and stored["sigma"].shape == (2048, 2048)
        assert stored["vgg_features"].shape == (4, 16) and int(stored["num_images"]) == 4
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no temporary files left


@pytest.mark.recipe_bookkeeping
def test_evaluate_against_statistics_without_vgg_features_skips_recall(setup, tmp_path):
    save_statistics(tmp_path / "statistics.npz", np.ones(2048), np.zeros((2048, 2048)))  # zero: see `setup`
    result = evaluate(setup, "--reference", tmp_path / "statistics.npz", "--vgg16-weights", setup / "vgg16.pt",
                      "--ts", 80, 0.5, "--output", tmp_path / "report.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert math.isfinite(report["fid"]) and report["precision"] is None and report["recall"] is None
    assert report["ts"] == [80, 0.5] and report["steps"] == 2 and report["num_reference_images"] is None
    assert "Precision and recall skipped" in result.stdout and "holds no vgg_features" in result.stdout


@pytest.mark.backend_neutral
def test_help_lists_the_options_and_the_weight_files():
    result = run_recipe("evaluate.py", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--model", "--vae", "--reference", "--save-reference", "--inception-weights", "--vgg16-weights",
                   "--num-samples", "--steps", "--ts", "--batch-size", "--seed", "--output"):
        assert option in result.stdout
    assert "pt_inception-2015-12-05-6726825d.pth" in result.stdout and "vgg16.pt" in result.stdout


@pytest.mark.recipe_bookkeeping
def test_missing_weight_files_are_named_with_where_to_get_them(setup):
    missing = setup / "nowhere" / "pt_inception-2015-12-05-6726825d.pth"
    result = evaluate(setup, "--reference", setup / "real", "--inception-weights", missing)
    assert result.returncode != 0
    assert str(missing) in result.stderr and "github.com/mseitzer/pytorch-fid" in result.stderr
    result = evaluate(setup, "--reference", setup / "real", "--vgg16-weights", setup / "vgg16_missing.pt")
    assert result.returncode != 0
    assert "vgg16_missing.pt" in result.stderr and "nvlabs-fi-cdn.nvidia.com" in result.stderr
