"""Loading Stable Diffusion VAE weights from local files into `AutoencoderKL`.

Three layouts are read: a diffusers model folder (`config.json` and
`diffusion_pytorch_model.safetensors` / `.bin`), a single weight file in
diffusers' or the original LDM/CompVis naming (a VAE alone or a full SD
checkpoint, `first_stage_model.` prefix), and a `.keras` file. Weight names
go through one table: LDM names and diffusers' old attention names are
renamed to current diffusers names first, then every diffusers layer is
assigned to its Keras layer with the layout change (torch conv (O, I, kh, kw)
-> (kh, kw, I, O), Linear (O, I) -> (I, O), GroupNorm weight/bias -> gamma/beta).
Nothing is downloaded.
"""

import json
import os
import pickle
import re

import numpy as np

from keras_lct.saving import load_model
from keras_lct.vae.autoencoder import VAE_PRESETS
from keras_lct.vae.autoencoder import AutoencoderKL
from keras_lct.vae.autoencoder import VAEGroupNorm

DEFAULT_PRESET = "sd-vae-ft-ema"
DIFFUSERS_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
FILES_HELP = (
    "load_autoencoder reads local files only, one of: (1) a diffusers model folder holding config.json and "
    "diffusion_pytorch_model.safetensors (or .bin, or their .fp16 variants) - for Stable Diffusion's VAE, download "
    "both files of https://huggingface.co/stabilityai/sd-vae-ft-ema (or sd-vae-ft-mse) into one folder; a pipeline "
    "folder with a vae/ subfolder works too; (2) one weight file in diffusers' or the original LDM/CompVis layout "
    "(.safetensors, .bin or .ckpt), e.g. vae-ft-ema-560000-ema-pruned.safetensors of "
    "https://huggingface.co/stabilityai/sd-vae-ft-ema-original or a full Stable Diffusion checkpoint, with "
    "`preset` naming its architecture (default 'sd-vae-ft-ema'); (3) a .keras file saved from AutoencoderKL."
)

# Keys of a full SD checkpoint's VAE, and those of LDM training state that are no VAE weights.
_CHECKPOINT_PREFIXES = ("first_stage_model.", "vae.")
_TRAINING_ONLY_PREFIX = "loss."
_LDM_MARKERS = ("encoder.down.", "encoder.mid.", "decoder.up.", "decoder.mid.")

_IMPLEMENTED = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}
# diffusers' AutoencoderKL defaults, for keys a config.json leaves out.
_DIFFUSERS_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(64,),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=32,
    scaling_factor=0.18215,
)


def load_autoencoder(path, preset=None):
    """An `AutoencoderKL` with the weights of a local diffusers folder, weight file or `.keras` file.

    Args:
        path: a diffusers model folder (config.json + diffusion_pytorch_model
            .safetensors/.bin/.fp16 variants; or a pipeline folder with a vae/
            subfolder), a single `.safetensors` / `.bin` / `.ckpt` file in
            diffusers' or LDM's naming (a full SD checkpoint's
            `first_stage_model.` weights are taken, other keys ignored), or a
            `.keras` file saved from `AutoencoderKL`.
        preset: for a single weight file only: the architecture, a name of
            `VAE_PRESETS` (default `"sd-vae-ft-ema"`) or a dict of
            `AutoencoderKL` arguments. Folders and `.keras` files carry theirs.

    Returns:
        a built `AutoencoderKL`.

    Raises:
        FileNotFoundError: the path, or a folder's config.json or weights, is missing.
        ValueError: an unsupported config, file type or preset, or weights
            that do not fit the config (missing, unexpected and mis-shaped
            keys listed in one message).
        ImportError: `safetensors` or `torch` is needed to read the file and is not installed.

    Example:
    ```python
    vae = load_autoencoder("weights/sd-vae-ft-ema")                          # diffusers folder
    vae = load_autoencoder("vae-ft-ema-560000-ema-pruned.safetensors")       # LDM layout
    vae = load_autoencoder("v1-5-pruned-emaonly.safetensors")                # full SD checkpoint
    ```
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or folder: {path!r}. {FILES_HELP}")
    if os.path.isdir(path):
        _refuse_preset(preset, path, "a diffusers folder carries its config.json")
        config_path, weights_path = _diffusers_folder_files(path)
        with open(config_path) as file:
            config = config_from_diffusers(json.load(file))
        expected = f"the config of {config_path} {config}"
    elif path.endswith(".keras"):
        _refuse_preset(preset, path, "a .keras file carries its config")
        autoencoder = load_model(path)
        if not isinstance(autoencoder, AutoencoderKL):
            raise ValueError(f"{path!r} holds a {type(autoencoder).__name__}, not an AutoencoderKL.")
        return autoencoder
    elif path.endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES):
        weights_path = path
        config, expected = _preset_config(DEFAULT_PRESET if preset is None else preset)
    else:
        raise ValueError(
            f"Cannot tell the format of {path!r}: expected a folder or a file ending in "
            f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES + ('.keras',))}. {FILES_HELP}"
        )
    autoencoder = AutoencoderKL(**config)
    set_diffusers_weights(autoencoder, read_state_dict(weights_path), source=repr(weights_path), expected=expected)
    return autoencoder


def config_from_diffusers(config):
    """`AutoencoderKL` arguments from a diffusers `config.json` dict (missing keys: diffusers' defaults).

    Raises:
        ValueError: for a model this module does not implement (another class,
            block type or activation, no quant convs, no mid attention, a
            latent shift or per-channel statistics).
    """
    for key, implemented in _IMPLEMENTED.items():
        if key in config and config[key] != implemented:
            raise ValueError(
                f"This config.json sets {key}={config[key]!r}; keras_lct.vae.AutoencoderKL implements "
                f"{key}={implemented!r} only (the Stable Diffusion 1.x/2.x KL-f8 VAE). Config: {config}"
            )
    arguments = {key: config.get(key, default) for key, default in _DIFFUSERS_DEFAULTS.items()}
    levels = len(arguments["block_out_channels"])
    for key, block_type in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        block_types = list(config.get(key, [block_type] * levels))
        if block_types != [block_type] * levels:
            raise ValueError(
                f"This config.json has {key}={block_types}; keras_lct.vae.AutoencoderKL implements "
                f"{levels} x {block_type!r} (one per entry of block_out_channels) only. Config: {config}"
            )
    if isinstance(arguments["sample_size"], (list, tuple)):
        arguments["sample_size"] = max(arguments["sample_size"])
    arguments["block_out_channels"] = tuple(arguments["block_out_channels"])
    return arguments


def read_state_dict(path):
    """`{name: float32 NumPy array}` of a `.safetensors` or torch (`.bin`, `.ckpt`) file, names as stored.

    A torch checkpoint's `state_dict` entry is taken when present. fp16 and
    bf16 tensors are converted to float32.
    """
    path = os.fspath(path)
    if path.endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path)
    return _read_torch(path)


def set_diffusers_weights(autoencoder, state_dict, source="the state dict", expected=None):
    """Assigns a state dict in diffusers' or LDM's naming (torch layouts) to a built `AutoencoderKL`.

    Every weight is checked before any is assigned: names and shapes must
    match the model exactly (keys of a full SD checkpoint outside its VAE and
    LDM's training-only `loss.` keys are ignored).

    Raises:
        ValueError: naming the first few missing, unexpected and mis-shaped
            keys with their counts, and the config that was expected.
    """
    weights, origin = diffusers_names(state_dict, levels=len(autoencoder.block_out_channels))
    targets = diffusers_variables(autoencoder)
    missing = [name for name in targets if name not in weights]
    unexpected = [origin[name] for name in weights if name not in targets]
    misshaped, assignments = [], []
    for name, (variable, to_keras) in targets.items():
        if name not in weights:
            continue
        value = to_keras(weights[name])
        if tuple(value.shape) != tuple(variable.shape):
            misshaped.append(f"{origin[name]} {tuple(weights[name].shape)} (expected {_torch_shape(name, variable)})")
        assignments.append((variable, value))
    if missing or unexpected or misshaped:
        expected = expected or f"AutoencoderKL config {_architecture(autoencoder)}"
        problems = [
            _listing("missing", missing),
            _listing("unexpected", unexpected),
            _listing("mis-shaped", misshaped),
        ]
        raise ValueError(
            f"The weights of {source} do not fit {expected}: {'; '.join(p for p in problems if p)}. "
            "Missing keys are named in diffusers' layout. For a single weight file, pass the `preset` "
            "(a name of VAE_PRESETS or a dict of AutoencoderKL arguments) it was trained with."
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))


def diffusers_names(state_dict, levels):
    """Renames a VAE state dict to current diffusers names.

    Strips a full checkpoint's `first_stage_model.` (or `vae.`) prefix and
    drops the other keys; renames LDM names (`encoder.down.0.block.1`,
    `mid.attn_1.q`, `nin_shortcut`, `norm_out`, decoder `up.{i}` numbered from
    the highest resolution) and diffusers' old attention names
    (`query/key/value/proj_attn`); squeezes LDM's 1x1-conv attention weights
    to Linear ones.

    Args:
        state_dict: `{name: array}`.
        levels: `len(block_out_channels)`, to reverse LDM's decoder numbering.

    Returns:
        `(weights, origin)`: `{diffusers name: array}` and `{diffusers name: name in the file}`.
    """
    state_dict = _vae_keys(state_dict)
    ldm = any(name.startswith(_LDM_MARKERS) for name in state_dict)
    weights, origin = {}, {}
    for name, value in state_dict.items():
        new_name = _ldm_to_diffusers(name, levels) if ldm else name
        new_name = _new_attention_name(new_name)
        if ".attentions." in new_name and new_name.endswith(".weight") and np.ndim(value) == 4:
            value = np.reshape(value, value.shape[:2])
        weights[new_name] = value
        origin[new_name] = name
    return weights, origin


def diffusers_variables(autoencoder):
    """`{diffusers weight name: (Keras variable, torch-to-Keras layout function)}` of a built `AutoencoderKL`."""
    variables = {}
    for prefix, layer in _diffusers_layers(autoencoder).items():
        if isinstance(layer, VAEGroupNorm):
            variables[f"{prefix}.weight"] = (layer.gamma, _identity)
            variables[f"{prefix}.bias"] = (layer.beta, _identity)
        else:
            variables[f"{prefix}.weight"] = (layer.kernel, _conv_layout if layer.kernel.ndim == 4 else _linear_layout)
            variables[f"{prefix}.bias"] = (layer.bias, _identity)
    return variables


def _diffusers_layers(autoencoder):
    """`{diffusers module path: Keras layer}` for every layer that holds weights."""
    layers = {"quant_conv": autoencoder.quant_conv, "post_quant_conv": autoencoder.post_quant_conv}
    for part, blocks, resamplers in (("encoder", "down_blocks", "downsamplers"), ("decoder", "up_blocks", "upsamplers")):
        coder = getattr(autoencoder, part)
        layers[f"{part}.conv_in"] = coder.conv_in
        for index, level in enumerate(coder.levels):
            for block, resnet in enumerate(level.resnets):
                layers.update(_resnet_layers(f"{part}.{blocks}.{index}.resnets.{block}", resnet))
            if level.resampler is not None:
                layers[f"{part}.{blocks}.{index}.{resamplers}.0.conv"] = level.resampler.conv
        layers.update(_resnet_layers(f"{part}.mid_block.resnets.0", coder.mid.resnet_1))
        layers.update(_resnet_layers(f"{part}.mid_block.resnets.1", coder.mid.resnet_2))
        attention = coder.mid.attention
        for name in ("group_norm", "to_q", "to_k", "to_v"):
            layers[f"{part}.mid_block.attentions.0.{name}"] = getattr(attention, name)
        layers[f"{part}.mid_block.attentions.0.to_out.0"] = attention.to_out
        layers[f"{part}.conv_norm_out"] = coder.norm_out
        layers[f"{part}.conv_out"] = coder.conv_out
    return layers


def _resnet_layers(prefix, resnet):
    names = ("norm1", "conv1", "norm2", "conv2") + (("conv_shortcut",) if resnet.conv_shortcut is not None else ())
    return {f"{prefix}.{name}": getattr(resnet, name) for name in names}


def _identity(value):
    return value


def _conv_layout(value):
    return np.transpose(value, (2, 3, 1, 0)) if np.ndim(value) == 4 else value


def _linear_layout(value):
    return np.transpose(value) if np.ndim(value) == 2 else value


def _torch_shape(name, variable):
    shape = tuple(variable.shape)
    if name.endswith(".weight") and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1] if name.endswith(".weight") and len(shape) == 2 else shape


# LDM (CompVis) -> diffusers renames; decoder levels are numbered from the other end.
_LDM_RENAMES = (
    (r"^(encoder|decoder)\.mid\.block_([12])\.", lambda m, levels: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", lambda m, levels: f"{m[1]}.mid_block.attentions.0."),
    (r"^encoder\.down\.(\d+)\.block\.", lambda m, levels: f"encoder.down_blocks.{m[1]}.resnets."),
    (r"^encoder\.down\.(\d+)\.downsample\.", lambda m, levels: f"encoder.down_blocks.{m[1]}.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.block\.", lambda m, levels: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets."),
    (r"^decoder\.up\.(\d+)\.upsample\.", lambda m, levels: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0."),
    (r"^(encoder|decoder)\.norm_out\.", lambda m, levels: f"{m[1]}.conv_norm_out."),
)
_LDM_LEAF_RENAMES = {"nin_shortcut": "conv_shortcut"}
_LDM_ATTENTION_RENAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OLD_ATTENTION_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _ldm_to_diffusers(name, levels):
    for pattern, replacement in _LDM_RENAMES:
        match = re.match(pattern, name)
        if match:
            name = replacement(match, levels) + name[match.end() :]
            break
    module, _, leaf = name.rpartition(".")
    parent, _, last = module.rpartition(".")
    renames = _LDM_ATTENTION_RENAMES if ".attentions." in name else _LDM_LEAF_RENAMES
    return f"{parent}.{renames.get(last, last)}.{leaf}" if last in renames else name


def _new_attention_name(name):
    module, _, leaf = name.rpartition(".")
    parent, _, last = module.rpartition(".")
    if ".attentions." in name and last in _OLD_ATTENTION_RENAMES:
        return f"{parent}.{_OLD_ATTENTION_RENAMES[last]}.{leaf}"
    return name


def _vae_keys(state_dict):
    for prefix in _CHECKPOINT_PREFIXES:
        if any(name.startswith(prefix) for name in state_dict):
            return {name[len(prefix) :]: value for name, value in state_dict.items() if name.startswith(prefix)}
    return {name: value for name, value in state_dict.items() if not name.startswith(_TRAINING_ONLY_PREFIX)}


def _diffusers_folder_files(path):
    folder = path
    if not os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(path, "vae", "config.json")):
        folder = os.path.join(path, "vae")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"The folder {path!r} has no config.json (nor vae/config.json). {FILES_HELP}")
    for name in DIFFUSERS_WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return config_path, os.path.join(folder, name)
    raise FileNotFoundError(
        f"The folder {folder!r} has config.json but none of {', '.join(DIFFUSERS_WEIGHT_FILES)}. {FILES_HELP}"
    )


def _preset_config(preset):
    if isinstance(preset, dict):
        config = dict(preset)
        return config, f"AutoencoderKL config {config}"
    if preset not in VAE_PRESETS:
        raise ValueError(f"Unknown VAE preset {preset!r}. Available: {', '.join(VAE_PRESETS)}; or pass a dict of AutoencoderKL arguments.")
    return dict(VAE_PRESETS[preset]), f"preset {preset!r} {VAE_PRESETS[preset]}"


def _refuse_preset(preset, path, reason):
    if preset is not None:
        raise ValueError(f"`preset` applies to single weight files only; {path!r} is not one ({reason}).")


def _architecture(autoencoder):
    config = autoencoder.get_config()
    return {key: config[key] for key in VAE_PRESETS[DEFAULT_PRESET]}


def _listing(kind, names, shown=5):
    if not names:
        return ""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return f"{len(names)} {kind} key{'s' if len(names) > 1 else ''} ({', '.join(names[:shown])}{more})"


def _read_safetensors(path):
    try:
        from safetensors import safe_open
    except ImportError as error:
        raise ImportError(f"Reading {path!r} needs the safetensors package: pip install safetensors.") from error
    with open(path, "rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_size))
    state_dict = {}
    with safe_open(path, framework="numpy") as file:
        for name in file.keys():
            if header[name]["dtype"] == "BF16":
                state_dict[name] = _read_bfloat16(path, 8 + header_size, header[name])
            else:
                state_dict[name] = np.asarray(file.get_tensor(name), dtype=np.float32)
    return state_dict


def _read_bfloat16(path, data_start, entry):
    """A bf16 tensor as float32, from its raw bytes (safetensors' NumPy reader has no bfloat16)."""
    begin, end = entry["data_offsets"]
    with open(path, "rb") as file:
        file.seek(data_start + begin)
        raw = np.frombuffer(file.read(end - begin), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


def _read_torch(path):
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"Reading {path!r} (a torch pickle) needs torch: pip install torch, or use the .safetensors "
            "version of the weights."
        ) from error
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path!r} holds Python objects besides tensors (e.g. a training checkpoint), which "
            "torch.load(weights_only=True) refuses to unpickle. Use the .safetensors version of the "
            "weights, or save just its state_dict from a trusted session."
        ) from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    return {name: value.detach().float().numpy() for name, value in checkpoint.items() if torch.is_tensor(value)}
