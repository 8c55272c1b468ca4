"""Golden values of the authors' DiT and UNet, for tests/test_dit.py and tests/test_unet.py.

Runs THEIR networks (github.com/quandao10/LCT, AGPL-3.0): `models/network_dit.py`
and `models/network_karras.py` are read from a local git mirror at fixed
revisions into a temporary folder and imported from there; nothing of theirs
is copied into keras-lct, only the numbers they produce:

- `dit_golden.json`: the revisions, the small configurations below, and the
  trainable parameter counts of their DiT presets (S/2 ... XL/2; Meta's DiT of
  branch `ssl_ot` conditional and unconditional, and `master`'s NsLN DiT) and
  of their DhariwalUNet at keras-lct's UNet presets, unconditional and with
  labels;
- `dit_golden.npz`: for each small configuration, their state_dict (every
  trainable weight random, the zero-initialized ones too, rounded to float16
  to keep the file small), their fixed position embedding, the shared inputs
  (x channels_last, two sets of noise labels, the class labels) and their
  outputs (channels_last).

Their modules import what they never run here; at import only, stubs stand in
for: `flash_attn` and `master`'s `models.multihead_flashdiff_2` / `models.rotary`
(other block types), the torchvision names timm reads (`InterpolationMode` a
real Enum), and EDM's `torch_utils.persistence` (pickling support).

Rerun (from the repository root; torch from the project's .venv, timm and
einops in a scratch folder, never in .venv):

    .venv/bin/pip install --no-deps --target /tmp/lct-scratch timm einops
    .venv/bin/python tests/golden/make_dit_golden.py \\
        --mirror /work/.mirror/quandao10+LCT/repo --scratch /tmp/lct-scratch

It takes ~1 minute on a CPU (the big presets are built on torch's `meta`
device: shapes without memory).
"""

import argparse
import contextlib
import enum
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# Meta's DiT on branch ssl_ot: 63e5adf has `uncond_network` (no label embedder); from d9d8ff0 on,
# forward() embeds the labels it is given (63e5adf replaces every label by the null class).
SSL_OT_UNCONDITIONAL = "63e5adf"
SSL_OT_CONDITIONAL = "d9d8ff0"
MASTER = "34661b9"  # the head of branch master
UNET_BRANCH = "5e7d492"  # the head of branch ot (the DhariwalUNet of the paper's runs)

SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, mlp_ratio=4.0,
             learn_sigma=False)
NUM_CLASSES = 10
# Each small configuration: the revision, their constructor's extra arguments, keras-lct's DiT arguments.
CONFIGS = {
    "ssl_ot_unconditional": (SSL_OT_UNCONDITIONAL, dict(uncond_network=True), dict(norm="layer")),
    "ssl_ot_conditional": (
        SSL_OT_CONDITIONAL,
        dict(num_classes=NUM_CLASSES, class_dropout_prob=0.1),
        dict(norm="layer", num_classes=NUM_CLASSES, label_dropout=0.1),
    ),
    "master_nsln": (
        MASTER,
        dict(num_classes=NUM_CLASSES, class_dropout_prob=0.1, no_scale=True, linear_act="gelu"),
        dict(norm="nsln", num_classes=NUM_CLASSES, label_dropout=0.1),
    ),
    "master_layer": (
        MASTER,
        dict(num_classes=NUM_CLASSES, class_dropout_prob=0.1, no_scale=False, linear_act="gelu"),
        dict(norm="layer", qk_norm=True, epsilon=1e-5, num_classes=NUM_CLASSES, label_dropout=0.1),
    ),
}
# Noise labels (c_noise = 250 ln sigma) near sigma = 1, where float32 holds the timestep embedding's angles
# c_noise f_j to ~1e-7; and across the whole range sigma in [0.002, 80], where one float32 rounding of an angle
# near 1500 is ~6e-5 (their frequencies exp(-ln(1e4) j / 128) and keras-lct's (1e-4)^(j / 128) differ in the
# last bit for most j). Class labels with the null class NUM_CLASSES in the middle.
NOISE_LABELS = np.array([-7.3, 0.41, 5.2], np.float32)
FULL_RANGE_NOISE_LABELS = np.array([-1553.7, 3.25, 1095.5], np.float32)
CLASS_LABELS = np.array([3, NUM_CLASSES, 0], np.int64)

DIT_PRESETS = ("DiT-S/2", "DiT-S/4", "DiT-B/2", "DiT-B/4", "DiT-L/2", "DiT-XL/2")  # keras-lct's names are theirs
DIT_COUNT_VARIANTS = {
    "ssl_ot_conditional": (SSL_OT_UNCONDITIONAL, dict(num_classes=1000, class_dropout_prob=0.1)),
    "ssl_ot_unconditional": (SSL_OT_UNCONDITIONAL, dict(uncond_network=True)),
    "master_nsln_conditional": (MASTER, dict(num_classes=1000, class_dropout_prob=0.1, no_scale=True,
                                             linear_act="gelu")),
}
# keras-lct's UNET_PRESETS, as the authors' DhariwalUNet arguments.
UNET_PRESETS = {
    "celeba256": dict(model_channels=128, channel_mult=(1, 2, 3, 4), num_blocks=4, attn_resolutions=(16, 8)),
    "small": dict(model_channels=64, channel_mult=(1, 2, 3, 4), num_blocks=2, attn_resolutions=(16, 8)),
    "tiny": dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,)),
    "smoke": dict(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=()),
}
UNET_NORMS = {"nsln": "non-scaling-layer-norm", "group": "group-norm"}
UNET_LABEL_DIMS = (0, 1000)


class _Placeholder:
    """Any name a stubbed module is asked for: a class that fails if it is ever used."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("a stubbed import was used: the golden values would not be the authors' network")


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "InterpolationMode":
            return _InterpolationMode
        return type(name, (_Placeholder,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `prefixes` (and their submodules) as stub modules."""

    def __init__(self, prefixes):
        self.prefixes = prefixes

    def find_spec(self, fullname, path, target=None):
        if any(fullname == prefix or fullname.startswith(prefix + ".") for prefix in self.prefixes):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def extract(mirror, revision, path, folder):
    """`path` at `revision` of the mirror, written under `folder`; returns the file's path."""
    source = subprocess.run(["git", "-C", mirror, "show", f"{revision}:{path}"], check=True, capture_output=True).stdout
    target = os.path.join(folder, revision, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as file:
        file.write(source)
    return target


def import_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(mirror, revision):
    return subprocess.run(["git", "-C", mirror, "rev-parse", revision], check=True, capture_output=True,
                          text=True).stdout.strip()


def trainable_count(module):
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


def randomize(model, rng):
    """Every trainable weight random (the zero-initialized ones too), rounded to float16; returns them as arrays."""
    import torch

    weights = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        shape = tuple(parameter.shape)
        if name.endswith("embedding_table.weight"):
            value = rng.normal(size=shape)
        elif len(shape) >= 2:  # a linear layer or the patch convolution: outputs of order 1
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))
        elif name.endswith("norm.weight"):  # a qk-norm's scale
            value = 1.0 + 0.2 * rng.normal(size=shape)
        else:
            value = 0.5 * rng.normal(size=shape)
        value = value.astype(np.float16)
        with torch.no_grad():
            parameter.copy_(torch.from_numpy(value.astype(np.float32)))
        weights[name] = value
    return weights


def dit_goldens(modules, arrays):
    import torch

    rng = np.random.default_rng(2025)
    x = rng.normal(size=(len(NOISE_LABELS), SMALL["in_channels"], SMALL["input_size"], SMALL["input_size"]))
    x = x.astype(np.float32)
    arrays["x"] = x.transpose(0, 2, 3, 1)
    arrays["noise_labels"] = NOISE_LABELS
    arrays["full_range_noise_labels"] = FULL_RANGE_NOISE_LABELS
    arrays["class_labels"] = CLASS_LABELS.astype(np.int32)
    configs = {}
    for name, (revision, theirs, ours) in CONFIGS.items():
        torch.manual_seed(0)
        model = modules[revision].DiT(**SMALL, **theirs).eval()
        for key, value in randomize(model, rng).items():
            arrays[f"{name}/weights/{key}"] = value
        labels = None if "uncond_network" in theirs else torch.from_numpy(CLASS_LABELS)
        with torch.no_grad():
            output = model(torch.from_numpy(x), torch.from_numpy(NOISE_LABELS), labels)
            full_range = model(torch.from_numpy(x), torch.from_numpy(FULL_RANGE_NOISE_LABELS), labels)
        arrays[f"{name}/output"] = output.numpy().transpose(0, 2, 3, 1)
        arrays[f"{name}/full_range_output"] = full_range.numpy().transpose(0, 2, 3, 1)
        arrays[f"{name}/pos_embed"] = model.pos_embed.detach().numpy()[0]
        configs[name] = dict(revision=revision, theirs=dict(SMALL, **theirs), ours=ours,
                             output_max_abs=float(np.abs(output.numpy()).max()))
        print(f"{name}: output max |value| {configs[name]['output_max_abs']:.3f}")
    return configs


def dit_counts(modules):
    import torch

    counts = {}
    for variant, (revision, kwargs) in DIT_COUNT_VARIANTS.items():
        counts[variant] = {}
        for preset in DIT_PRESETS:
            with torch.device("meta"):
                model = modules[revision].DiT_models[preset](input_size=32, in_channels=4, learn_sigma=False,
                                                                 **kwargs)
            counts[variant][preset] = trainable_count(model)
            print(f"DiT {variant} {preset}: {counts[variant][preset]}")
    return counts


def unet_counts(network_karras):
    import torch

    counts = {}
    for preset, kwargs in UNET_PRESETS.items():
        for norm, their_norm in UNET_NORMS.items():
            for label_dim in UNET_LABEL_DIMS:
                with torch.device("meta"), contextlib.redirect_stdout(None):  # their norm factory prints
                    model = network_karras.DhariwalUNet(
                        img_resolution=32, in_channels=4, out_channels=4, label_dim=label_dim, augment_dim=0,
                        channel_mult_emb=4, dropout=0.0, label_dropout=0, last_norm_type=their_norm,
                        block_norm_type=their_norm, **kwargs)
                key = f"{preset}/{norm}/{label_dim}"
                counts[key] = trainable_count(model)
                print(f"UNet {key}: {counts[key]}")
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", default="/work/.mirror/quandao10+LCT/repo", help="a git clone of quandao10/LCT")
    parser.add_argument("--scratch", default="/tmp/lct-scratch", help="where timm and einops are installed")
    parser.add_argument("--output", default=HERE, help="where to write dit_golden.npz / .json")
    args = parser.parse_args()
    sys.path.insert(0, args.scratch)
    sys.meta_path.insert(0, _StubFinder(["torchvision", "flash_attn", "models.multihead_flashdiff_2",
                                         "models.rotary"]))
    sys.modules["models"] = _StubModule("models")
    sys.modules["models"].__path__ = []
    persistence = types.ModuleType("torch_utils.persistence")
    persistence.persistent_class = lambda cls: cls  # EDM's pickling support: identity here
    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules["torch_utils"].persistence = sys.modules["torch_utils.persistence"] = persistence

    import timm
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        modules = {
            revision: import_file(extract(args.mirror, revision, "models/network_dit.py", folder),
                                  f"authors_network_dit_{revision}")
            for revision in (SSL_OT_UNCONDITIONAL, SSL_OT_CONDITIONAL, MASTER)
        }
        network_karras = import_file(extract(args.mirror, UNET_BRANCH, "models/network_karras.py", folder),
                                     "authors_network_karras")
        arrays = {}
        golden = dict(
            about="Written by tests/golden/make_dit_golden.py from the authors' code (github.com/quandao10/LCT).",
            revisions={name: resolve(args.mirror, name)
                       for name in (SSL_OT_UNCONDITIONAL, SSL_OT_CONDITIONAL, MASTER, UNET_BRANCH)},
            versions=dict(torch=torch.__version__, timm=timm.__version__),
            configs=dit_goldens(modules, arrays),
            dit_trainable_parameters=dit_counts(modules),
            unet_trainable_parameters=unet_counts(network_karras),
        )
    np.savez_compressed(os.path.join(args.output, "dit_golden.npz"), **arrays)
    with open(os.path.join(args.output, "dit_golden.json"), "w") as file:
        json.dump(golden, file, indent=1)
        file.write("\n")
    print(f"wrote {args.output}/dit_golden.npz and dit_golden.json")


if __name__ == "__main__":
    main()
