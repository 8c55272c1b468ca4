"""Fig. 1's analysis: box statistics, TD values against a NumPy reference, the report, the plot, the recipe."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_lct import analysis
from keras_lct import data
from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.vae import AutoencoderKL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 4)


def small_model(shape=SHAPE):
    """An untrained ConsistencyModel: the UNet's output convolution is zero, so F = 0."""
    network = UNet(img_resolution=shape[0], in_channels=shape[-1], out_channels=shape[-1], model_channels=16,
                   channel_mult=(1, 2), num_blocks=1, attn_resolutions=(), channels_per_head=32)
    model = ConsistencyModel(network, ema_decays=())
    model.build((None,) + shape)
    return model


def reference_td(x0, num_scales, seed, sigma_min=0.002, sigma_max=80.0, rho=7.0, sigma_data=0.5):
    """TD of an F = 0 model, from the documented draws, in NumPy: c_skip(t) x_t - c_skip(t2) x_t2."""
    steps = np.arange(num_scales) / (num_scales - 1)
    sigmas = (sigma_max ** (1 / rho) + steps * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho

    def c_skip(sigma):
        return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)

    differences = []
    for sample, clean in enumerate(x0.astype(np.float64)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, sample)))
        index = rng.integers(0, num_scales - 1)
        noise = rng.standard_normal(clean.shape, dtype=np.float32)
        t, t2 = sigmas[index], sigmas[index + 1]
        differences.append(c_skip(t) * (clean + t * noise) - c_skip(t2) * (clean + t2 * noise))
    return np.stack(differences).reshape(-1)


# ---------------------------------------------------------------- box statistics
@pytest.mark.backend_neutral
def test_box_statistics_match_hand_computed_quartiles_fences_and_outliers():
    values = np.array([[8, -12, 1, 2], [3, 4, 100, 5], [6, 7, -5, 16]], np.float32)
    stats = analysis.box_statistics(values)
    # Sorted: -12 -5 1 2 3 4 5 6 7 8 16 100; linear quantiles at positions 2.75, 5.5, 8.25.
    expected = {"count": 12, "min": -12.0, "max": 100.0, "q1": 1.75, "median": 4.5, "q3": 7.25, "iqr": 5.5}
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value), key
    assert stats["inner_fences"] == pytest.approx([1.75 - 8.25, 7.25 + 8.25])  # [-6.5, 15.5]
    assert stats["outer_fences"] == pytest.approx([1.75 - 16.5, 7.25 + 16.5])  # [-14.75, 23.75]
    assert stats["whiskers"] == [-5.0, 8.0]
    assert stats["mild_outliers"] == {"count": 2, "fraction": pytest.approx(2 / 12)}  # -12 and 16
    assert stats["extreme_outliers"] == {"count": 1, "fraction": pytest.approx(1 / 12)}  # 100
    assert stats["outliers"] == {"count": 3, "fraction": pytest.approx(3 / 12), "min": -12.0, "max": 100.0}
    assert json.loads(json.dumps(stats)) == stats  # plain Python numbers

    on_the_fence = analysis.box_statistics([0, 1, 2, 3, 6])  # q1 1, q3 3: 6 is the inner fence itself
    assert on_the_fence["inner_fences"] == [-2.0, 6.0] and on_the_fence["outliers"]["count"] == 0
    assert on_the_fence["outliers"]["min"] is None and on_the_fence["whiskers"] == [0.0, 6.0]


@pytest.mark.backend_neutral
def test_box_statistics_reject_nan_inf_and_empty_values():
    with pytest.raises(ValueError, match="2 NaN and 1 inf of 5 values"):
        analysis.box_statistics([1.0, np.nan, np.inf, np.nan, 0.0])
    with pytest.raises(ValueError, match="TD values are empty"):
        analysis.box_statistics(np.zeros((0, 3)), name="TD values")


@pytest.mark.backend_neutral
def test_heavy_tailed_data_has_more_extreme_outliers_than_gaussian():
    rng = np.random.default_rng(0)
    gaussian = rng.standard_normal(200_000)
    student_t = rng.standard_t(2, 200_000)
    salt_and_pepper = np.where(rng.random(200_000) < 0.005, rng.choice([-9.0, 7.0], 200_000), gaussian)
    extreme = {
        name: analysis.box_statistics(values)["extreme_outliers"]["fraction"]
        for name, values in (("gaussian", gaussian), ("t", student_t), ("salt_and_pepper", salt_and_pepper))
    }
    assert extreme["gaussian"] < 1e-4  # P(|z| > 4.72) ~ 2e-6
    assert extreme["t"] > 0.01 and extreme["salt_and_pepper"] > 0.004


def test_injected_impulsive_outliers_replace_the_given_fraction_with_both_signs_and_leave_the_rest():
    clean = np.random.default_rng(0).normal(0, 0.5, size=(2000, 4, 4, 4)).astype("float32")
    heavy = analysis.with_impulsive_outliers(clean, fraction=0.005, magnitude=(4.0, 8.0), seed=3)
    replaced = heavy != clean
    assert heavy.shape == clean.shape and heavy.dtype == np.float32
    assert abs(replaced.mean() - 0.005) < 0.0008  # 128,000 Bernoulli(0.005) draws: std 0.0002
    assert np.all((np.abs(heavy[replaced]) >= 4.0) & (np.abs(heavy[replaced]) <= 8.0))
    assert 0.4 < np.mean(heavy[replaced] > 0) < 0.6
    np.testing.assert_array_equal(heavy, analysis.with_impulsive_outliers(clean, 0.005, (4.0, 8.0), seed=3))
    assert analysis.box_statistics(heavy)["extreme_outliers"]["fraction"] > 0.004
    assert analysis.box_statistics(clean)["extreme_outliers"]["fraction"] < 1e-4
    with pytest.raises(ValueError, match="fraction"):
        analysis.with_impulsive_outliers(clean, fraction=1.5)
    with pytest.raises(ValueError, match="magnitude"):
        analysis.with_impulsive_outliers(clean, magnitude=(8.0, 4.0))


# ---------------------------------------------------------------- TD values
@pytest.fixture(scope="module")
def model():
    return small_model()


def test_td_values_of_an_untrained_model_match_the_c_skip_formula(model):
    x0 = np.random.default_rng(1).standard_normal((10,) + SHAPE).astype(np.float32)
    td = analysis.td_values(model, x0, num_scales=21, seed=3, batch_size=4)  # 3 calls, the last padded
    assert td.dtype == np.float32 and td.shape == (10 * int(np.prod(SHAPE)),)
    np.testing.assert_allclose(td, reference_td(x0, 21, seed=3), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(analysis.td_values(model, x0, num_scales=21, seed=3, batch_size=16), td)

    kept = analysis.td_values(model, x0, num_scales=21, seed=3, batch_size=4, max_values=100)
    assert kept.shape == (100,) and np.isin(kept, td).all()
    positions = np.searchsorted(np.sort(td), kept)  # a subsample of the same values, in their order
    assert len(set(positions)) == 100
    np.testing.assert_array_equal(kept, td[np.isin(td, kept)][: len(kept)])
    data_kept = analysis.data_values(x0, seed=3, max_values=100)
    assert data_kept.shape == (100,) and np.isin(data_kept, x0).all()


def test_td_values_check_the_model_and_the_data_shape(model):
    with pytest.raises(ValueError, match="ConsistencyModel"):
        analysis.td_values(keras.Sequential([keras.layers.Dense(1)]), np.zeros((2,) + SHAPE))
    with pytest.raises(ValueError, match=r"built for samples of shape \(8, 8, 4\)"):
        analysis.td_values(model, np.zeros((2, 4, 4, 4), np.float32))


def test_report_of_one_group_and_its_plot(model, tmp_path):
    rng = np.random.default_rng(2)
    latents = np.where(rng.random((6,) + SHAPE) < 0.01, 8.0, 0.5 * rng.standard_normal((6,) + SHAPE)).astype(np.float32)
    report, values = analysis.impulsive_noise_report(latents=latents, latent_model=model, max_values=300, batch_size=8)
    assert "pixel" not in report and set(values) == {"latent"}
    latent = report["latent"]
    assert latent["num_samples"] == 6 and latent["values_total"] == 6 * 256 and latent["subsampled"]
    assert latent["data"]["count"] == latent["td"]["count"] == 300 == values["latent"]["td"].size
    assert latent["data"] == analysis.box_statistics(values["latent"]["data"], name="latent data values")
    assert report["num_scales"] == 21 and "linear" in report["quartile_method"]
    json.dumps(report)

    analysis.plot_impulsive_noise(values, tmp_path / "fig" / "one.png")
    assert Image.open(tmp_path / "fig" / "one.png").size == (900, 360)
    latents[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="latent data values hold 1 NaN and 0 inf of 1536 values"):
        analysis.impulsive_noise_report(latents=latents, latent_model=model, max_values=10)  # kept or not
    with pytest.raises(ValueError, match="pixel group has data but no model"):
        analysis.impulsive_noise_report(pixels=latents)
    with pytest.raises(ValueError, match="at least one group"):
        analysis.impulsive_noise_report()


# ---------------------------------------------------------------- the recipe
def run_analyze(*args, timeout=300):
    environment = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", "analyze.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT,
    )


@pytest.mark.recipe_bookkeeping
def test_recipe_on_quickstart_data_writes_the_figure_and_the_numbers(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (12, 8, 8, 1)).astype(np.float32)
    latents = (0.5 * rng.standard_t(3, (12,) + SHAPE)).astype(np.float32)
    np.savez(tmp_path / "data.npz", pixels=pixels, latents=latents)
    output = tmp_path / "analysis"
    result = run_analyze("--quickstart", tmp_path, "--num-samples", 10, "--batch-size", 8, "--output", output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "latent td" in result.stdout and "Wrote" in result.stdout
    assert Image.open(output / "impulsive_noise.png").size == (900, 720)
    report = json.loads((output / "impulsive_noise.json").read_text())
    assert report["num_scales"] == 21 and report["source"] == {"quickstart": str(tmp_path)}
    for group, shape in (("pixel", [8, 8, 1]), ("latent", list(SHAPE))):
        assert report[group]["num_samples"] == 10 and report[group]["sample_shape"] == shape
        assert report[group]["model"].startswith("untrained")
        for panel in ("data", "td"):
            assert {"q1", "median", "q3", "iqr", "inner_fences", "outer_fences", "mild_outliers",
                    "extreme_outliers", "outliers"} <= set(report[group][panel])
    assert report["pixel"]["data"]["min"] >= -1 and report["pixel"]["data"]["outliers"]["count"] == 0
    assert not [name for name in os.listdir(output) if name.startswith(".")]


@pytest.mark.recipe_bookkeeping
def test_recipe_on_a_latent_cache_with_a_trained_model_file(tmp_path):
    os.makedirs(tmp_path / "images")
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{index}.png")
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)  # 16x16 -> 8x8x4
    data.build_latent_cache(data.ImageFolder(tmp_path / "images", 16), vae, tmp_path / "cache", verbose=0)
    small_model().save(tmp_path / "model.keras")
    output = tmp_path / "analysis"
    result = run_analyze("--latent-cache", tmp_path / "cache", "--model", tmp_path / "model.keras",
                         "--batch-size", 8, "--output", output)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((output / "impulsive_noise.json").read_text())
    assert "pixel" not in report and report["latent"]["num_samples"] == 5
    assert report["latent"]["model"].startswith("trained") and report["latent"]["td"]["count"] == 5 * 256
    assert Image.open(output / "impulsive_noise.png").size == (900, 360)


@pytest.mark.backend_neutral
def test_recipe_refuses_missing_and_broken_inputs_clearly(tmp_path):
    result = run_analyze("--help", timeout=60)
    assert result.returncode == 0 and "--quickstart" in result.stdout and "--latent-cache" in result.stdout
    result = run_analyze("--quickstart", tmp_path / "nowhere", timeout=60)
    assert result.returncode != 0 and "no " in result.stderr and "data.npz" in result.stderr
    assert "recipes/quickstart.py" in result.stderr
    np.savez(tmp_path / "data.npz", pixels=np.zeros((2, 8, 8, 1), np.float32))
    result = run_analyze("--quickstart", tmp_path, timeout=60)
    assert result.returncode != 0 and "has no latents" in result.stderr
    latents = np.zeros((2,) + SHAPE, np.float32)
    latents[1, 0, 0, :3] = np.nan
    np.savez(tmp_path / "data.npz", pixels=np.zeros((2, 8, 8, 1), np.float32), latents=latents)
    result = run_analyze("--quickstart", tmp_path, timeout=60)
    assert result.returncode != 0 and "holds 3 NaN or inf values" in result.stderr
    result = run_analyze("--latent-cache", tmp_path, timeout=60)
    assert result.returncode != 0 and "not a latent cache folder" in result.stderr
