"""The recipes as a user runs them: --help, missing inputs, and the whole --smoke path on this backend."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_lct  # noqa: F401  (registers the classes of the saved models)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_RECIPES = ["celeba.py", "ffhq.py", "lsun_church.py", "imagenet.py", "latent_training.py"]


def recipe_environment(unset=()):
    """This process's environment for a recipe on this backend, without the variables in `unset`."""
    environment = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONUNBUFFERED="1")
    for name in unset:
        environment.pop(name, None)
    return environment


def run_recipe(script, *args, timeout=600, unset=()):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=recipe_environment(unset),
        cwd=ROOT,
    )


# The authors' 2-step level of each preset; it reaches the saved model (test_smoke_run_goes_from_images_to_a_model).
TWO_STEP_LEVELS = {"celeba.py": 440, "ffhq.py": 440, "lsun_church.py": 420}


@pytest.mark.backend_neutral
@pytest.mark.parametrize("script", TRAINING_RECIPES + ["sample.py"])
def test_every_recipe_documents_its_options(script):
    result = run_recipe(script, "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--vae", "--seed") + (("--images", "--smoke", "--epochs", "--loss", "--norm", "--ot") if script != "sample.py" else ("--model", "--steps", "--out-dir")):
        assert option in result.stdout
    if script in TWO_STEP_LEVELS:
        level_help = " ".join(result.stdout.split("--two-step-level")[-1].split()[:40])
        assert f"(default: {TWO_STEP_LEVELS[script]})" in level_help


@pytest.mark.backend_neutral
def test_missing_images_or_weights_say_what_to_get(tmp_path):
    result = run_recipe("celeba.py", timeout=120)
    assert result.returncode == 2
    assert "no training images" in result.stderr and "CelebA-HQ" in result.stderr and "--smoke" in result.stderr
    result = run_recipe("celeba.py", "--images", tmp_path, timeout=120)
    assert result.returncode == 2
    assert "sd-vae-ft-ema" in result.stderr and "diffusion_pytorch_model.safetensors" in result.stderr
    result = run_recipe("celeba.py", "--images", tmp_path / "nowhere", "--vae", tmp_path / "vae", "--output", tmp_path / "run")
    assert result.returncode != 0 and "FileNotFoundError" in result.stderr


def test_smoke_run_goes_from_images_to_a_model(uninterrupted_smoke_run):
    output, result = uninterrupted_smoke_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 skipped" in result.stdout and "broken.png" in result.stdout
    for name in ("checkpoint.keras", "lct.keras", "run.json", "latents/latents.npy", "latents/report.json"):
        assert os.path.exists(output / name), name
    assert not [name for name in os.listdir(output) if name.startswith(".")]  # no temporary files left
    grids = sorted(os.listdir(output / "samples"))
    assert "samples_epoch_0002_1step.png" in grids and "samples_epoch_0002_2step.png" in grids
    assert Image.open(output / "samples" / "samples_epoch_0002_2step.png").size == (3 * 128, 3 * 128)
    assert os.listdir(output / "logs")
    if keras.backend.backend() != "jax":  # jax's compiled steps: test_faults' resumed run
        assert not (output / "jax_cache").exists()

    model = keras.models.load_model(output / "lct.keras")
    assert int(model.training_step) == 10 and int(model.optimizer.iterations) == 10
    assert int(model.schedule.num_scales) > 11  # the curriculum went on over the epochs
    assert model.two_step_level == (440, 641)  # what the 2-step grids used, and sample.py --steps 2 uses
    assert model.latent_normalization.autoencoder_fingerprint is not None
    assert all(np.isfinite(keras.ops.convert_to_numpy(weight)).all() for weight in model.weights)


@pytest.mark.recipe_bookkeeping
def test_rerunning_a_finished_run_trains_nothing_and_another_run_is_refused(uninterrupted_smoke_run):
    output, _ = uninterrupted_smoke_run
    stamp = os.path.getmtime(output / "checkpoint.keras")
    again = run_recipe("celeba.py", "--smoke", "--output", output)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Training epochs" not in again.stdout and "Already trained" in again.stdout
    other = run_recipe("celeba.py", "--smoke", "--output", output, "--batch-size", "4")
    assert other.returncode != 0
    assert "holds another run" in other.stderr and "batch_size: 8 -> 4" in other.stderr
    assert os.path.getmtime(output / "checkpoint.keras") == stamp
    assert json.loads((output / "run.json").read_text())["batch_size"] == 8


def test_init_from_puts_a_diffusion_models_weights_into_the_runs_ect_model(tmp_path):
    """The recipes' --init-from path in-process: new_model with the diffusion model, what does not fit, and a
    model that is no diffusion model (refused before the run writes anything)."""
    import types

    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    import latent_training

    from keras_lct.models import ConsistencyModel
    from keras_lct.models import network_from_preset

    diffusion = ConsistencyModel(network_from_preset("smoke", (8, 8, 4), norm="nsln"), objective="edm", ema_decays=())
    diffusion.build((None, 8, 8, 4))
    cache = types.SimpleNamespace(latents=np.zeros((1, 8, 8, 4), "float32"), normalization=lambda: None, num_classes=0)
    args = latent_training.parse_args("celeba", ["--smoke", "--objective", "ect", "--loss", "pseudo_huber_norm",
                                                 "--init-from", "diffusion.keras"])
    model = latent_training.new_model(args, cache, 80, diffusion)
    assert model.objective.name == "ect" and model.objective.stage_steps == 10 and model.objective.c is None
    for variable, source in zip(model.network.weights, diffusion.network.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), keras.ops.convert_to_numpy(source))
    other_shape = types.SimpleNamespace(latents=np.zeros((1, 4, 4, 4), "float32"), normalization=lambda: None, num_classes=0)
    with pytest.raises(SystemExit, match=r"--init-from diffusion.keras: .*data of shape \(4, 4, 4\)"):
        latent_training.new_model(args, other_shape, 80, diffusion)
    # A model that is no diffusion model is refused before the run writes anything.
    consistency = ConsistencyModel(keras_lct.models.MLPDenoiser(2), ema_decays=())
    consistency.build((None, 2))
    consistency.save(tmp_path / "consistency.keras")
    with pytest.raises(SystemExit, match=r"--init-from: .*objective='edm'; received a model with the 'consistency'"):
        latent_training.main("celeba", ["--smoke", "--output", str(tmp_path / "ect"), "--objective", "ect",
                                        "--init-from", str(tmp_path / "consistency.keras")])
    assert os.listdir(tmp_path / "ect") == ["run.lock"]  # the folder's hold only


@pytest.mark.backend_neutral
def test_the_recipes_offer_every_network_preset_of_the_library():
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    import latent_training

    assert latent_training.UNET_PRESETS == tuple(keras_lct.models.UNET_PRESETS)
    assert latent_training.DIT_PRESETS == tuple(keras_lct.models.DIT_PRESETS)
    result = run_recipe("imagenet.py", "--help", timeout=120)
    for preset in latent_training.NETWORK_PRESETS + ("--labels", "--label-dropout", "(default: DiT-B/2)"):
        assert preset in result.stdout, preset


@pytest.mark.recipe_bookkeeping
def test_imagenet_smoke_trains_a_class_conditional_dit_and_sample_py_draws_it_by_label(tmp_path):
    """The recipes' labelled path: class folders -> labelled cache -> conditional DiT -> sample.py --labels.

    Conditional training and sampling run on every backend in-process (test_conditional.py, test_dit.py,
    test_objectives.py); here, the recipes' own Python: run.json, the cache's classes, `--objective
    meanflow` (a DiT with its interval input, guidance from the labels), sample.py's grid, files and refusals.
    """
    output = tmp_path / "imagenet"
    result = run_recipe("imagenet.py", "--smoke", "--output", output, "--objective", "meanflow", "--loss", "squared_norm")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 classes" in result.stdout and "Network DiT-smoke" in result.stdout
    settings = json.loads((output / "run.json").read_text())
    assert settings["network"] == "DiT-smoke" and settings["labels"] is True and settings["ot"] is False
    assert settings["objective"] == "meanflow" and settings["loss"] == "squared_norm"
    cache = keras_lct.data.LatentCache(output / "latents")
    assert cache.class_names == ["large", "medium", "small"] and sorted(set(cache.labels.tolist())) == [0, 1, 2]
    model = keras.models.load_model(output / "lct.keras")
    assert model.num_classes == 3 and model.label_dropout == 0.1
    assert model.objective.name == "meanflow" and model.objective.distance == "squared_norm" and model.network.interval_embedding

    vae, grid, each = output / "smoke_inputs" / "vae.keras", tmp_path / "grid.png", tmp_path / "each"
    result = run_recipe("sample.py", "--model", output / "lct.keras", "--vae", vae, "--num", 6, "--steps", 2,
                        "--labels", 2, 0, "--out", grid, "--out-dir", each)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "of classes [0, 2]" in result.stdout and Image.open(grid).size == (3 * 128, 2 * 128)
    assert sorted(os.listdir(each)) == [f"{index:06d}.png" for index in range(6)]
    np.testing.assert_array_equal(np.asarray(Image.open(grid))[:128, 128:256], np.asarray(Image.open(each / "000001.png")))
    result = run_recipe("sample.py", "--model", output / "lct.keras", "--vae", vae, "--labels", 3, "--out", grid)
    assert result.returncode != 0 and "out of range" in result.stderr

    from keras_lct.saving import save_model_atomic
    from keras_lct.vae import AutoencoderKL

    keras.utils.set_random_seed(123)  # the recipe's VAE was drawn with seed 0
    save_model_atomic(AutoencoderKL.from_preset("tiny"), tmp_path / "other_vae.keras")
    result = run_recipe("sample.py", "--model", output / "lct.keras", "--vae", tmp_path / "other_vae.keras", "--out", grid)
    assert result.returncode != 0 and "not the one the model's latents were encoded with" in result.stderr

