"""Latent caches: images encoded once by the VAE, memory-mapped, with their statistics.

A cache folder holds, for every readable image of a source, one posterior
SAMPLE of the autoencoder times its scaling factor, `z = sample * s` (the
authors' latent files), and the per-element mean and std of `z / s` over the
data set. Training reads the normalized latents `x = (z / s - mean) / std * 0.5`
batch by batch from the memory map; sampling inverts it before decoding.

Files of a cache folder:

- `cache.json`: what the cache was made from (autoencoder fingerprint and
  config, resolution, image source, seed, whether it holds class labels
  and their names) and whether it is complete;
- `shard_XXXXX.npz`: encoded shards while encoding is under way (each written
  to a temporary name and renamed, so an interrupted run resumes at the first
  missing shard and loses nothing);
- `latents.npy`: the finished `(num_images, h, w, c)` float32 array;
- `statistics.npz`: `mean`, `std` (of `z / s`, per element), `index` (the
  source index of each latent) and, for a source read with labels,
  `labels` (the class index of each latent);
- `report.json`: images read, converted and skipped (with reasons).

Reference: `docs/reference.md` "Latents"; paper section 5.1.
"""

import contextlib
import itertools
import json
import math
import os
import time

import keras
import numpy as np
from keras import ops

from keras_lct._validation import check_class_labels
from keras_lct._validation import check_int
from keras_lct._validation import check_seed
from keras_lct.data.images import ImageReport
from keras_lct.data.images import images_to_unit_range
from keras_lct.saving import atomic_path
from keras_lct.saving import write_json_atomic

CACHE_FORMAT = 1
TARGET_STD = 0.5  # docs/reference.md "Latents": x = (z / s - mean) / std * 0.5.
_SHARD_PATTERN = "shard_{:05d}.npz"
# Fields of cache.json that must equal the current run's for a cache to be reused.
# (latent_shape follows from the fingerprinted config and the resolution.)
_IDENTITY_FIELDS = ("format", "autoencoder_fingerprint", "resolution", "seed", "source")
_SOURCE_IDENTITY_FIELDS = ("kind", "name", "split", "num_images", "files_sha256", "resolution", "flip", "label_key")


def normalize_latents(latents, mean, std, scaling_factor, target_std=TARGET_STD):
    """x = (z / s - mean) / std * target_std: scaled VAE latents -> training data.

    Works on NumPy arrays and on backend tensors alike.
    """
    return (latents / scaling_factor - mean) / std * target_std


def denormalize_latents(x, mean, std, target_std=TARGET_STD):
    """The inverse up to the scaling factor: training data -> z / s, the VAE decoder's input."""
    return x * std / target_std + mean


@keras.saving.register_keras_serializable(package="keras_lct")
class LatentNormalization(keras.layers.Layer):
    """The per-element normalization of VAE latents, and its inverse for decoding.

    Holds the statistics of a latent data set as (non-trainable) weights, so a
    model that carries this layer is self-contained for sampling: its `.keras`
    file keeps the statistics, the scaling factor and the autoencoder's
    config and fingerprint. `ConsistencyModel(..., latent_normalization=layer)`
    stores it.

    Args:
        scaling_factor: s, the VAE's latent scaling factor (0.18215 for the
            Stable Diffusion VAE).
        target_std: the std of the normalized data (0.5 = sigma_data).
        autoencoder_config: the config of the VAE the latents come from (a
            dict, to rebuild or check the decoder), or None.
        autoencoder_fingerprint: `AutoencoderKL.fingerprint()` of that VAE, or
            None.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        latents: scaled latents z (`sample * s`), `(batch, h, w, c)`; returns
            `(z / s - mean) / std * target_std`. `denormalize(x)` inverts it
            up to s, returning the decoder's input z / s.

    Example:
    ```python
    normalization = cache.normalization()            # from a LatentCache
    x = normalization(z)                             # training data
    images = vae.decode(normalization.denormalize(model.sample(16)))
    ```

    Reference: `docs/reference.md` "Latents".
    """

    def __init__(
        self,
        scaling_factor=0.18215,
        target_std=TARGET_STD,
        autoencoder_config=None,
        autoencoder_fingerprint=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.scaling_factor = float(scaling_factor)
        self.target_std = float(target_std)
        self.autoencoder_config = autoencoder_config
        self.autoencoder_fingerprint = autoencoder_fingerprint

    def build(self, input_shape):
        sample_shape = tuple(input_shape[1:])
        self.mean = self.add_weight(shape=sample_shape, initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=sample_shape, initializer="ones", trainable=False, name="std")

    def set_statistics(self, mean, std):
        """Sets the per-element mean and std of z / s (builds the layer if needed)."""
        mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have one shape; received {mean.shape} and {std.shape}.")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("Latent statistics must be finite, with std > 0 everywhere.")
        if not self.built:
            self.build((None,) + mean.shape)
        if tuple(self.mean.shape) != mean.shape:
            raise ValueError(f"This layer holds statistics of shape {tuple(self.mean.shape)}; received {mean.shape}.")
        self.mean.assign(mean)
        self.std.assign(std)

    def call(self, latents):
        return normalize_latents(
            ops.cast(latents, "float32"),
            ops.convert_to_tensor(self.mean),
            ops.convert_to_tensor(self.std),
            self.scaling_factor,
            self.target_std,
        )

    def denormalize(self, x):
        """Training-space samples -> z / s, ready for `AutoencoderKL.decode` (NumPy in, NumPy out)."""
        return denormalize_latents(
            np.asarray(x, np.float32),
            ops.convert_to_numpy(self.mean),
            ops.convert_to_numpy(self.std),
            self.target_std,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "scaling_factor": self.scaling_factor,
                "target_std": self.target_std,
                "autoencoder_config": self.autoencoder_config,
                "autoencoder_fingerprint": self.autoencoder_fingerprint,
            }
        )
        return config


class NormalizedLatents:
    """A read-only view of a cache's latents, normalized row by row when read.

    Array-like for `keras_lct.data.NoisePairedDataset`: `shape`, `dtype`,
    `len` and `view[rows]` for an int, a slice or an index array. Nothing is
    copied up front.
    """

    def __init__(self, latents, mean, std, scaling_factor, target_std=TARGET_STD):
        self.latents = latents
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.scaling_factor = float(scaling_factor)
        self.target_std = float(target_std)
        self.shape = tuple(latents.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        latents = np.asarray(self.latents[rows], np.float32)
        return normalize_latents(latents, self.mean, self.std, self.scaling_factor, self.target_std)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


class LatentCache:
    """A finished latent cache folder, opened for reading (see the module docstring).

    Args:
        directory: the cache folder, as written by `build_latent_cache`.
        autoencoder_fingerprint: if given, the cache must come from this VAE.

    Attributes:
        latents: the memory-mapped `(num_images, h, w, c)` float32 array of
            z = sample * s.
        mean, std: per-element statistics of z / s, shape `(h, w, c)`.
        scaling_factor: s.
        index: source index of every latent (skipped images leave gaps).
        labels: the int32 class index of every latent, aligned with
            `latents`, or None for a cache encoded without labels.
        class_names: the names of classes 0..K-1 (a list), or None (no
            labels, or labels without names).
        num_classes: K: the number of class names, else the largest label
            + 1; 0 without labels.
        info: the contents of `cache.json`.
        report: the `ImageReport` of the encoding.

    Example:
    ```python
    cache = LatentCache("runs/celeba/latents")
    batches = NoisePairedDataset(cache.training_data(), batch_size=128)
    # A cache of a labelled source: (x0, z, y) batches.
    batches = NoisePairedDataset(cache.training_data(), batch_size=128, labels=cache.labels)
    ```

    Reference: `docs/reference.md` "Latents".
    """

    def __init__(self, directory, autoencoder_fingerprint=None):
        self.directory = os.fspath(directory)
        self.info = _read_info(self.directory)
        if self.info is None:
            raise FileNotFoundError(
                f"No latent cache in {self.directory!r} (no cache.json). Build one with "
                "`keras_lct.data.build_latent_cache(images, vae, directory)`."
            )
        if not self.info.get("complete"):
            raise ValueError(
                f"The latent cache in {self.directory!r} is incomplete (encoding was interrupted). "
                "Run `build_latent_cache` with the same images and VAE again to finish it."
            )
        if autoencoder_fingerprint is not None and autoencoder_fingerprint != self.info["autoencoder_fingerprint"]:
            raise ValueError(
                f"The latent cache in {self.directory!r} was encoded by another autoencoder "
                f"(fingerprint {self.info['autoencoder_fingerprint'][:12]}..., not "
                f"{autoencoder_fingerprint[:12]}...). Use the VAE it was made with, or another cache folder."
            )
        self.latents = np.load(os.path.join(self.directory, "latents.npy"), mmap_mode="r")
        with np.load(os.path.join(self.directory, "statistics.npz")) as statistics:
            self.mean = statistics["mean"]
            self.std = statistics["std"]
            self.index = statistics["index"]
            self.labels = statistics["labels"].astype(np.int32) if "labels" in statistics.files else None
        self.class_names = self.info.get("class_names")
        self.scaling_factor = float(self.info["scaling_factor"])
        with open(os.path.join(self.directory, "report.json")) as file:
            self.report = ImageReport.from_dict(json.load(file))

    def __len__(self):
        return len(self.latents)

    @property
    def num_classes(self):
        """K, the number of classes of the labels (0 without labels)."""
        if self.class_names is not None:
            return len(self.class_names)
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def normalization(self):
        """A built `LatentNormalization` holding this cache's statistics and VAE identity."""
        layer = LatentNormalization(
            scaling_factor=self.scaling_factor,
            autoencoder_config=self.info.get("autoencoder_config"),
            autoencoder_fingerprint=self.info["autoencoder_fingerprint"],
            name="latent_normalization",
        )
        layer.set_statistics(self.mean, self.std)
        return layer

    def training_data(self):
        """The normalized latents as a lazy `NormalizedLatents` view (no copy)."""
        return NormalizedLatents(self.latents, self.mean, self.std, self.scaling_factor)


class LatentDecoder:
    """Turns a model's samples into images: denormalize, then the VAE decoder, in batches.

    The decoder is compiled once (a functional model run by
    `predict_on_batch` on full batches, the last one padded), so calling
    this every few epochs, or on any number of samples, costs no retracing.

    Args:
        normalization: the `LatentNormalization` of the training latents
            (e.g. `model.latent_normalization`).
        autoencoder: the `keras_lct.vae.AutoencoderKL` the latents come from.
        batch_size: latents per decoder call.

    Call arguments:
        samples: NumPy array `(n, h, w, c)` in the model's (normalized) space.
        Returns float32 images `(n, H, W, out_channels)` in [-1, 1] (clipped).

    Example:
    ```python
    decode = LatentDecoder(model.latent_normalization, vae)
    images = decode(model.sample(16, steps=2, seed=0))
    keras_lct.callbacks.save_image_grid(images, "samples.png")
    ```
    """

    def __init__(self, normalization, autoencoder, batch_size=16):
        if normalization is None:
            raise ValueError(
                "This model carries no latent normalization, so its samples cannot be decoded: "
                "train it with `ConsistencyModel(..., latent_normalization=cache.normalization())`."
            )
        _check_same_autoencoder(normalization, autoencoder)
        self.normalization = normalization
        self.autoencoder = autoencoder
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        latents = keras.Input(tuple(normalization.mean.shape))
        self._decoder = keras.Model(latents, autoencoder.decode(latents))

    def __call__(self, samples):
        latents = self.normalization.denormalize(samples)
        images = [
            ops.convert_to_numpy(self._decoder.predict_on_batch(_full_batch(batch, self.batch_size)))[: len(batch)]
            for batch in (latents[start : start + self.batch_size] for start in range(0, len(latents), self.batch_size))
        ]
        return np.clip(np.concatenate(images).astype(np.float32), -1.0, 1.0)


def _check_same_autoencoder(normalization, autoencoder):
    expected = normalization.autoencoder_fingerprint
    if expected is None:
        return
    fingerprint = autoencoder.fingerprint()
    if fingerprint != expected:
        raise ValueError(
            "The autoencoder given is not the one the model's latents were encoded with "
            f"(fingerprint {fingerprint[:12]}..., expected {expected[:12]}...; "
            f"expected config: {normalization.autoencoder_config}). Decoding with another VAE gives "
            "wrong images: pass the VAE weights used to build the latent cache."
        )


def encode_latents(autoencoder, images, seed=0, batch_size=256):
    """Encodes in-memory images into normalized latents and their normalization.

    The in-memory counterpart of `build_latent_cache` for a data set that fits
    in memory: the same posterior samples (noise from `(seed, image index)`),
    the same statistics of z / s (std with n - 1), so image i gets the latent
    a cache of the same images would hold.

    Args:
        autoencoder: a `keras_lct.vae.AutoencoderKL` with its weights.
        images: float images in the VAE's input range [-1, 1],
            `(num_images, resolution, resolution, channels)`.
        seed: seed of the posterior samples.
        batch_size: images per encoder call.

    Returns:
        `(latents, normalization)`: the normalized float32 latents
        `(z / s - mean) / std * 0.5` and the built `LatentNormalization`
        holding their statistics and the autoencoder's identity (give it to
        `ConsistencyModel(latent_normalization=...)`).

    Example:
    ```python
    latents, normalization = encode_latents(vae, images_to_unit_range(digits))
    model = ConsistencyModel(unet, latent_normalization=normalization)
    ```

    Reference: `docs/reference.md` "Latents".
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or len(images) < 2:
        raise ValueError(
            "encode_latents needs at least 2 square images of shape (num_images, resolution, resolution, "
            f"channels); received shape {images.shape}."
        )
    check_seed("seed", seed)
    check_int("batch_size", batch_size, minimum=1)
    encoder = _compiled_encoder(autoencoder, images.shape[1])
    batch_size = min(batch_size, len(images))
    unscaled = np.concatenate(
        [
            _posterior_samples(autoencoder, encoder, images[start : start + batch_size],
                               range(start, min(start + batch_size, len(images))), seed, batch_size)
            for start in range(0, len(images), batch_size)
        ]
    )
    normalization = LatentNormalization(
        scaling_factor=autoencoder.scaling_factor,
        autoencoder_config=_plain_config(autoencoder),
        autoencoder_fingerprint=autoencoder.fingerprint(),
        name="latent_normalization",
    )
    unscaled64 = unscaled.astype(np.float64)
    normalization.set_statistics(unscaled64.mean(axis=0), unscaled64.std(axis=0, ddof=1))
    latents = ops.convert_to_numpy(normalization(unscaled * autoencoder.scaling_factor))
    return np.asarray(latents, np.float32), normalization


def build_latent_cache(source, autoencoder, directory, batch_size=16, seed=0, shard_size=1024, verbose=1):
    """Encodes every image of `source` once into a latent cache folder; resumes if interrupted.

    For each readable image: `z = (mean + exp(logvar / 2) * noise) * s`, with
    the VAE's posterior mean and log-variance and standard normal noise drawn
    in NumPy from `(seed, image index)`, so the cache is the same on every
    backend and after any interruption. Shards of `shard_size` images are
    written atomically; a rerun skips finished shards. When all are done they
    are joined into one memory-mappable `latents.npy`, one shard in memory at a
    time, with the per-element statistics of z / s (mean, and std with n - 1
    as the authors' `torch.std_mean`).

    A source read with class labels (its `describe()` has `class_names`)
    gives a labelled cache: each latent keeps its image's label, and the
    class names are kept in `cache.json`.

    A folder that already holds a cache of other images, another autoencoder,
    resolution or seed, or with other class labels (or labels where this run
    reads none, and the reverse) is refused (nothing in it is touched).

    Args:
        source: an image source (`ImageFolder`, `TFDSImages`).
        autoencoder: a `keras_lct.vae.AutoencoderKL` with its weights.
        directory: the cache folder (created).
        batch_size: images per encoder call.
        seed: seed of the posterior samples.
        shard_size: images per shard (the work an interruption can lose).
        verbose: 1 for a progress bar with images/s and a summary, 0 silent.

    Returns:
        the `LatentCache`.

    Example:
    ```python
    vae = keras_lct.vae.load_autoencoder("weights/sd-vae-ft-ema")
    cache = build_latent_cache(ImageFolder("celeba_hq_256", 256), vae, "runs/celeba/latents")
    ```

    Reference: `docs/reference.md` "Latents".
    """
    directory = os.fspath(directory)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_seed("seed", seed)
    shard_size = check_int("shard_size", shard_size, minimum=1)
    if source.resolution % autoencoder.downsampling_factor:
        raise ValueError(
            f"The image resolution {source.resolution} is not divisible by the autoencoder's "
            f"downsampling factor {autoencoder.downsampling_factor}."
        )
    latent_shape = autoencoder.latent_shape(source.resolution)
    description = source.describe()
    labelled = "class_names" in description
    info = {
        "format": CACHE_FORMAT,
        "autoencoder_fingerprint": autoencoder.fingerprint(),
        "autoencoder_config": _plain_config(autoencoder),
        "scaling_factor": float(autoencoder.scaling_factor),
        "resolution": source.resolution,
        "latent_shape": list(latent_shape),
        "seed": seed,
        "source": description,
        "labelled": labelled,
        "class_names": description.get("class_names"),
        "shard_size": shard_size,
        "complete": False,
    }
    os.makedirs(directory, exist_ok=True)
    existing = _read_info(directory)
    if existing is not None:
        _check_same_cache(directory, existing, info)
        if existing.get("complete"):
            cache = LatentCache(directory)
            if verbose:
                print(f"Latent cache {directory}: {len(cache)} latents {latent_shape}, reused.")
            return cache
        shard_size = existing["shard_size"]
        info["shard_size"] = shard_size
    else:
        write_json_atomic(os.path.join(directory, "cache.json"), info)

    encoder = _compiled_encoder(autoencoder, source.resolution)
    num_shards = math.ceil(len(source) / shard_size)
    missing = {shard for shard in range(num_shards) if not os.path.exists(_shard_path(directory, shard))}
    progress = keras.utils.Progbar(len(source), unit_name="image", stateful_metrics=["images/s"]) if verbose else None
    done = already_done = len(source) - sum(min(shard_size, len(source) - shard * shard_size) for shard in missing)
    if verbose:
        print(
            f"Encoding {len(source)} images of {source.resolution}x{source.resolution} into {directory} "
            f"({num_shards - len(missing)} of {num_shards} shards already done)."
        )
        progress.update(done)
    started, encoded = time.perf_counter(), 0
    # One pass over each run of consecutive missing shards: a streamed source (tfds) is read once.
    images = None
    for shard in sorted(missing):
        start = shard * shard_size
        if shard - 1 not in missing:
            images = source.iter_images(start, start + _run_length(missing, shard) * shard_size)
        latents, indices, labels, pending, report = [], [], [], [], ImageReport()

        def encode_pending():
            pixels = images_to_unit_range(np.stack([image.pixels for image in pending]))
            batch_indices = [image.index for image in pending]
            samples = _posterior_samples(autoencoder, encoder, pixels, batch_indices, seed, batch_size)
            latents.append(samples * np.float32(autoencoder.scaling_factor))
            indices.extend(batch_indices)
            labels.extend(image.label for image in pending)
            pending.clear()

        for item in itertools.islice(images, min(shard_size, len(source) - start)):
            report.add(item)
            if item.pixels is not None:
                pending.append(item)
            if len(pending) == batch_size:
                encode_pending()
            done += 1
            if verbose and (done % batch_size == 0 or done == len(source)):
                rate = (done - already_done) / max(time.perf_counter() - started, 1e-9)
                progress.update(done, [("images/s", rate)])
        if pending:
            encode_pending()
        encoded += len(indices)
        shard_latents = np.concatenate(latents) if latents else np.zeros((0,) + latent_shape, np.float32)
        shard_labels = {}
        if labelled:
            shard_labels["labels"] = check_class_labels(
                np.asarray(labels) if labels else np.zeros(0, np.int32),
                what=f"The labels the labelled source gave images {start}..{start + shard_size - 1}",
            )
        _save_npz_atomic(
            _shard_path(directory, shard),
            latents=shard_latents,
            index=np.asarray(indices, np.int64),
            report=np.asarray(json.dumps(report.to_dict())),
            **shard_labels,
        )
    if verbose and missing:
        seconds = time.perf_counter() - started
        print(f"Encoded {encoded} images in {seconds:.1f} s ({encoded / max(seconds, 1e-9):.2f} images/s).")
    _join_shards(directory, num_shards, latent_shape, info)
    cache = LatentCache(directory)
    if verbose:
        classes = f", {cache.num_classes} classes" if labelled else ""
        print(f"Latent cache {directory}: {len(cache)} latents {latent_shape}{classes}.\n{cache.report.summary()}")
    return cache


def _run_length(shards, first):
    """How many consecutive shards from `first` on are in `shards`."""
    length = 0
    while first + length in shards:
        length += 1
    return length


def _compiled_encoder(autoencoder, resolution):
    """`images -> (mean, logvar)` as a functional model, so `predict_on_batch` compiles it."""
    images = keras.Input((resolution, resolution, autoencoder.in_channels))
    return keras.Model(images, autoencoder.encode(images))


def _full_batch(batch, batch_size):
    """`batch` padded with zeros to `batch_size` rows (the caller drops their outputs).

    Every call of a compiled function then has one shape: a short last batch would trace it
    again (on tensorflow, enough such traces print its "triggered tf.function retracing" warning)
    or compile it again (on jax).
    """
    return np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], batch.dtype)])


def _posterior_samples(autoencoder, encoder, images, indices, seed, batch_size):
    """z / s, one posterior sample of each of `images` (float, in [-1, 1]) by its source index."""
    mean, logvar = (
        np.asarray(ops.convert_to_numpy(value), np.float32)[: len(images)]
        for value in encoder.predict_on_batch(_full_batch(images, batch_size))
    )
    noise = np.stack([_posterior_noise(mean.shape[1:], seed, index) for index in indices])
    sample = ops.convert_to_numpy(
        autoencoder.sample_posterior(ops.convert_to_tensor(mean), ops.convert_to_tensor(logvar), noise)
    )
    return np.asarray(sample, np.float32)


def _posterior_noise(shape, seed, index):
    """Standard normal float32 noise, a pure function of (seed, image index)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(index),))).standard_normal(
        shape, dtype=np.float32
    )


def _join_shards(directory, num_shards, latent_shape, info):
    """Joins the shards into latents.npy with statistics, then marks the cache complete."""
    counts, report = [], ImageReport()
    for shard in range(num_shards):
        with np.load(_shard_path(directory, shard)) as data:
            counts.append(len(data["index"]))
            report.merge(ImageReport.from_dict(json.loads(str(data["report"]))))
    total = sum(counts)
    if total < 2:
        raise ValueError(
            f"Only {total} readable image(s): latent statistics need at least 2.\n{report.summary()}"
        )
    partial = os.path.join(directory, "latents.partial.npy")
    latents = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(total,) + tuple(latent_shape))
    index = np.empty(total, np.int64)
    labels = np.empty(total, np.int32) if info["labelled"] else None
    # Chan et al.'s pairwise update of the mean and the sum of squared deviations.
    count, mean, squares = 0, np.zeros(latent_shape, np.float64), np.zeros(latent_shape, np.float64)
    for shard, shard_count in enumerate(counts):
        if not shard_count:
            continue
        with np.load(_shard_path(directory, shard)) as data:
            values = data["latents"]
            latents[count : count + shard_count] = values
            index[count : count + shard_count] = data["index"]
            if labels is not None:
                labels[count : count + shard_count] = data["labels"]
        unscaled = values.astype(np.float64) / info["scaling_factor"]
        shard_mean = unscaled.mean(axis=0)
        shard_squares = ((unscaled - shard_mean) ** 2).sum(axis=0)
        delta = shard_mean - mean
        combined = count + shard_count
        mean = mean + delta * shard_count / combined
        squares = squares + shard_squares + delta**2 * count * shard_count / combined
        count = combined
    latents.flush()
    del latents
    os.replace(partial, os.path.join(directory, "latents.npy"))
    std = np.sqrt(squares / (count - 1))
    if not np.isfinite(mean).all() or not np.isfinite(std).all():
        raise ValueError(
            "The encoded latents hold NaN or inf values: the autoencoder's weights or the images are "
            f"broken. Nothing was deleted; inspect the shards in {directory!r}."
        )
    if (std <= 0).any():
        raise ValueError(
            f"{int((std <= 0).sum())} latent elements have zero std over the data set (identical "
            "images?): the latents cannot be normalized. Use more varied images."
        )
    _save_npz_atomic(
        os.path.join(directory, "statistics.npz"),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        index=index,
        **({} if labels is None else {"labels": labels}),
    )
    write_json_atomic(os.path.join(directory, "report.json"), report.to_dict())
    write_json_atomic(os.path.join(directory, "cache.json"), dict(info, complete=True, num_latents=total))
    for shard in range(num_shards):
        with contextlib.suppress(FileNotFoundError):
            os.remove(_shard_path(directory, shard))


def _check_same_cache(directory, existing, info):
    # A cache written before labels existed holds none.
    old_labels = (bool(existing.get("labelled")), existing.get("class_names"))
    new_labels = (info["labelled"], info["class_names"])
    if old_labels != new_labels:
        raise ValueError(
            f"The folder {directory!r} holds a latent cache {_labels_text(*old_labels)}, but this run reads "
            f"images {_labels_text(*new_labels)}. A cache keeps the labels it was encoded with. Use another "
            "cache folder, or delete this one to encode again."
        )
    for field in _IDENTITY_FIELDS:
        old, new = existing.get(field), info[field]
        if field == "source":
            old = {key: (old or {}).get(key) for key in _SOURCE_IDENTITY_FIELDS}
            new = {key: new.get(key) for key in _SOURCE_IDENTITY_FIELDS}
        if old != new:
            what = {
                "autoencoder_fingerprint": "another autoencoder (other weights or config)",
                "source": "other images",
                "resolution": "another image resolution",
                "seed": "another seed",
                "format": "another keras-lct cache format",
            }[field]
            raise ValueError(
                f"The folder {directory!r} holds a latent cache of {what}: {field} was {old!r}, now "
                f"{new!r}. Latents of different encodings cannot be mixed. Use another cache folder, "
                "or delete this one to encode again."
            )


def _labels_text(labelled, class_names):
    if not labelled:
        return "without class labels"
    if class_names is None:
        return "with class labels (unnamed)"
    return f"with the class labels of {len(class_names)} classes {class_names}"


def _plain_config(autoencoder):
    """The autoencoder's config as JSON-able Python values."""
    return json.loads(json.dumps(autoencoder.get_config(), default=list))


def _read_info(directory):
    path = os.path.join(directory, "cache.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete the cache folder to encode again.") from error


def _shard_path(directory, shard):
    return os.path.join(directory, _SHARD_PATTERN.format(shard))


def _save_npz_atomic(path, **arrays):
    with atomic_path(path) as temporary:
        np.savez(temporary, **arrays)
