"""Golden values of the official MeanFlow objective, for tests/test_meanflow_golden.py.

Runs THEIR code (github.com/Gsunshine/meanflow, JAX/Flax): `meanflow.py` and
`models/*.py` are exported from a local git mirror into a temporary folder and
imported from there; nothing of theirs is copied into keras-lct, only the
numbers they produce. Their `MeanFlow` module wraps a tiny DiT of their
`models_dit` (`TINY`, registered in that module at run time as `DiT_golden`)
whose weights are all replaced by random ones (adaLN-Zero would otherwise make
u = 0), and their `MeanFlow.forward` runs on fixed inputs and FED draws:

- (t, r), with r = t for some samples (`sample_tr` overridden: the given
  times, in their (batch, 1, 1, 1) layout);
- the label-dropout mask (`cond_drop` overridden: their formula on the given
  mask instead of dropping the first `num_drop` samples);
- the noise e: inside their module `jax` and `jnp` are the real ones seen
  through `_FedJax`, which returns the given noise for their one draw of e and records
  what `jax.jvp` gets and gives (the tangent v_g, u, du/dt), what
  `jax.lax.stop_gradient` gets (u_tgt first) and what their per-sample
  `jnp.sum(..., axis=(1, 2, 3))` gives (the loss before the adaptive weighting
  first). Their forward itself runs unchanged.

For each of `CASES` (guidance settings): u, du_dt, u_tgt, v_g, the per-sample
loss before the adaptive weighting, the loss, and `jax.grad` of their loss
w.r.t. every parameter. Written:

- `meanflow_golden.npz`: `weights/<flax path>` (float16: exact in float32),
  the inputs `x`, `noise`, `t`, `r`, `labels`, `dropped` (channels_last, as
  their DiT takes them), and `<case>/<quantity>`, `<case>/gradients/<flax path>`
  (float32);
- `meanflow_golden.json`: the mirror commit, the versions, `TINY` and `CASES`.

Their code needs the JAX it pins (`jnp.clip(a_min=...)`, refused by current
JAX): jax/jaxlib 0.4.27 and flax 0.8.4, installed into a scratch folder (never
into .venv) and put first on sys.path; the rest (numpy, ml_dtypes, opt_einsum,
scipy, rich, PyYAML, typing_extensions) comes from the project's .venv. The
mirror is any git clone of github.com/Gsunshine/meanflow (a bare one will do)
that holds commit `REVISION`. Rerun (from the repository root):

    .venv/bin/pip install --no-deps --target /work/scratch/meanflow-env \\
        jax==0.4.27 jaxlib==0.4.27 flax==0.8.4 msgpack
    .venv/bin/python tests/golden/make_meanflow_golden.py \\
        --mirror /work/.mirror/Gsunshine+meanflow/repo --env /work/scratch/meanflow-env

It takes ~15 seconds on a CPU.
"""

import argparse
import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REVISION = "d70cb55"  # the head of their main branch
NUM_CLASSES = 10
# Their DiT's arguments (class_dropout_prob is set to 0 by their MeanFlow.setup).
TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
            num_classes=NUM_CLASSES)
BATCH = 8
# The times: r = t for samples 1, 4, 6; t on both sides of each case's guidance interval, none on its edges.
T = np.array([0.93, 0.12, 0.55, 0.71, 0.38, 0.86, 0.25, 0.64], np.float32)
R_OVER_T = np.array([0.35, 1.0, 0.6, 0.1, 1.0, 0.8, 1.0, 0.45], np.float32)
DROPPED = np.array([False, False, True, False, True, False, False, False])
# Settings of their MeanFlow: the kappa > 0 branch (their defaults omega 1, kappa 0.5, with t = 0.86, 0.93
# outside [t_start, t_end]) and the kappa = 0 branch with omega 2 (5 samples outside), both with their adaptive
# weighting (norm_p 1, norm_eps 0.01); on random weights each sample's squared norm is ~400-3000, where
# norm_eps 0.01 moves the loss and its gradient by ~1e-5, so "weighting" (no guidance) takes norm_p 0.5 and a
# norm_eps of the squared norms' size.
DEFAULT_WEIGHTING = dict(norm_p=1.0, norm_eps=0.01)
CASES = {
    "kappa": dict(DEFAULT_WEIGHTING, guidance_eq="cfg", omega=1.0, kappa=0.5, t_start=0.0, t_end=0.8),
    "omega": dict(DEFAULT_WEIGHTING, guidance_eq="cfg", omega=2.0, kappa=0.0, t_start=0.3, t_end=0.7),
    "weighting": dict(guidance_eq="cfg", omega=1.0, kappa=0.0, t_start=0.0, t_end=1.0, norm_p=0.5, norm_eps=500.0),
}
QUANTITIES = ("u", "du_dt", "u_tgt", "v_g", "loss_per_sample", "loss")


class _FedJax(types.ModuleType):
    """`jax` as their meanflow.py sees it: the real module, but `random.normal` gives the fed noise.

    It also records, into `self.record`, the outputs of `jvp` and its tangent,
    the inputs of `lax.stop_gradient` and the per-sample sums of `numpy.sum`.
    """

    def __init__(self, jax, noise):
        super().__init__("jax")
        self._jax = jax
        self.record = {"stop_gradient": [], "per_sample_sum": []}
        fed_jax = self

        def normal(key, shape, dtype=None):
            if tuple(shape) != noise.shape:
                raise RuntimeError(f"an unexpected normal draw of shape {shape}: only e is fed")
            return jax.numpy.asarray(noise, dtype=dtype)

        def stop_gradient(value):
            fed_jax.record["stop_gradient"].append(value)
            return jax.lax.stop_gradient(value)

        def sum_(value, axis=None, **kwargs):
            out = jax.numpy.sum(value, axis=axis, **kwargs)
            if axis == (1, 2, 3):
                fed_jax.record["per_sample_sum"].append(out)
            return out

        self.random = _Overlay(jax.random, normal=normal)
        self.lax = _Overlay(jax.lax, stop_gradient=stop_gradient)
        self.numpy = _Overlay(jax.numpy, sum=sum_)

    def jvp(self, fun, primals, tangents):
        out = self._jax.jvp(fun, primals, tangents)
        self.record["v_g"] = tangents[0]
        self.record["u"], self.record["du_dt"] = out
        return out

    def __getattr__(self, name):
        return getattr(self._jax, name)


class _Overlay(types.ModuleType):
    """A module with some names replaced."""

    def __init__(self, module, **replaced):
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._module, name)


def export(mirror, revision, folder):
    """Their `meanflow.py` and `models/` at `revision`, written under `folder`."""
    archive = subprocess.run(["git", "-C", mirror, "archive", "--format=tar", revision, "meanflow.py", "models"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")


def resolve(mirror, revision):
    return subprocess.run(["git", "-C", mirror, "rev-parse", revision], check=True, capture_output=True,
                          text=True).stdout.strip()


def fed_meanflow(meanflow, t, r, dropped):
    """Their MeanFlow with the given (t, r) and label-dropout mask instead of their draws."""
    import jax.numpy as jnp

    class FedMeanFlow(meanflow.MeanFlow):
        def sample_tr(self, bz):
            return jnp.asarray(t).reshape(bz, 1, 1, 1), jnp.asarray(r).reshape(bz, 1, 1, 1)

        def cond_drop(self, v_t, v_g, labels):  # their cond_drop, on the given mask
            bz = v_t.shape[0]
            drop_mask = jnp.asarray(dropped)[:, None, None, None]
            y_inp = jnp.where(drop_mask.reshape(bz,), self.num_classes, labels)
            v_g = jnp.where(drop_mask, v_t, v_g)
            return y_inp, v_g

    return FedMeanFlow


def flat(tree, prefix=""):
    """{"a/b/c": leaf} of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflat(leaves):
    tree = {}
    for path, value in leaves.items():
        node = tree
        *parents, name = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


def random_weights(shapes, rng):
    """Every parameter random and non-zero, rounded to float16: outputs of order 1."""
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("embedding"):  # the class table
            value = 0.5 * rng.normal(size=shape)
        elif len(shape) >= 2:  # Dense (in, out) and the patch Conv (h, w, in, out) kernels
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = 0.1 * rng.normal(size=shape)
        weights[name] = value.astype(np.float16)
    return weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mirror", default="/work/.mirror/Gsunshine+meanflow/repo",
                        help="a git clone of Gsunshine/meanflow")
    parser.add_argument("--env", default="/work/scratch/meanflow-env",
                        help="where jax 0.4.27, jaxlib 0.4.27, flax 0.8.4 and msgpack are installed")
    parser.add_argument("--output", default=HERE, help="where to write meanflow_golden.npz / .json")
    args = parser.parse_args()
    sys.path.insert(0, args.env)
    import flax
    import jax
    import jax.numpy as jnp
    import jaxlib.version

    assert jax.__version__ == "0.4.27", f"their code needs jax 0.4.27, found {jax.__version__} ({jax.__file__})"
    rng = np.random.default_rng(2025)
    inputs = dict(
        x=(0.5 * rng.normal(size=(BATCH, TINY["input_size"], TINY["input_size"], TINY["in_channels"]))),
        noise=rng.normal(size=(BATCH, TINY["input_size"], TINY["input_size"], TINY["in_channels"])),
        labels=rng.integers(0, NUM_CLASSES, size=BATCH).astype(np.int32),
        t=T,
        r=T * R_OVER_T,
        dropped=DROPPED,
    )
    inputs = {key: value.astype(np.float32) if value.dtype == np.float64 else value for key, value in inputs.items()}
    golden = dict(
        about="Written by tests/golden/make_meanflow_golden.py from the official MeanFlow code "
              "(github.com/Gsunshine/meanflow).",
        commit=resolve(args.mirror, REVISION),
        versions=dict(jax=jax.__version__, jaxlib=jaxlib.version.__version__, flax=flax.__version__),
        tiny=TINY,
        cases=CASES,
        inputs=dict(t=inputs["t"].tolist(), r=inputs["r"].tolist(), labels=inputs["labels"].tolist(),
                    dropped=inputs["dropped"].tolist()),
    )
    arrays = dict(inputs)
    with tempfile.TemporaryDirectory() as folder:
        export(args.mirror, REVISION, folder)
        sys.path.insert(0, folder)
        import meanflow
        from models import models_dit

        models_dit.DiT_golden = functools.partial(models_dit.DiT, **TINY)
        weights = None
        for case, settings in CASES.items():
            fed_jax = _FedJax(jax, inputs["noise"])
            meanflow.jax = fed_jax
            meanflow.jnp = fed_jax.numpy
            model = fed_meanflow(meanflow, inputs["t"], inputs["r"], inputs["dropped"])(
                model_str="DiT_golden", model_config={}, num_classes=NUM_CLASSES, **settings)
            if weights is None:
                shapes = jax.eval_shape(
                    model.init, jax.random.PRNGKey(0), inputs["x"], jnp.ones((BATCH,)), inputs["labels"])
                weights = random_weights({name: leaf.shape for name, leaf in flat(shapes["params"]).items()}, rng)
                arrays.update({f"weights/{name}": value for name, value in weights.items()})
                golden["parameters"] = int(sum(value.size for value in weights.values()))
            params = unflat({name: jnp.asarray(value, jnp.float32) for name, value in weights.items()})

            def loss_of(params):
                loss, _ = model.apply({"params": params}, inputs["x"], inputs["labels"], method=model.forward,
                                      rngs={"gen": jax.random.PRNGKey(1)})
                return loss

            loss = loss_of(params)
            record = fed_jax.record
            outputs = dict(u=record["u"], du_dt=record["du_dt"], u_tgt=record["stop_gradient"][0], v_g=record["v_g"],
                           loss_per_sample=record["per_sample_sum"][0], loss=loss)
            gradients = flat(jax.grad(loss_of)(params))
            for name, value in outputs.items():
                arrays[f"{case}/{name}"] = np.asarray(value, np.float32)
            for name, value in gradients.items():
                arrays[f"{case}/gradients/{name}"] = np.asarray(value, np.float32)
            golden[case] = {f"{name}_max_abs": float(np.abs(np.asarray(value)).max())
                            for name, value in outputs.items()}
            print(case, {key: round(value, 4) for key, value in golden[case].items()})
    np.savez_compressed(os.path.join(args.output, "meanflow_golden.npz"), **arrays)
    with open(os.path.join(args.output, "meanflow_golden.json"), "w") as file:
        json.dump(golden, file, indent=1)
        file.write("\n")
    size = os.path.getsize(os.path.join(args.output, "meanflow_golden.npz"))
    print(f"wrote {args.output}/meanflow_golden.npz ({size / 1e6:.2f} MB) and meanflow_golden.json")


if __name__ == "__main__":
    main()
