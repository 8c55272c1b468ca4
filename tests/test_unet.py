"""keras_lct.models.UNet: parity with the authors' parameter counts, precision, saving."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct.backend import use_fast_paths
from keras_lct import layers
from keras_lct.callbacks import ExpCurriculum
from keras_lct.data import NoisePairedDataset
from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam
from test_dit import build_shapes_only

# docs/reference.md: trainable parameters of the authors' network (NsLN / GroupNorm).
PUBLISHED_COUNTS = {"tiny": (2.04e6, 1.37e6), "small": (26.34e6, 24.13e6), "celeba256": (158.36e6, 151.33e6)}
MICRO = dict(img_resolution=8, in_channels=2, out_channels=2, model_channels=64, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
# Trainable parameters of the authors' DhariwalUNet (branch `ot`) at keras-lct's presets, by running it:
# tests/golden/make_dit_golden.py.
AUTHORS_COUNTS = json.loads((pathlib.Path(__file__).parent / "golden" / "dit_golden.json").read_text())["unet_trainable_parameters"]


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("preset", list(PUBLISHED_COUNTS))
def test_parameter_counts_match_the_authors_network(preset, zero_initializers):  # counting needs shapes only
    for norm, published in zip(("nsln", "group"), PUBLISHED_COUNTS[preset]):
        unet = UNet.from_preset(preset, norm=norm)
        unet.build([(None, 32, 32, 4), (None,)])
        assert trainable_count(unet) == pytest.approx(published, rel=1e-3 if preset == "celeba256" else 5e-3), norm
        assert not unet.non_trainable_variables  # NsLN stores no frozen scale
        del unet


@pytest.mark.parametrize("preset", ["tiny", "smoke", "small", "celeba256"])
def test_parameter_counts_equal_the_authors_network_with_and_without_labels(preset):
    for key, count in AUTHORS_COUNTS.items():
        name, norm, label_dim = key.split("/")
        if name != preset:
            continue
        labels = dict(num_classes=int(label_dim), label_dropout=0.1) if int(label_dim) else {}
        unet = UNet.from_preset(preset, norm=norm, **labels)
        build_shapes_only(unet, [(None, 32, 32, 4), (None,)] + ([(None,)] if labels else []))
        assert trainable_count(unet) == count, key


def same_weights_but_labels(conditional, unconditional):
    """Gives `conditional` the weights of `unconditional` (built, same name), its class table aside."""
    weights = {w.path: w for w in unconditional.weights}
    for weight in conditional.weights:
        if weight.path in weights:
            weight.assign(weights[weight.path])
        else:
            assert "map_label" in weight.path, weight.path


def test_class_labels_enter_the_embedding_and_the_null_class_adds_nothing():
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 2)).astype("float32")
    noise_labels = np.array([-800.0, 400.0], "float32")
    unconditional = UNet(**MICRO, name="unet")
    unconditional.build([(None, 8, 8, 2), (None,)])
    randomize_zero_initialized_layers(unconditional)
    conditional = UNet(**MICRO, num_classes=3, label_dropout=0.1, name="unet")
    conditional.build([(None, 8, 8, 2), (None,), (None,)])
    same_weights_but_labels(conditional, unconditional)
    assert conditional.map_label.embeddings.shape == (3, 256)  # label_dim x emb_channels, as EDM's map_label
    assert 0.8 < np.std(ops.convert_to_numpy(conditional.map_label.embeddings)) < 1.2  # EDM: N(0, 1)
    expected = ops.convert_to_numpy(unconditional([x, noise_labels]))
    np.testing.assert_allclose(ops.convert_to_numpy(conditional([x, noise_labels])), expected, atol=1e-6)
    null = np.array([3, 3], "int32")
    np.testing.assert_allclose(ops.convert_to_numpy(conditional([x, noise_labels, null])), expected, atol=1e-6)
    labelled = ops.convert_to_numpy(conditional([x, noise_labels, np.array([0, 2], "int32")]))
    assert np.abs(labelled - expected).min() > 0
    keras.config.set_dtype_policy("mixed_bfloat16")  # the null class's zeros in the compute dtype too
    assert keras.backend.standardize_dtype(UNet(**MICRO, num_classes=3, label_dropout=0.1).map_label(null).dtype) == "bfloat16"
    assert UNet.from_config(conditional.get_config()).get_config() == conditional.get_config()


def test_the_interval_embedding_is_a_second_mapping_summed_into_the_embedding(zero_initializers):  # all set below
    """MeanFlow's h = t - r: map_noise, then a mapping of its own, added before the last SiLU (docs/unet.md)."""
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 2)).astype("float32")
    t, class_labels = np.array([0.3, 1.0], "float32"), np.array([0, 2], "int32")
    plain = UNet(**MICRO, num_classes=3, label_dropout=0.1, name="unet")
    plain.build([(None, 8, 8, 2), (None,), (None,)])
    randomize_zero_initialized_layers(plain)
    assert not any("interval" in weight.path for weight in plain.weights)
    meanflow = UNet(**MICRO, num_classes=3, label_dropout=0.1, interval_embedding=True, name="unet")
    assert meanflow([x, t, t]).shape == (2, 8, 8, 2)  # the null class
    assert [w.shape for w in meanflow.map_interval_layer0.weights] == [w.shape for w in plain.map_layer0.weights]
    weights = {weight.path: weight for weight in plain.weights}
    for weight in meanflow.weights:  # the interval mapping a copy of the noise mapping
        weight.assign(weights[weight.path.replace("map_interval_layer", "map_layer")])
    for weight in plain.map_layer1.weights:  # so that the two mappings at h = t sum to twice the noise mapping
        weight.assign(2.0 * weight)
    expected = ops.convert_to_numpy(plain([x, t, class_labels]))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(ops.convert_to_numpy(meanflow([x, t, t, class_labels])), expected, rtol=0, atol=1e-5)
    other = ops.convert_to_numpy(meanflow([x, t, np.array([0.0, 0.5], "float32"), class_labels]))
    assert np.abs(other - expected).max() > 1e-3  # the interval moves the output
    config = meanflow.get_config()
    assert config["interval_embedding"] and UNet.from_config(config).get_config() == config
    symbolic = [keras.KerasTensor((None, 8, 8, 2)), keras.KerasTensor((None,)), keras.KerasTensor((None,))]
    with pytest.raises(ValueError, match=r"call it on \[x, noise_labels, intervals, class_labels\]"):
        UNet(**MICRO, num_classes=3, interval_embedding=True)(symbolic)
    with pytest.raises(ValueError, match=r"received 2 inputs\. It was built with `interval_embedding=True`"):
        UNet(**MICRO, interval_embedding=True)(symbolic[:2])


def test_symbolic_build_with_labels_as_the_consistency_model_does():
    unet = UNet(**MICRO, num_classes=10)
    x, t, y = keras.KerasTensor((None, 8, 8, 2)), keras.KerasTensor((None,)), keras.KerasTensor((None,), "int32")
    assert unet([x, t, y]).shape == (None, 8, 8, 2)
    with pytest.raises(ValueError, match=r"no null class \(label_dropout=0\)"):
        UNet(**MICRO, num_classes=10)([x, t])
    with pytest.raises(ValueError, match=r"unconditional \(num_classes=0\) but received class labels"):
        UNet(**MICRO)([x, t, y])


def test_every_norm_is_the_chosen_one():
    for norm, layer_type in [("nsln", layers.NonScalingLayerNormalization), ("group", keras.layers.GroupNormalization), ("layer", keras.layers.LayerNormalization), ("rms", keras.layers.RMSNormalization), ("nsgn", keras.layers.GroupNormalization)]:
        unet = UNet(**MICRO, norm=norm)
        unet.build([(None, 8, 8, 2), (None,)])
        norms = [layer for layer in unet._flatten_layers() if "norm" in layer.name and not isinstance(layer, (layers.UNetBlock, layers.AttentionBlock))]
        assert norms and all(type(layer) is layer_type for layer in norms), (norm, {type(layer).__name__ for layer in norms})


def randomize_zero_initialized_layers(unet, seed=0):
    """Gives the zero-initialized ends of the residual branches weights, as training would."""
    rng = np.random.default_rng(seed)
    for weight in unet.weights:
        if not np.any(ops.convert_to_numpy(weight)):
            weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.05)


def test_forward_shapes_zero_init_and_noise_conditioning():
    unet = UNet(**MICRO)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 2)).astype("float32")
    labels = np.array([-1500.0, 0.0, 1000.0], "float32")
    out = ops.convert_to_numpy(unet([x, labels]))
    assert out.shape == (3, 8, 8, 2)
    assert np.all(out == 0)  # the output convolution starts at zero
    randomize_zero_initialized_layers(unet)
    out = ops.convert_to_numpy(unet([np.repeat(x[:1], 3, axis=0), labels]))
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])


def test_mixed_bfloat16_with_float32_attention(monkeypatch):
    keras.config.set_dtype_policy("mixed_bfloat16")
    unet = UNet(**MICRO)
    randomize_zero_initialized_layers(unet)
    softmax_dtypes = []
    import keras_lct.layers.core as core

    real_softmax = core.ops.softmax

    def recording_softmax(x, axis=-1):
        softmax_dtypes.append(keras.backend.standardize_dtype(x.dtype))
        return real_softmax(x, axis=axis)

    monkeypatch.setattr(core.ops, "softmax", recording_softmax)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 2)).astype("float32")
    # The plain path (torch's fused attention casts to float32 before its kernel).
    with use_fast_paths(False):
        out = unet([x, np.array([0.0, 500.0], "float32")])
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(out, "float32"))))
    assert softmax_dtypes and set(softmax_dtypes) == {"float32"}
    assert all(v.dtype == "float32" for v in unet.weights)


SAVE_ELSEWHERE = r"""
import numpy as np, keras
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam
keras.utils.set_random_seed(3)
unet = UNet(**{micro!r})
unet.build([(None, 8, 8, 2), (None,)])
for weight in unet.weights:
    if not np.any(keras.ops.convert_to_numpy(weight)):
        weight.assign(np.random.default_rng(0).normal(size=weight.shape).astype("float32") * 0.05)
x = np.random.default_rng(1).normal(size=(2, 8, 8, 2)).astype("float32")
labels = np.array([-300.0, 700.0], "float32")
np.save({expected!r}, keras.ops.convert_to_numpy(unet([x, labels])))
np.save({inputs!r}, x)
unet.save({path!r})
"""


def test_keras_file_saved_on_another_backend_loads_with_equal_outputs(tmp_path):
    other = "torch" if keras.backend.backend() == "jax" else "jax"
    files = {name: str(tmp_path / name) for name in ("unet.keras", "expected.npy", "inputs.npy")}
    code = SAVE_ELSEWHERE.format(micro=MICRO, path=files["unet.keras"], expected=files["expected.npy"], inputs=files["inputs.npy"])
    env = dict(os.environ, KERAS_BACKEND=other, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    unet = keras.models.load_model(files["unet.keras"])
    out = ops.convert_to_numpy(unet([np.load(files["inputs.npy"]), np.array([-300.0, 700.0], "float32")]))
    expected = np.load(files["expected.npy"])
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_trains_inside_the_ict_baseline_configuration():
    unet = UNet(**dict(MICRO, norm="group"))
    model = ConsistencyModel(unet, loss="pseudo_huber", diffusion_fraction=0.0, ema_decays=(0.9,))
    model.build((None, 8, 8, 2))
    model.compile(optimizer=RAdam(1e-3))
    data = np.random.default_rng(3).normal(size=(8, 8, 8, 2)).astype("float32") * 0.5
    history = model.fit(NoisePairedDataset(data, batch_size=4, ot=False), epochs=1, verbose=0, callbacks=[ExpCurriculum(2)])
    assert np.isfinite(history.history["loss"][0]) and history.history["diffusion_loss"][0] == 0.0
    before = [ops.convert_to_numpy(v) for v in unet.trainable_variables]
    model.fit(NoisePairedDataset(data, batch_size=4), epochs=1, verbose=0)
    assert any(not np.allclose(a, ops.convert_to_numpy(b)) for a, b in zip(before, unet.trainable_variables))
    assert np.all(np.isfinite(model.sample(2, steps=2, seed=0)))


def test_consistency_model_builds_a_preset_by_name():
    model = ConsistencyModel("tiny")
    model.build((None, 32, 32, 4))
    assert isinstance(model.network, UNet) and model.network.norm == "nsln"
    assert trainable_count(model.network) == pytest.approx(2.04e6, rel=5e-3)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(MICRO, img_resolution=6, channel_mult=(1, 2, 2)), "img_resolution=6 is not divisible"),
        (dict(MICRO, attn_resolutions=(3,)), "Attention resolution 3 is not in the UNet's pyramid"),
        (dict(MICRO, model_channels=48), "Attention at 96 channels"),
        (dict(MICRO, norm="batch"), "Unknown normalization 'batch'"),
        (dict(MICRO, label_dropout=0.1), "the network is unconditional"),
        (dict(MICRO, num_classes=2.5), "num_classes"),
    ],
)
def test_bad_configurations_raise_at_construction(kwargs, words):
    with pytest.raises(ValueError, match=words):
        UNet(**kwargs)


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"\(8, 8, 2\); received \(16, 16, 2\)"):
        UNet(**MICRO).build([(None, 16, 16, 2), (None,)])
    with pytest.raises(ValueError, match="Unknown UNet preset 'huge'"):
        UNet.from_preset("huge")
