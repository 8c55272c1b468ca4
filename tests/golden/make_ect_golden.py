"""Golden values of the official EDM and ECT losses on a keras-lct UNet, for the EDM / ECT objective tests.

Runs THEIR losses: `EDMLoss` of github.com/NVlabs/edm (CC BY-NC-SA) and
`ECMLoss` of github.com/locuslab/ect (branches `main` and `imgnet`; no license
file, its EDM-derived files CC BY-NC-SA), each with
its own preconditioner (EDM's `EDMPrecond`, ECT main's `ECMPrecond`, ECT
imgnet's `networks_edm2.Precond`). Their `training/`, `torch_utils/` and
`dnnlib/` are exported from local git mirrors into temporary folders and
imported from there, one repository at a time (they share package names;
`sys.modules` is purged between them); nothing of theirs is copied into
keras-lct, only the numbers they produce.

The network inside their preconditioners is OURS: a small `keras_lct` UNet
(`NETWORK`, dropout 0), unconditional and class-conditional (label dropout 0),
built on Keras' torch backend (its layers are torch modules, so their loss
backpropagates through it), every weight random and non-zero (the
zero-initialized output convolution would otherwise make F = 0), rounded to
float16 (exact in float32). `OurNetwork` is put into their network module at
run time under the name their preconditioner builds (`model_type` /
`networks_edm2.UNet`); it turns their NCHW x into our channels_last x and
back, gives our network `1000 * c_noise` as noise labels (their c_noise is
ln(sigma) / 4, ours 250 ln(sigma)) and the argmax of their one-hot class
labels as int labels. Their preconditioners run in training mode (`.train()`,
as their training loops do), so ECMPrecond takes c_skip, c_out without
sigma_min (its eval mode shifts them by sigma_min = 0.003). Our network runs
its plain `keras.ops` code (`use_fast_paths(False)`).

Their draws are FED: inside their loss module, `torch` is the real one seen
through `_FedTorch`, whose `randn([batch, 1, 1, 1])` gives the case's chosen
normal draws (`RND_NORMAL`, the log-sigma / log-t normals) and `randn_like`
the fixed noise; `torch.cuda.get_rng_state` / `set_rng_state` (ECMLoss keeps
the dropout mask of its two calls the same with them, and this machine may
have no GPU) are stubs, which changes nothing: our network has no dropout.
Their loss code itself runs unchanged. At r = 0 their target network call
gets c_noise = ln(0) / 4 = -inf, our noise labels -inf, and its output is NaN
for those samples; their `nan_to_num` and r > 0 mask then make the target the
data itself (`raw_target_finite` records which samples' raw outputs were
finite: those with r > 0).

For each of `CASES`:

- EDM cases: sigma, the denoised D, their per-element loss summed per sample,
  the scalar their training loop differentiates (`loss.sum() / batch`: the
  mean of the per-sample sums) and its gradient;
- ECT cases: t, r (what their loss gives the network), D_yt (the student),
  D_yr (the target as it enters their L2: after `nan_to_num` and the r = 0
  mask, taken from the subtraction `D_yt - D_yr` itself), the per-sample loss
  they return, the scalar their training loop differentiates (`loss.mean()`)
  and its gradient. In `ect_main_sigmoid_stage0`, samples `R_ZERO` get r = 0.

Gradients are torch's `.grad` of our network's variables after `backward()`.
Written:

- `ect_golden.npz`: `weights/unconditional/<variable.path>` and
  `weights/conditional/<variable.path>` (float16; both networks are named
  "unet", so paths start with "unet/"), the inputs `images`, `noise`
  (batch, 8, 8, 4) channels_last float16-exact float32, `labels` (batch,)
  int32 (the conditional cases' class labels); per case
  `<case>/rnd_normal` (batch,) float16-exact, then float32 `sigma`, `D`
  (EDM) or `t`, `r`, `D_yt`, `D_yr` (ECT), images channels_last (batch, 8, 8,
  4), `loss_per_sample` (batch,), `loss` (), ECT's `raw_target_finite`
  (batch,) bool, and for the `GRADIENT_CASES` `<case>/gradients/<variable.path>` (the variable's shape);
- `ect_golden.json`: the mirror commits, the versions, `NETWORK`, and every
  case's constants (P_mean, P_std, sigma_data; ECT's q, c, k, b, adj, stage,
  imgnet's wt), its weighting in words, its draws and a summary.

The mirrors are any git clones of github.com/locuslab/ect and
github.com/NVlabs/edm (bare ones will do) that hold the revisions below.
Rerun (from the repository root; everything from the project's .venv):

    flock /tmp/cpu.lock .venv/bin/python tests/golden/make_ect_golden.py \\
        --ect-mirror /work/.mirror/locuslab+ect/repo --edm-mirror /work/.mirror/NVlabs+edm/repo

It takes ~10 seconds on a CPU.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import types

os.environ["KERAS_BACKEND"] = "torch"  # their losses are torch code: our network must be torch modules

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(HERE))
ECT_MAIN = "4311059"  # the head of branch main
ECT_IMGNET = "75aa88a"  # the head of branch imgnet
EDM = "008a4e5"  # the head of branch main
EXPORTED = {
    "edm": ["training/__init__.py", "training/loss.py", "training/networks.py", "torch_utils", "dnnlib"],
    "ect_main": ["training/__init__.py", "training/loss.py", "training/networks.py", "torch_utils", "dnnlib"],
    "ect_imgnet": ["training/__init__.py", "training/loss.py", "training/networks_edm2.py", "torch_utils", "dnnlib"],
}
NUM_CLASSES = 10
# Our UNet: the tiny preset on 8x8x4, narrower (a small file of gradients), with attention at every resolution (1 head
# at 8x8, 2 at 4x4).
NETWORK = dict(preset="tiny", img_resolution=8, in_channels=4, out_channels=4, model_channels=8, channel_mult=(1, 2),
               channel_mult_emb=2, num_blocks=1, attn_resolutions=(8, 4), channels_per_head=8, dropout=0.0)
BATCH = 8
SIGMA_DATA = 0.5
EDM_DEFAULTS = dict(reference="edm", P_mean=-1.2, P_std=1.2, sigma_data=SIGMA_DATA)
ECT_MAIN_DEFAULTS = dict(reference="ect_main", P_mean=-1.1, P_std=2.0, sigma_data=SIGMA_DATA, q=2, c=0.0, k=8.0, b=1.0,
                         adj="sigmoid")
CASES = {
    "edm_unconditional": dict(EDM_DEFAULTS, conditional=False),
    "edm_conditional": dict(EDM_DEFAULTS, conditional=True),
    "ect_main_sigmoid_stage0": dict(ECT_MAIN_DEFAULTS, stage=0, conditional=False),
    "ect_main_const_stage3_c": dict(ECT_MAIN_DEFAULTS, adj="const", c=0.03, stage=3, conditional=False),
    "ect_imgnet_stage1": dict(reference="ect_imgnet", P_mean=-1.1, P_std=2.0, sigma_data=SIGMA_DATA, q=4, c=0.06, k=8.0,
                              b=1.0, adj="sigmoid", wt="snrpk", stage=1, conditional=False),
    "ect_main_conditional": dict(ECT_MAIN_DEFAULTS, stage=2, conditional=True),
}
# Their randn([batch, 1, 1, 1]): sigma or t = exp(P_mean + P_std * n). At stage 0 of the sigmoid mapping (q 2, k 8,
# b 1), r = 0 for t < ln 7 (n < 0.88): samples 0, 1, 3, 5, 7 get r = 0, samples 2, 4, 6 (t = 14.9, 33.1, 3.7) r > 0.
# Every other case has r > 0 for all t.
R_ZERO = [0, 1, 3, 5, 7]
# The cases whose gradients are written (one per loss and branch; tests/test_ect_golden.py reads these).
GRADIENT_CASES = ("edm_conditional", "ect_main_sigmoid_stage0", "ect_imgnet_stage1")
# Their weighting of each sample's loss (for the json).
WEIGHTING = {
    "edm": "(sigma^2 + sigma_data^2) / (sigma sigma_data)^2 per element",
    "ect_main": "1 / (t - r) per sample, after the Huber-like sqrt(d^2 + c^2) - c (sqrt(d^2) at c = 0)",
    "ect_imgnet": "snrpk: (t^2 + sigma_data^2) / (t sigma_data)^2 per sample, after sqrt(d^2 + c^2) - c",
}
RND_NORMAL = {
    "edm_unconditional": [-1.6, -0.7, 0.1, 0.9, 1.8, -0.3, 2.4, -2.1],
    "edm_conditional": [0.5, -1.2, 1.4, -0.1, -2.3, 2.0, 0.8, -0.6],
    "ect_main_sigmoid_stage0": [-1.3, 0.4, 1.9, -0.2, 2.3, 0.6, 1.2, -2.0],
    "ect_main_const_stage3_c": [-2.2, -1.0, 0.3, 1.1, 1.9, -0.4, 0.7, 2.1],
    "ect_imgnet_stage1": [0.2, -1.7, 1.5, -0.5, 2.2, -2.4, 0.9, 1.0],
    "ect_main_conditional": [1.3, -0.8, -1.9, 0.6, 2.0, 0.0, -0.3, 1.6],
}


class _FedTorch(types.ModuleType):
    """`torch` as their loss module sees it: the real module, but its normal draws are the given ones.

    `randn([batch, 1, 1, 1])` gives `rnd_normal`, `randn_like(images)` gives
    `noise` (NCHW), each once; `cuda.get_rng_state` / `set_rng_state` are
    stubs (no dropout in our network, maybe no GPU here).
    """

    def __init__(self, torch, rnd_normal, noise):
        super().__init__("torch")
        self._torch = torch
        self.drawn = []
        fed = self

        def randn(shape, device=None, **kwargs):
            if tuple(shape) != rnd_normal.shape or "randn" in fed.drawn:
                raise RuntimeError(f"an unexpected randn draw of shape {tuple(shape)}")
            fed.drawn.append("randn")
            return torch.as_tensor(rnd_normal, device=device)

        def randn_like(tensor, **kwargs):
            if tuple(tensor.shape) != noise.shape or "randn_like" in fed.drawn:
                raise RuntimeError(f"an unexpected randn_like draw of shape {tuple(tensor.shape)}")
            fed.drawn.append("randn_like")
            return torch.as_tensor(noise, device=tensor.device)

        self.randn = randn
        self.randn_like = randn_like
        self.cuda = _Overlay(torch.cuda, get_rng_state=lambda *args: "rng state",
                             set_rng_state=lambda state, *args: None)

    def __getattr__(self, name):
        return getattr(self._torch, name)


class _Overlay(types.ModuleType):
    """A module with some names replaced."""

    def __init__(self, module, **replaced):
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._module, name)


class OurNetwork(torch.nn.Module):
    """Our keras-lct UNet (`OurNetwork.network`) as their preconditioners call their inner model.

    Built as `OurNetwork(img_resolution=..., in_channels=..., out_channels=..., label_dim=...)` (EDM,
    ECT main) or `OurNetwork(img_resolution=..., img_channels=..., label_dim=...)` (ECT imgnet);
    called as `forward(x, c_noise, class_labels)`, x NCHW, c_noise = ln(sigma) / 4 of shape
    (batch,), one-hot class_labels or None. The network is a class attribute, not a submodule:
    their `.train()` then switches only this wrapper, which passes it on as `training`, and their
    pickling check of the preconditioner sees no Keras model. Module level: that check pickles it.
    """

    network = None

    def __init__(self, img_resolution, label_dim=0, in_channels=None, out_channels=None, img_channels=None,
                 **kwargs):
        super().__init__()
        network = type(self).network
        channels = img_channels or in_channels
        assert not kwargs, kwargs
        assert (img_resolution, channels, out_channels or channels, label_dim) == (
            network.img_resolution, network.in_channels, network.out_channels, network.num_classes)

    def forward(self, x, noise_labels, class_labels=None, **ignored):
        assert all(value is None for value in ignored.values()), ignored  # augment_labels=None
        inputs = [x.permute(0, 2, 3, 1), 1000.0 * noise_labels]  # ours: 250 ln(sigma) = 1000 * ln(sigma) / 4
        if class_labels is not None:
            inputs.append(class_labels.argmax(dim=1).to(torch.int32))
        return type(self).network(inputs, training=self.training).permute(0, 3, 1, 2)


def _recording_net(precond):
    """`precond` as their loss calls it, recording each call's sigma and output.

    The first output (ECT's student D_yt) is a `_Student` tensor: the
    subtraction `D_yt - D_yr` in their loss records its right side.
    """
    record = {"sigma": [], "outputs": []}

    class _Student(torch.Tensor):
        def __sub__(self, other):
            record["target"] = other.detach().clone()
            return torch.Tensor.__sub__(self.as_subclass(torch.Tensor), other)

    class RecordingNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.precond = precond

        def forward(self, x, sigma, class_labels=None, **kwargs):
            out = self.precond(x, sigma, class_labels, **kwargs)
            record["sigma"].append(sigma.detach().clone().reshape(-1))
            record["outputs"].append(out.detach().clone())
            return out.as_subclass(_Student) if len(record["outputs"]) == 1 else out

    return RecordingNet(), record


def nhwc(tensor):
    """A torch NCHW tensor as a channels_last NumPy array."""
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def export(mirror, revision, paths, folder):
    """Their `paths` at `revision`, written under `folder`."""
    archive = subprocess.run(["git", "-C", mirror, "archive", "--format=tar", revision, *paths],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")


def resolve(mirror, revision):
    return subprocess.run(["git", "-C", mirror, "rev-parse", revision], check=True, capture_output=True,
                          text=True).stdout.strip()


def purge_their_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in ("training", "torch_utils", "dnnlib"):
            del sys.modules[name]


def build_networks():
    """Our unconditional and class-conditional UNets, built."""
    from keras_lct.models.unet import UNet

    settings = {key: value for key, value in NETWORK.items() if key != "preset"}
    networks = {}
    for kind, classes in (("unconditional", {}), ("conditional", dict(num_classes=NUM_CLASSES, label_dropout=0.0))):
        network = UNet.from_preset(NETWORK["preset"], name="unet", **settings, **classes)
        shape = (None, NETWORK["img_resolution"], NETWORK["img_resolution"], NETWORK["in_channels"])
        network.build([shape, (None,)] + ([(None,)] if classes else []))
        networks[kind] = network
    return networks


def random_weights(network, rng):
    """Every variable random and non-zero, rounded to float16: outputs of order 1."""
    weights = {}
    for variable in network.weights:
        shape, name = tuple(variable.shape), variable.path.split("/")[-1]
        if name == "embeddings":  # the class table
            value = rng.normal(size=shape)
        elif name == "kernel":  # Dense (in, out) and Conv (h, w, in, out)
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        else:  # biases, NsLN's beta (h, w, channels)
            value = 0.2 * rng.normal(size=shape)
        weights[variable.path] = value.astype(np.float16)
    return weights


def run_case(case, settings, module, networks, inputs):
    """Their loss of `case` on our network: {quantity: array}, {variable.path: gradient}."""
    reference = settings["reference"]
    network = networks["conditional" if settings["conditional"] else "unconditional"]
    OurNetwork.network = network
    label_dim = network.num_classes
    if reference == "ect_imgnet":
        module.networks_edm2.UNet = OurNetwork
        precond = module.networks_edm2.Precond(img_resolution=NETWORK["img_resolution"],
                                               img_channels=NETWORK["in_channels"], label_dim=label_dim,
                                               use_fp16=False, sigma_data=settings["sigma_data"])
    else:
        module.networks.OurNetwork = OurNetwork
        precond_class = module.networks.EDMPrecond if reference == "edm" else module.networks.ECMPrecond
        precond = precond_class(img_resolution=NETWORK["img_resolution"], img_channels=NETWORK["in_channels"],
                                label_dim=label_dim, use_fp16=False, sigma_data=settings["sigma_data"],
                                model_type="OurNetwork")
    precond.train()
    net, record = _recording_net(precond)
    rnd_normal = np.asarray(RND_NORMAL[case], np.float16).astype(np.float32).reshape(-1, 1, 1, 1)
    images = np.ascontiguousarray(inputs["images"].transpose(0, 3, 1, 2))
    noise = np.ascontiguousarray(inputs["noise"].transpose(0, 3, 1, 2))
    fed_torch = _FedTorch(torch, rnd_normal, noise)
    module.loss.torch = fed_torch
    labels = None
    if settings["conditional"]:
        labels = torch.nn.functional.one_hot(torch.as_tensor(inputs["labels"], dtype=torch.int64),
                                             NUM_CLASSES).to(torch.float32)
    if reference == "edm":
        loss_fn = module.loss.EDMLoss(P_mean=settings["P_mean"], P_std=settings["P_std"],
                                      sigma_data=settings["sigma_data"])
    else:
        constants = {key: settings[key] for key in ("P_mean", "P_std", "sigma_data", "q", "c", "k", "b", "adj", "wt")
                     if key in settings}
        loss_fn = module.loss.ECMLoss(**constants)
        loss_fn.update_schedule(settings["stage"])
    for variable in network.weights:
        variable.value.grad = None
    loss = loss_fn(net=net, images=torch.as_tensor(images), labels=labels)
    assert fed_torch.drawn == ["randn", "randn_like"], fed_torch.drawn
    per_sample = loss.reshape(BATCH, -1).sum(dim=1)  # EDM: per element; ECT: per sample already
    scalar = loss.sum() / BATCH if reference == "edm" else loss.mean()
    scalar.backward()
    outputs = dict(rnd_normal=rnd_normal.reshape(-1))
    if reference == "edm":
        assert len(record["outputs"]) == 1
        outputs.update(sigma=record["sigma"][0].numpy(), D=nhwc(record["outputs"][0]))
    else:
        assert len(record["outputs"]) == 2, "every case calls the network for the target (some r > 0)"
        outputs.update(t=record["sigma"][0].numpy(), r=record["sigma"][1].numpy(), D_yt=nhwc(record["outputs"][0]),
                       D_yr=nhwc(record["target"]))
        outputs["raw_target_finite"] = np.isfinite(nhwc(record["outputs"][1])).all(axis=(1, 2, 3))
    outputs.update(loss_per_sample=per_sample.detach().numpy(), loss=scalar.detach().numpy())
    gradients = {variable.path: variable.value.grad.detach().numpy().copy() for variable in network.weights}
    return outputs, gradients


def check(case, outputs, gradients, inputs):
    """Their numbers are what this script meant to feed and get: finite, r = 0 where chosen, gradients non-zero."""
    for name, value in outputs.items():
        assert np.isfinite(value).all(), (case, name)
    for name, value in gradients.items():
        assert np.isfinite(value).all() and np.abs(value).max() > 0, (case, name)
    if "r" in outputs:
        r_zero = outputs["r"] == 0
        chosen = np.isin(np.arange(BATCH), R_ZERO) if case == "ect_main_sigmoid_stage0" else np.zeros(BATCH, bool)
        np.testing.assert_array_equal(r_zero, chosen)
        np.testing.assert_array_equal(outputs["D_yr"][r_zero], inputs["images"][r_zero])
        assert (outputs["raw_target_finite"] == ~r_zero).all()  # ln(0) / 4 = -inf: their target there is NaN


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ect-mirror", default="/work/.mirror/locuslab+ect/repo", help="a git clone of locuslab/ect")
    parser.add_argument("--edm-mirror", default="/work/.mirror/NVlabs+edm/repo", help="a git clone of NVlabs/edm")
    parser.add_argument("--output", default=HERE, help="where to write ect_golden.npz / .json")
    args = parser.parse_args()
    sys.path.insert(0, REPOSITORY)
    import keras_lct.backend

    with keras_lct.backend.use_fast_paths(False):  # our network's plain keras.ops code: the reference
        write_golden(args)


def write_golden(args):
    """Runs every case and writes ect_golden.npz / .json."""
    import keras

    import keras_lct

    rng = np.random.default_rng(43)
    networks = build_networks()
    weights = {kind: random_weights(network, rng) for kind, network in networks.items()}
    for kind, network in networks.items():
        for variable in network.weights:
            variable.assign(weights[kind][variable.path].astype(np.float32))
    shape = (BATCH, NETWORK["img_resolution"], NETWORK["img_resolution"], NETWORK["in_channels"])
    inputs = dict(
        images=(0.5 * rng.normal(size=shape)).astype(np.float16).astype(np.float32),
        noise=rng.normal(size=shape).astype(np.float16).astype(np.float32),
        labels=rng.integers(0, NUM_CLASSES, size=BATCH).astype(np.int32),
    )
    mirrors = {"edm": (args.edm_mirror, EDM), "ect_main": (args.ect_mirror, ECT_MAIN),
               "ect_imgnet": (args.ect_mirror, ECT_IMGNET)}
    golden = dict(
        about="Written by tests/golden/make_ect_golden.py from the official EDM loss (github.com/NVlabs/edm) and "
              "ECT loss (github.com/locuslab/ect, branches main and imgnet) on a keras-lct UNet.",
        commits={reference: resolve(mirror, revision) for reference, (mirror, revision) in mirrors.items()},
        versions=dict(torch=torch.__version__, keras=keras.__version__, keras_lct=keras_lct.__version__),
        network=NETWORK,
        num_classes=NUM_CLASSES,
        noise_labels="ours = 1000 * their c_noise = 250 ln(sigma)",
        class_labels="ours = argmax of their one-hot class labels",
        parameters={kind: int(sum(value.size for value in weights[kind].values())) for kind in weights},
        cases={case: dict(settings, weighting=WEIGHTING[settings["reference"]],
                          rnd_normal=np.asarray(RND_NORMAL[case], np.float16).astype(float).tolist())
               for case, settings in CASES.items()},
        inputs=dict(labels=inputs["labels"].tolist()),
    )
    arrays = dict(inputs)
    for kind in weights:
        arrays.update({f"weights/{kind}/{path}": value for path, value in weights[kind].items()})
    for reference, (mirror, revision) in mirrors.items():
        with tempfile.TemporaryDirectory() as folder:
            export(mirror, revision, EXPORTED[reference], folder)
            purge_their_modules()
            sys.path.insert(0, folder)
            import training.loss

            module = types.SimpleNamespace(loss=training.loss)
            if reference == "ect_imgnet":
                import training.networks_edm2

                module.networks_edm2 = training.networks_edm2
            else:
                import training.networks

                module.networks = training.networks
            for case, settings in CASES.items():
                if settings["reference"] != reference:
                    continue
                outputs, gradients = run_case(case, settings, module, networks, inputs)
                check(case, outputs, gradients, inputs)
                for name, value in outputs.items():
                    arrays[f"{case}/{name}"] = value if value.dtype == bool else np.asarray(value, np.float32)
                if case in GRADIENT_CASES:
                    for path, value in gradients.items():
                        arrays[f"{case}/gradients/{path}"] = np.asarray(value, np.float32)
                summary = {name: round(float(np.abs(value).max()), 5) for name, value in outputs.items()
                           if name != "rnd_normal" and value.dtype != bool}
                summary["gradient_max_abs"] = round(max(float(np.abs(g).max()) for g in gradients.values()), 5)
                golden["cases"][case]["max_abs"] = summary
                if "r" in outputs:
                    golden["cases"][case]["r_is_zero"] = (outputs["r"] == 0).tolist()
                golden["cases"][case]["loss"] = float(outputs["loss"])
                print(case, summary)
            sys.path.remove(folder)
            purge_their_modules()
    np.savez_compressed(os.path.join(args.output, "ect_golden.npz"), **arrays)
    with open(os.path.join(args.output, "ect_golden.json"), "w") as file:
        json.dump(golden, file, indent=1)
        file.write("\n")
    size = os.path.getsize(os.path.join(args.output, "ect_golden.npz"))
    print(f"wrote {args.output}/ect_golden.npz ({size / 1e6:.2f} MB) and ect_golden.json")


if __name__ == "__main__":
    main()
