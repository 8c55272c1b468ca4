"""keras_lct.vae: parity with diffusers' AutoencoderKL, the three weight layouts, fingerprints, errors.

The reference is diffusers built offline with random weights (norms and
biases randomized too, so that a wrong name mapping cannot hide behind a
default initialization). The LDM layout is written by a mapping of this file,
checked against diffusers' own LDM converter.
"""

import json
import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_lct.vae.autoencoder
from keras_lct import vae
from keras_lct.vae import VAE_PRESETS
from keras_lct.vae import AutoencoderKL
from keras_lct.vae import load_autoencoder
from layer_test_case import run_layer_test

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

# Two presets sharing layer shapes (JAX compiles each new shape once): 4 levels (f8) and 3 (f4).
CONFIGS = {"tiny": VAE_PRESETS["tiny"], "tiny_f4": VAE_PRESETS["tiny-f4"]}
IMAGE_SIZE = {"tiny": 32, "tiny_f4": 32}
TINY_F4 = CONFIGS["tiny_f4"]
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def constant_initializers(request):
    """Zeros for initial weights; `test_random_initialization_is_torch_default` keeps the real ones."""
    if request.node.originalname != "test_random_initialization_is_torch_default":
        request.getfixturevalue("zero_initializers")


def diffusers_config(arguments):
    levels = len(arguments["block_out_channels"])
    return dict(
        arguments,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )


def random_reference(arguments, seed):
    """A diffusers AutoencoderKL with every parameter random, norms and biases included."""
    torch.manual_seed(seed)
    reference = diffusers.AutoencoderKL(**diffusers_config(arguments)).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if parameter.ndim == 1:
                offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                parameter.copy_(offset + 0.2 * torch.randn_like(parameter))
    return reference


def relative_error(actual, expected):
    return float(np.abs(ops.convert_to_numpy(actual) - expected).max() / np.abs(expected).max())


def nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """{name: (diffusers model, folder saved with safetensors, folder saved with .bin)}."""
    result = {}
    for seed, (name, arguments) in enumerate(CONFIGS.items()):
        reference = random_reference(arguments, seed)
        folder = tmp_path_factory.mktemp(f"{name}_safetensors")
        reference.save_pretrained(folder)
        bin_folder = tmp_path_factory.mktemp(f"{name}_bin")
        reference.save_pretrained(bin_folder, safe_serialization=False)
        result[name] = (reference, folder, bin_folder)
    return result


def assert_matches_reference(autoencoder, reference, image_size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(2, image_size, image_size, 3)).astype("float32")
    latents = rng.normal(size=(2,) + autoencoder.latent_shape(image_size)).astype("float32")
    with torch.no_grad():
        posterior = reference.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent_dist
        decoded = reference.decode(torch.from_numpy(latents.transpose(0, 3, 1, 2))).sample
    mean, logvar = autoencoder.encode(images)
    assert relative_error(mean, nhwc(posterior.mean)) < TOLERANCE
    assert relative_error(logvar, nhwc(posterior.logvar)) < TOLERANCE
    assert relative_error(autoencoder.decode(latents), nhwc(decoded)) < TOLERANCE


@pytest.mark.parametrize("name, weights", [("tiny", "safetensors"), ("tiny", "bin"), ("tiny_f4", "safetensors")])
def test_parity_with_diffusers_folder(references, name, weights):
    reference, folder, bin_folder = references[name]
    autoencoder = load_autoencoder(folder if weights == "safetensors" else bin_folder)
    assert autoencoder.block_out_channels == CONFIGS[name]["block_out_channels"]
    assert_matches_reference(autoencoder, reference, IMAGE_SIZE[name])


def test_call_is_decode_of_the_mean_and_sampling_uses_the_given_noise(references):
    autoencoder = load_autoencoder(references["tiny_f4"][1])
    images = np.random.default_rng(1).uniform(-1, 1, size=(2, 32, 32, 3)).astype("float32")
    mean, logvar = autoencoder.encode(images)
    decoded = ops.convert_to_numpy(autoencoder.decode(mean))
    np.testing.assert_allclose(ops.convert_to_numpy(autoencoder(images)), decoded, atol=1e-6)
    # encode and decode also trace symbolically, into compiled functional models.
    inputs = keras.Input((32, 32, 3))
    compiled_mean, _ = keras.Model(inputs, autoencoder.encode(inputs)).predict_on_batch(images)
    latents = keras.Input((8, 8, 4))
    compiled_decoded = keras.Model(latents, autoencoder.decode(latents)).predict_on_batch(compiled_mean)
    np.testing.assert_allclose(compiled_mean, ops.convert_to_numpy(mean), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled_decoded, decoded, rtol=1e-5, atol=1e-5)
    noise = np.random.default_rng(2).normal(size=mean.shape).astype("float32")
    expected = ops.convert_to_numpy(mean) + np.exp(0.5 * ops.convert_to_numpy(logvar)) * noise
    np.testing.assert_allclose(ops.convert_to_numpy(autoencoder.sample_posterior(mean, logvar, noise)), expected, rtol=1e-5, atol=1e-6)


# diffusers -> LDM/CompVis names, written independently of keras_lct.vae.weights.
def to_ldm_name(name, levels):
    rules = [
        (r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m: f"{m[1]}.mid.attn_1."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", lambda m: f"encoder.down.{m[1]}.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
    ]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    leaves = {"conv_norm_out": "norm_out", "conv_shortcut": "nin_shortcut", ".group_norm.": ".norm."}
    leaves.update({".to_q.": ".q.", ".to_k.": ".k.", ".to_v.": ".v.", ".to_out.0.": ".proj_out."})
    for old, new in leaves.items():
        name = name.replace(old, new)
    return name


def ldm_state_dict(reference, levels):
    state = {}
    for name, value in reference.state_dict().items():
        ldm_name = to_ldm_name(name, levels)
        # LDM's attention projections are 1x1 convolutions.
        state[ldm_name] = value[:, :, None, None].contiguous() if ".attn_1." in ldm_name and value.ndim == 2 else value.contiguous()
    return state


def test_the_ldm_mapping_of_this_test_is_diffusers_own(references):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    reference = references["tiny"][0]
    original = reference.state_dict()
    ldm = ldm_state_dict(reference, levels=4)
    assert any(name.startswith("decoder.up.3.upsample") for name in ldm) and "encoder.mid.attn_1.q.weight" in ldm
    converted = convert_ldm_vae_checkpoint(ldm, diffusers_config(CONFIGS["tiny"]))
    assert set(converted) == set(original)
    assert all(torch.equal(converted[name], original[name]) for name in original)


class NotATensor:
    pass


def test_ldm_layout_files_load_to_the_same_weights(references, tmp_path):
    reference, folder, _ = references["tiny"]
    expected = load_autoencoder(folder).fingerprint()
    ldm = ldm_state_dict(reference, levels=4)
    full_checkpoint = {f"first_stage_model.{name}": value for name, value in ldm.items()}
    full_checkpoint["model.diffusion_model.conv_in.weight"] = torch.zeros(3, 4, 3, 3)
    full_checkpoint["cond_stage_model.transformer.embeddings.weight"] = torch.zeros(5, 2)
    files = {
        "vae.safetensors": lambda path: safetensors_torch.save_file(ldm, path),
        "sd.safetensors": lambda path: safetensors_torch.save_file(full_checkpoint, path),
        "vae.ckpt": lambda path: torch.save({"state_dict": dict(ldm, **{"loss.logvar": torch.zeros(())}), "global_step": 7}, path),
        "sd.ckpt": lambda path: torch.save({"state_dict": full_checkpoint}, path),
    }
    for file_name, write in files.items():
        write(str(tmp_path / file_name))
        autoencoder = load_autoencoder(tmp_path / file_name, preset="tiny")
        assert autoencoder.fingerprint() == expected, file_name
    assert_matches_reference(autoencoder, reference, 32, seed=3)
    torch.save({"state_dict": ldm, "callback": NotATensor()}, str(tmp_path / "pickled.ckpt"))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_autoencoder(tmp_path / "pickled.ckpt", preset="tiny")


def test_old_attention_names_fp16_folders_and_bfloat16_files(references, tmp_path):
    reference, folder, _ = references["tiny_f4"]
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for name, value in reference.state_dict().items():
        for new, old in old_names.items():
            name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        state[name] = value.contiguous()
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in state
    old_folder = tmp_path / "old"
    old_folder.mkdir()
    (old_folder / "config.json").write_text((folder / "config.json").read_text())
    safetensors_torch.save_file(state, str(old_folder / "diffusion_pytorch_model.safetensors"))
    assert load_autoencoder(old_folder).fingerprint() == load_autoencoder(folder).fingerprint()

    fp16_folder = tmp_path / "fp16"
    fp16_folder.mkdir()
    (fp16_folder / "config.json").write_text((folder / "config.json").read_text())
    safetensors_torch.save_file({k: v.half() for k, v in state.items()}, str(fp16_folder / "diffusion_pytorch_model.fp16.safetensors"))
    rounded = tmp_path / "rounded_fp16.safetensors"
    safetensors_torch.save_file({k: v.half().float() for k, v in state.items()}, str(rounded))
    assert load_autoencoder(fp16_folder).fingerprint() == load_autoencoder(rounded, preset=TINY_F4).fingerprint()

    bfloat16, rounded = tmp_path / "bf16.safetensors", tmp_path / "rounded_bf16.safetensors"
    safetensors_torch.save_file({k: v.bfloat16() for k, v in state.items()}, str(bfloat16))
    safetensors_torch.save_file({k: v.bfloat16().float() for k, v in state.items()}, str(rounded))
    assert load_autoencoder(bfloat16, preset=TINY_F4).fingerprint() == load_autoencoder(rounded, preset=TINY_F4).fingerprint()


def test_mismatched_weights_raise_one_error_listing_every_problem(references, tmp_path):
    state = {k: v.contiguous() for k, v in references["tiny_f4"][0].state_dict().items()}
    del state["decoder.conv_out.bias"]
    state["encoder.extra.weight"] = torch.zeros(2)
    state["encoder.conv_in.weight"] = torch.zeros(16, 3, 3, 3)
    path = str(tmp_path / "broken.safetensors")
    safetensors_torch.save_file(state, path)
    with pytest.raises(ValueError) as error:
        load_autoencoder(path, preset=TINY_F4)
    message = str(error.value)
    assert "1 missing key (decoder.conv_out.bias)" in message
    assert "1 unexpected key (encoder.extra.weight)" in message
    assert "1 mis-shaped key (encoder.conv_in.weight (16, 3, 3, 3) (expected (32, 3, 3, 3)))" in message
    assert "'block_out_channels': (32, 64, 64)" in message
    # The right file with the wrong preset: every key of the tiny preset's extra levels is missing.
    with pytest.raises(ValueError, match=r"preset 'tiny'.*\d+ missing keys \(.*more\)"):
        load_autoencoder(references["tiny_f4"][1] / "diffusion_pytorch_model.safetensors", preset="tiny")


def test_missing_files_and_unsupported_configs(references, tmp_path):
    help_text = r"config.json and\s+diffusion_pytorch_model.safetensors.*huggingface.co/stabilityai/sd-vae-ft-ema"
    with pytest.raises(FileNotFoundError, match=help_text):
        load_autoencoder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_autoencoder(empty)
    (empty / "config.json").write_text((references["tiny_f4"][1] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="none of diffusion_pytorch_model.safetensors"):
        load_autoencoder(empty)
    with pytest.raises(ValueError, match="applies to single weight files only"):
        load_autoencoder(references["tiny_f4"][1], preset="tiny")
    with pytest.raises(ValueError, match="Unknown VAE preset 'sd3'. Available: sd-vae-ft-ema, sd-vae-ft-mse, tiny"):
        load_autoencoder(references["tiny_f4"][1] / "diffusion_pytorch_model.safetensors", preset="sd3")
    config = json.loads((references["tiny_f4"][1] / "config.json").read_text())
    for key, value, words in [
        ("act_fn", "gelu", "act_fn='gelu'"),
        ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "down_block_types="),
        ("use_quant_conv", False, "use_quant_conv=False"),
    ]:
        with pytest.raises(ValueError, match=words):
            vae.config_from_diffusers(dict(config, **{key: value}))


def test_fingerprint_and_keras_file_round_trip(references, tmp_path):
    folder = references["tiny_f4"][1]
    autoencoder = load_autoencoder(folder)
    fingerprint = autoencoder.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint) and load_autoencoder(folder).fingerprint() == fingerprint
    images = np.random.default_rng(4).uniform(-1, 1, size=(2, 32, 32, 3)).astype("float32")
    outputs = ops.convert_to_numpy(autoencoder(images))
    path = str(tmp_path / "vae.keras")
    autoencoder.save(path)
    for restored in (keras.models.load_model(path), load_autoencoder(path)):
        assert type(restored) is AutoencoderKL and restored.fingerprint() == fingerprint
        np.testing.assert_allclose(ops.convert_to_numpy(restored(images)), outputs, rtol=1e-5, atol=1e-6)
    kernel = autoencoder.decoder.conv_out.kernel
    kernel.assign(ops.convert_to_numpy(kernel) + np.float32(1e-3) * (np.arange(kernel.shape[-1]) == 0))
    assert autoencoder.fingerprint() != fingerprint
    rescaled = AutoencoderKL.from_config(dict(restored.get_config(), scaling_factor=0.13025))
    rescaled.set_weights(restored.get_weights())
    assert rescaled.fingerprint() != fingerprint


# The fingerprint of tiny-f4 with the weights of `deterministic_weights`, the same on every backend.
TINY_F4_FINGERPRINT = "51d7497f447fa6e9ffff4639434ca8001421176be3a1f6a9a249e015365a8d10"


def deterministic_weights(autoencoder):
    rng = np.random.default_rng(0)
    for weight in autoencoder.weights:
        weight.assign(rng.uniform(-0.1, 0.1, size=weight.shape).astype("float32"))
    return autoencoder


def test_fingerprint_is_the_same_on_every_backend():
    assert deterministic_weights(AutoencoderKL.from_preset("tiny-f4")).fingerprint() == TINY_F4_FINGERPRINT


def test_encode_and_decode_reject_wrong_shapes():
    autoencoder = AutoencoderKL.from_preset("tiny")
    with pytest.raises(ValueError, match=r"rank 3, shape \(64, 64, 3\)"):
        autoencoder.encode(np.zeros((64, 64, 3), "float32"))
    with pytest.raises(ValueError, match=r"3 channels, channels_last.*received shape \(1, 3, 64, 64\)"):
        autoencoder.encode(np.zeros((1, 3, 64, 64), "float32"))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 8.*received 60x64"):
        autoencoder.encode(np.zeros((1, 60, 64, 3), "float32"))
    with pytest.raises(ValueError, match=r"latents with 4 channels"):
        autoencoder.decode(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 8"):
        autoencoder.latent_shape(100)


def test_presets_shapes_and_bad_arguments():
    assert VAE_PRESETS["sd-vae-ft-ema"] == VAE_PRESETS["sd-vae-ft-mse"]
    tiny = AutoencoderKL.from_preset("tiny")
    assert tiny.downsampling_factor == 8 and tiny.latent_shape(64) == (8, 8, 4)
    mean, logvar = tiny.encode(np.zeros((2, 64, 64, 3), "float32"))
    assert tuple(mean.shape) == tuple(logvar.shape) == (2, 8, 8, 4)
    assert tuple(tiny.decode(mean).shape) == (2, 64, 64, 3)
    f4 = AutoencoderKL.from_preset("tiny-f4")
    assert f4.downsampling_factor == 4 and f4.latent_shape((64, 32)) == (16, 8, 4)
    assert AutoencoderKL.from_config(tiny.get_config()).get_config() == tiny.get_config()
    with pytest.raises(ValueError, match="Unknown VAE preset 'big'. Available: sd-vae-ft-ema, sd-vae-ft-mse, tiny, tiny-f4"):
        AutoencoderKL.from_preset("big")
    with pytest.raises(ValueError, match="divisible by norm_num_groups=32"):
        AutoencoderKL(block_out_channels=(48, 64))


def test_sd_vae_ft_ema_has_the_parameters_of_diffusers():
    with torch.device("meta"):
        reference = diffusers.AutoencoderKL(**diffusers_config(VAE_PRESETS["sd-vae-ft-ema"]))
    expected = sum(parameter.numel() for parameter in reference.parameters())
    assert expected == 83_653_863
    autoencoder = AutoencoderKL.from_preset("sd-vae-ft-ema")
    assert autoencoder.count_params() == expected
    assert len(vae.weights.diffusers_variables(autoencoder)) == len(reference.state_dict())


@pytest.mark.parametrize(
    "layer_cls, kwargs, shape, output_shape, trainable",
    [
        # norm1, conv1, norm2, conv2, conv_shortcut: 2 weights each
        (vae.VAEGroupNorm, {"groups": 4}, (2, 8, 8, 16), (2, 8, 8, 16), 2),
        (vae.VAEResnetBlock, {"in_channels": 8, "out_channels": 16, "norm_num_groups": 4}, (2, 8, 8, 8), (2, 8, 8, 16), 10),
        (vae.VAEAttention, {"channels": 16, "norm_num_groups": 4}, (2, 4, 4, 16), (2, 4, 4, 16), 10),
        (vae.VAEResample, {"channels": 8, "mode": "down"}, (2, 8, 8, 8), (2, 4, 4, 8), 2),
        (vae.VAEResample, {"channels": 8, "mode": "up"}, (2, 4, 4, 8), (2, 8, 8, 8), 2),
    ],
)
def test_layer_contract(layer_cls, kwargs, shape, output_shape, trainable, tmp_path):
    run_layer_test(layer_cls, kwargs, [shape], output_shape, trainable, 0, tmp_path, run_training_check=layer_cls is vae.VAEAttention)


def test_group_norm_statistics_are_float32_accurate_on_large_maps():
    # One float32 reduction over a 256x256 group loses ~1e-4 on TensorFlow's CPU kernels.
    x = (np.random.default_rng(5).normal(size=(1, 256, 256, 16)) * 0.7 + 0.3).astype("float32")
    grouped = x.astype("float64").reshape(1, 256, 256, 2, 8)
    expected = (grouped - grouped.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(grouped.var(axis=(1, 2, 4), keepdims=True) + 1e-6)
    assert relative_error(vae.VAEGroupNorm(2)(x), expected.reshape(x.shape)) < 1e-5


def test_random_initialization_is_torch_default():
    layer = vae.VAEResample(8, "down")
    layer.build((None, 8, 8, 8))
    kernel, bias = (ops.convert_to_numpy(weight) for weight in (layer.conv.kernel, layer.conv.bias))
    bound = 1 / np.sqrt(8 * 9)  # torch's Conv2d: uniform in +-1/sqrt(fan_in), weights and biases
    assert np.abs(kernel).max() <= bound and np.std(kernel) > 0.9 * bound / np.sqrt(3)
    assert np.abs(bias).max() <= bound and np.std(bias) > 0
