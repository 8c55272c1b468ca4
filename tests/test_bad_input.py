"""Bad input gets a clear error that names it, on every backend, and loses nothing.

The probe cases of the reliability issue: wrong sample shapes on a built model,
NaN/inf arriving through every kind of data `fit` reads, integer images,
invalid seeds, damaged `.keras` files and NaN samples given to a PNG grid.
"""

import os
import re
import zipfile

import keras
import numpy as np
import pytest

import keras_lct
from keras_lct.callbacks import save_image_grid
from keras_lct.data import NoisePairedDataset
from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam

DATA = np.random.default_rng(0).standard_normal((16, 8, 8, 4)).astype("float32")
# Batch 12 of 16 (batches of 4) holds a NaN: further than any source reads ahead of the first step
# (Keras' queue holds 10 batches), so fit trains 1-12 steps before it stops.
NAN_BATCH = 12
WITH_NAN = np.concatenate([DATA] * 4)
WITH_NAN[4 * NAN_BATCH + 1, 1, 1, 1] = np.nan


def built_model():
    network = UNet(img_resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
                   channels_per_head=8)
    model = ConsistencyModel(network)
    model.build((None, 8, 8, 4))
    model.compile(optimizer=RAdam(1e-3))
    return model


def weights_of(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables + model.non_trainable_variables]


def assert_finite_weights(model):
    assert all(np.isfinite(w).all() for w in weights_of(model))


@pytest.mark.parametrize("samples", [DATA[..., :3], DATA[:, :6, :6], DATA[:, :, :, :, None]])
def test_wrong_sample_shape_on_a_built_model_names_both_shapes(samples):
    model = built_model()
    with pytest.raises(ValueError, match=r"built for samples of shape \(8, 8, 4\); the batch has samples of shape"):
        model.fit(samples, batch_size=4, epochs=1, verbose=0)
    assert int(model.training_step) == 0


def test_wrong_noise_shape_is_named():
    model = built_model()
    with pytest.raises(ValueError, match="the noise batch has samples of shape"):
        model.fit(DATA, DATA[..., :3], batch_size=4, epochs=1, verbose=0)


class Batches(keras.utils.PyDataset):
    def __init__(self, data, **kwargs):
        super().__init__(**kwargs)
        self.data = data

    def __len__(self):
        return len(self.data) // 4

    def __getitem__(self, index):
        return self.data[4 * index : 4 * index + 4]


def generator(data):
    while True:
        for index in range(len(data) // 4):
            yield (data[4 * index : 4 * index + 4],)


def data_loader(data):
    import torch

    return torch.utils.data.DataLoader(torch.from_numpy(data), batch_size=4)


def tf_dataset(data):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(data).batch(4)


class CompletedSteps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


SOURCES = {"py_dataset": Batches, "generator": generator, "tf_data": tf_dataset, "torch_data_loader": data_loader}


@pytest.mark.parametrize("source", list(SOURCES))
def test_nan_batch_stops_fit_before_it_reaches_the_weights(source):
    model = built_model()
    data = SOURCES[source](WITH_NAN)
    kwargs = {"steps_per_epoch": len(WITH_NAN) // 4} if source == "generator" else {}
    completed = CompletedSteps()
    initial = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    with pytest.raises(Exception, match="NaN or inf") as error:
        model.fit(data, epochs=1, verbose=0, callbacks=[completed], **kwargs)
    # Names the batch: "Batch 12 holds NaN or inf ..." (tf.data's assertion: "... Batch index:] [12]").
    assert re.search(rf"Batch (index:\] \[)?{NAN_BATCH}\b", str(error.value)), str(error.value)
    # The steps before it trained, but for those whose batches the source had read ahead; the model
    # holds the state of the last completed step.
    assert 1 <= completed.count <= NAN_BATCH
    assert int(model.training_step) == completed.count
    assert any(not np.array_equal(keras.ops.convert_to_numpy(v), w) for v, w in zip(model.trainable_variables, initial))
    assert_finite_weights(model)
    assert np.isfinite(model.sample(2, seed=0)).all()


@pytest.mark.parametrize("source", ["py_dataset", "torch_data_loader"])
def test_checked_sources_train_as_before(source):
    model = built_model()
    model.fit(SOURCES[source](DATA), epochs=2, verbose=0)
    assert int(model.training_step) == 8  # 4 batches per epoch


@pytest.mark.parametrize("source", ["numpy", "paired", "py_dataset", "tf_data"])
def test_integer_images_are_refused_with_how_to_scale_them(source):
    pixels = np.clip(DATA * 50 + 128, 0, 255).astype("uint8")
    data = {"numpy": lambda p: p, "paired": lambda p: NoisePairedDataset(p, batch_size=4), "py_dataset": Batches,
            "tf_data": tf_dataset}[source](pixels) if source != "paired" else None
    model = built_model()
    with pytest.raises(ValueError, match=r"integer dtype uint8.*images_to_unit_range"):
        if source == "paired":
            NoisePairedDataset(pixels, batch_size=4)
        else:
            model.fit(data, batch_size=4 if source == "numpy" else None, epochs=1, verbose=0)
    assert int(model.training_step) == 0


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_invalid_seeds_are_refused_the_same_everywhere(seed):
    model = built_model()
    for make in (
        lambda: ConsistencyModel("tiny", seed=seed),
        lambda: keras_lct.vae.AutoencoderTrainer(keras_lct.vae.AutoencoderKL.from_preset("tiny"), seed=seed),
        lambda: model.sample(2, seed=seed),
        lambda: NoisePairedDataset(DATA, batch_size=4, seed=seed),
        lambda: keras_lct.callbacks.SampleGrid("unused", seed=seed),
        lambda: keras_lct.analysis.data_values(DATA, seed=seed),
    ):
        with pytest.raises(ValueError, match=r"`seed` must be an integer (>= 0|in \[0, 2147483647\])"):
            make()


def test_seeds_of_compiled_draws_must_fit_int32():
    for make in (
        lambda: ConsistencyModel("tiny", seed=2**31),
        lambda: keras_lct.vae.AutoencoderTrainer(keras_lct.vae.AutoencoderKL.from_preset("tiny"), seed=2**31),
    ):
        with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2147483647\]; received 2147483648"):
            make()
    assert built_model().sample(1, seed=2**40).shape == (1, 8, 8, 4)  # NumPy seeds have no such limit


def test_largest_seed_is_accepted_and_trains():
    network = UNet(img_resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(),
                   channels_per_head=8)
    model = ConsistencyModel(network, seed=2**31 - 1)
    model.build((None, 8, 8, 4))
    model.compile(optimizer=RAdam(1e-3))
    model.fit(DATA, batch_size=8, epochs=1, verbose=0)
    assert_finite_weights(model)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "good.keras")
    built_model().save(path)
    return path


def damaged_copies(good, folder):
    data = open(good, "rb").read()
    copies = {"truncated": data[: len(data) // 2], "empty": b"", "not a zip": b"x" * 1000}
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("model.weights.h5")
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    copies["damaged member"] = bytes(flipped)
    paths = {}
    for name, content in copies.items():
        paths[name] = os.path.join(folder, name.replace(" ", "_") + ".keras")
        with open(paths[name], "wb") as file:
            file.write(content)
    return paths


def test_damaged_keras_files_are_named_as_damaged_not_missing(saved_model, tmp_path):
    expected = {"truncated": "not a zip archive", "empty": "the file is empty", "not a zip": "not a zip archive",
                "damaged member": "'model.weights.h5' is damaged"}
    for name, path in damaged_copies(saved_model, tmp_path).items():
        with pytest.raises(ValueError, match="is not a loadable .keras file") as error:
            keras_lct.saving.load_model(path)
        assert expected[name] in str(error.value), name
    with pytest.raises(FileNotFoundError, match="No model file at"):
        keras_lct.saving.load_model(str(tmp_path / "missing.keras"))
    model = keras_lct.saving.load_model(saved_model)
    assert isinstance(model, ConsistencyModel)


def test_nan_samples_give_an_error_and_keep_the_previous_grid(tmp_path):
    path = str(tmp_path / "grid.png")
    good = save_image_grid(np.zeros((4, 8, 8, 3), "float32"), path)
    before = open(path, "rb").read()
    images = np.zeros((4, 8, 8, 3), "float32")
    images[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of the 4 images hold NaN or inf values \(first: image 2\)"):
        save_image_grid(images, path)
    assert open(path, "rb").read() == before and good.shape == (16, 16, 3)


def test_nan_in_a_backend_tensor_is_refused_up_front():
    model = built_model()
    with pytest.raises(ValueError, match=f"NaN or inf values, first in sample {4 * NAN_BATCH + 1}"):
        model.fit(keras.ops.convert_to_tensor(WITH_NAN), batch_size=4, epochs=1, verbose=0)
    assert int(model.training_step) == 0
