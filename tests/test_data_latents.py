"""Latent caches: encoded values, statistics, resuming, refusing other encodings, normalization."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_lct import data
from keras_lct.models import ConsistencyModel
from keras_lct.models import MLPDenoiser
from keras_lct.vae import AutoencoderKL

RESOLUTION = 16


def tiny_vae(**overrides):
    """f2: 16x16 images -> 8x8x4 latents, fast on every backend."""
    return AutoencoderKL(**dict(dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4), **overrides))


def write_images(folder, count, corrupt=()):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = os.path.join(folder, f"{index:03d}.png")
        if index in corrupt:
            with open(path, "wb") as file:
                file.write(b"garbage")
        else:
            Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)).save(path)
    return data.ImageFolder(folder, RESOLUTION)


def expected_latents(vae, images, seed):
    """z = (mean + exp(logvar / 2) * eps) * s, computed directly, eps from (seed, image index)."""
    items = [item for item in images.iter_images() if item.pixels is not None]
    pixels = np.stack([item.pixels for item in items]).astype("float32")
    mean, logvar = (keras.ops.convert_to_numpy(value) for value in vae.encode(pixels / 127.5 - 1.0))
    noise = np.stack(
        [
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(item.index,))).standard_normal(
                mean.shape[1:], dtype=np.float32
            )
            for item in items
        ]
    )
    return (mean + np.exp(logvar / 2) * noise) * vae.scaling_factor


def test_cache_holds_posterior_samples_and_their_statistics(tmp_path):
    images = write_images(tmp_path / "images", 11, corrupt=(4,))
    vae = tiny_vae()
    cache = data.build_latent_cache(images, vae, tmp_path / "cache", batch_size=4, seed=3, shard_size=5, verbose=0)
    expected = expected_latents(vae, images, seed=3)
    assert isinstance(cache.latents, np.memmap) and cache.latents.shape == (10, 8, 8, 4)
    np.testing.assert_allclose(cache.latents, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cache.index, [0, 1, 2, 3, 5, 6, 7, 8, 9, 10])
    unscaled = expected.astype(np.float64) / vae.scaling_factor
    np.testing.assert_allclose(cache.mean, unscaled.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cache.std, unscaled.std(axis=0, ddof=1), rtol=1e-4, atol=1e-5)
    assert cache.report.read == 10 and cache.report.skipped[0][0] == "004.png"
    assert sorted(os.listdir(tmp_path / "cache")) == ["cache.json", "latents.npy", "report.json", "statistics.npz"]
    info = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert info["complete"] and info["autoencoder_fingerprint"] == vae.fingerprint()
    assert info["autoencoder_config"]["block_out_channels"] == [8, 16]


def test_in_memory_encoding_gives_the_latents_a_cache_would_hold(tmp_path):
    images = write_images(tmp_path / "images", 7)
    vae = tiny_vae()
    pixels = np.stack([item.pixels for item in images.iter_images()]).astype("float32") / 127.5 - 1.0
    latents, normalization = data.encode_latents(vae, pixels, seed=3, batch_size=3)  # a short last batch
    unscaled = expected_latents(vae, images, seed=3).astype(np.float64) / vae.scaling_factor
    mean, std = unscaled.mean(axis=0), unscaled.std(axis=0, ddof=1)
    np.testing.assert_allclose(latents, (unscaled - mean) / std * 0.5, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalization.std), std, rtol=1e-4, atol=1e-5)
    assert normalization.autoencoder_fingerprint == vae.fingerprint() and latents.dtype == np.float32
    with pytest.raises(ValueError, match="square images"):
        data.encode_latents(vae, pixels[:, :8])


def test_normalized_view_feeds_paired_batches_without_a_copy(tmp_path):
    images = write_images(tmp_path / "images", 8)
    cache = data.build_latent_cache(images, tiny_vae(), tmp_path / "cache", verbose=0)
    view = cache.training_data()
    expected = (np.asarray(cache.latents) / cache.scaling_factor - cache.mean) / cache.std * 0.5
    np.testing.assert_allclose(view[np.array([3, 1])], expected[[3, 1]], rtol=1e-5, atol=1e-6)
    assert view.shape == (8, 8, 8, 4) and len(view) == 8
    # Normalized per element: mean 0 and std 0.5 (n - 1) over the data set.
    np.testing.assert_allclose(expected.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(expected.std(axis=0, ddof=1), 0.5, rtol=1e-4)
    batches = data.NoisePairedDataset(view, batch_size=4, seed=0)
    assert batches.data is view
    x0, noise = batches[0]
    assert x0.shape == noise.shape == (4, 8, 8, 4) and x0.dtype == np.float32


class Interrupt(Exception):
    pass


class InterruptedSource:
    """Wraps an image source and raises after `limit` images, like a killed run; counts its passes."""

    def __init__(self, source, limit=None):
        self.source, self.limit, self.resolution = source, limit, source.resolution
        self.passes = []

    def __len__(self):
        return len(self.source)

    def describe(self):
        return self.source.describe()

    def iter_images(self, start=0, stop=None):
        self.passes.append((start, stop))
        for item in self.source.iter_images(start, stop):
            if self.limit is not None and item.index >= self.limit:
                raise Interrupt
            yield item


def test_an_interrupted_encoding_resumes_to_the_same_cache(tmp_path):
    images = write_images(tmp_path / "images", 12)
    vae = tiny_vae()
    counted = InterruptedSource(images)
    reference = data.build_latent_cache(counted, vae, tmp_path / "reference", shard_size=4, verbose=0)
    assert counted.passes == [(0, 12)]  # one pass over a streamed source, not one per shard
    with pytest.raises(Interrupt):
        data.build_latent_cache(InterruptedSource(images, 9), vae, tmp_path / "cache", shard_size=4, verbose=0)
    assert sorted(name for name in os.listdir(tmp_path / "cache") if name.startswith("shard")) == [
        "shard_00000.npz",
        "shard_00001.npz",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        data.LatentCache(tmp_path / "cache")
    resuming = InterruptedSource(images)
    resumed = data.build_latent_cache(resuming, vae, tmp_path / "cache", shard_size=4, verbose=0)
    assert resuming.passes == [(8, 12)]
    np.testing.assert_array_equal(resumed.latents, reference.latents)
    np.testing.assert_array_equal(resumed.std, reference.std)


def test_a_finished_cache_is_reused_and_another_encoding_refused(tmp_path):
    images = write_images(tmp_path / "images", 6)
    vae = tiny_vae()
    first = data.build_latent_cache(images, vae, tmp_path / "cache", verbose=0)
    stamp = os.path.getmtime(tmp_path / "cache" / "latents.npy")
    again = data.build_latent_cache(images, vae, tmp_path / "cache", verbose=0)
    assert os.path.getmtime(tmp_path / "cache" / "latents.npy") == stamp
    np.testing.assert_array_equal(again.latents, first.latents)

    with pytest.raises(ValueError, match="another autoencoder"):
        data.build_latent_cache(images, tiny_vae(), tmp_path / "cache", verbose=0)
    with pytest.raises(ValueError, match="another image resolution"):
        data.build_latent_cache(data.ImageFolder(tmp_path / "images", 8), vae, tmp_path / "cache", verbose=0)
    with pytest.raises(ValueError, match="another seed"):
        data.build_latent_cache(images, vae, tmp_path / "cache", seed=1, verbose=0)
    Image.fromarray(np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8)).save(tmp_path / "images" / "new.png")
    with pytest.raises(ValueError, match="other images.*another cache folder"):
        data.build_latent_cache(data.ImageFolder(tmp_path / "images", RESOLUTION), vae, tmp_path / "cache", verbose=0)
    with pytest.raises(ValueError, match="encoded by another autoencoder"):
        data.LatentCache(tmp_path / "cache", autoencoder_fingerprint=tiny_vae().fingerprint())
    # Nothing of the refused runs touched the cache.
    assert os.path.getmtime(tmp_path / "cache" / "latents.npy") == stamp
    with pytest.raises(FileNotFoundError, match="No latent cache"):
        data.LatentCache(tmp_path / "empty")


def test_too_few_readable_images_and_a_bad_resolution_are_clear_errors(tmp_path):
    images = write_images(tmp_path / "images", 3, corrupt=(0, 1))
    with pytest.raises(ValueError, match="(?s)Only 1 readable image.*skipped 000.png"):
        data.build_latent_cache(images, tiny_vae(), tmp_path / "cache", verbose=0)
    odd = data.ImageFolder(tmp_path / "images", 15)
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsampling factor 2"):
        data.build_latent_cache(odd, tiny_vae(), tmp_path / "odd", verbose=0)


def test_latent_normalization_layer_round_trip_and_model_file(tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(12,)).astype("float32")
    std = rng.uniform(0.5, 2.0, size=(12,)).astype("float32")
    layer = data.LatentNormalization(scaling_factor=0.2, autoencoder_fingerprint="abc", autoencoder_config={"a": 1})
    layer.set_statistics(mean, std)
    z = rng.normal(size=(5, 12)).astype("float32")
    x = keras.ops.convert_to_numpy(layer(z))
    np.testing.assert_allclose(x, (z / 0.2 - mean) / std * 0.5, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.denormalize(x), z / 0.2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="std > 0"):
        layer.set_statistics(mean, np.zeros_like(std))

    model = ConsistencyModel(MLPDenoiser(12, width=8), ema_decays=(), latent_normalization=layer)
    model.build((None, 12))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.latent_normalization
    assert restored.autoencoder_fingerprint == "abc" and restored.autoencoder_config == {"a": 1}
    np.testing.assert_allclose(restored.denormalize(x), z / 0.2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="statistics of shape \\(12,\\), but the data has shape \\(6,\\)"):
        ConsistencyModel(MLPDenoiser(6, width=8), latent_normalization=layer).build((None, 6))


def test_latent_decoder_decodes_and_refuses_another_vae(tmp_path):
    images = write_images(tmp_path / "images", 6)
    vae = tiny_vae()
    cache = data.build_latent_cache(images, vae, tmp_path / "cache", verbose=0)
    decode = data.LatentDecoder(cache.normalization(), vae, batch_size=4)
    x = cache.training_data()[:6]
    decoded = decode(x)
    direct = keras.ops.convert_to_numpy(vae.decode(np.asarray(cache.latents[:6]) / vae.scaling_factor))
    np.testing.assert_allclose(decoded, np.clip(direct, -1, 1), rtol=1e-4, atol=1e-4)
    assert decoded.shape == (6, RESOLUTION, RESOLUTION, 3)
    with pytest.raises(ValueError, match="not the one the model's latents were encoded with"):
        data.LatentDecoder(cache.normalization(), tiny_vae())
    with pytest.raises(ValueError, match="carries no latent normalization"):
        data.LatentDecoder(None, vae)


def test_a_labelled_cache_keeps_each_latents_label_and_refuses_another_labelling(tmp_path):
    for name, count in (("cat", 4), ("dog", 3)):
        write_images(tmp_path / "images" / name, count, corrupt=(1,) if name == "cat" else ())
    labelled = data.ImageFolder(tmp_path / "images", RESOLUTION, labels=True)
    unlabelled = data.ImageFolder(tmp_path / "images", RESOLUTION)
    vae = tiny_vae()
    cache = data.build_latent_cache(labelled, vae, tmp_path / "labelled", shard_size=3, verbose=0)
    np.testing.assert_array_equal(cache.index, [0, 2, 3, 4, 5, 6])  # cat/001.png is skipped
    assert cache.labels.dtype == np.int32
    np.testing.assert_array_equal(cache.labels, np.asarray(labelled.file_labels)[cache.index])
    np.testing.assert_array_equal(cache.labels, [0, 0, 0, 1, 1, 1])
    assert cache.class_names == ["cat", "dog"] and cache.num_classes == 2
    info = json.loads((tmp_path / "labelled" / "cache.json").read_text())
    assert info["labelled"] and info["class_names"] == ["cat", "dog"]
    x0, _, y = data.NoisePairedDataset(cache.training_data(), batch_size=6, labels=cache.labels, shuffle=False)[0]
    np.testing.assert_array_equal(y, cache.labels)
    refused = "(?s)cache with the class labels of 2 classes.*reads images without class labels.*another cache folder"
    with pytest.raises(ValueError, match=refused):
        data.build_latent_cache(unlabelled, vae, tmp_path / "labelled", verbose=0)

    plain = data.build_latent_cache(unlabelled, vae, tmp_path / "plain", verbose=0)
    assert plain.labels is None and plain.class_names is None and plain.num_classes == 0
    refused = "latent cache without class labels, but this run reads images with the class labels of 2 classes \\['cat'"
    with pytest.raises(ValueError, match=refused):
        data.build_latent_cache(labelled, vae, tmp_path / "plain", verbose=0)
    # A cache written before labels existed has no label fields: it loads, and is reused unlabelled.
    old_info = {key: value for key, value in json.loads((tmp_path / "plain" / "cache.json").read_text()).items()
                if key not in ("labelled", "class_names")}
    (tmp_path / "plain" / "cache.json").write_text(json.dumps(old_info))
    old = data.LatentCache(tmp_path / "plain")
    assert old.labels is None and old.num_classes == 0
    assert data.build_latent_cache(unlabelled, vae, tmp_path / "plain", verbose=0).labels is None
    with pytest.raises(ValueError, match="without class labels, but this run reads images with the class labels"):
        data.build_latent_cache(labelled, vae, tmp_path / "plain", verbose=0)
