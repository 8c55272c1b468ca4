"""keras_lct.objectives.MeanFlow equals the official MeanFlow objective (golden values of their JAX code).

tests/golden/make_meanflow_golden.py (its docstring says how to rerun it) runs the official
`MeanFlow.forward` (github.com/Gsunshine/meanflow) with a tiny DiT of theirs on random weights and fed
draws (t, r, the noise e, the dropped labels). These tests load the same weights into keras-lct's DiT
(`interval_embedding=True`; the mapping of tests/test_dit.py) and compare `MeanFlow.loss_terms` on the
same draws, and the gradient of its loss through each backend's own autodiff, with theirs.
"""

import json
import pathlib

import numpy as np
import pytest
from keras import ops
from test_backend_ops import value_and_gradients
from test_dit import authors_names

from keras_lct.models import DiT
from keras_lct.objectives import MeanFlow

GOLDEN = pathlib.Path(__file__).parent / "golden"
GOLDEN_VALUES = json.loads((GOLDEN / "meanflow_golden.json").read_text())
CASES = list(GOLDEN_VALUES["cases"])
# Each quantity is compared relative to its largest magnitude: max |ours - theirs| <= RTOL * max |theirs|.
RTOL = 1e-5
# loss_terms' names -> the golden's.
TERMS = {"u": "u", "du_dt": "du_dt", "target": "u_tgt", "guided_velocity": "v_g", "distance": "loss_per_sample",
         "loss": "loss"}


@pytest.fixture(scope="module")
def golden_arrays():
    with np.load(GOLDEN / "meanflow_golden.npz") as arrays:
        return dict(arrays)


def torch_style_name(flax_path):
    """Their Flax parameter path as the state_dict name of the PyTorch DiT that `authors_names` maps.

    "net/blocks/layers_0/attn/qkv/_flax_linear/kernel" -> "blocks.0.attn.qkv.weight".
    """
    *path, leaf = [part.removeprefix("layers_") for part in flax_path.split("/")[1:] if not part.startswith("_flax")]
    return ".".join(path + ["bias" if leaf == "bias" else "weight"])


def torch_layout(flax_path, value):
    """Their Flax array in PyTorch's layout: Dense kernels (in, out) -> (out, in), the patch Conv HWIO -> OIHW."""
    if flax_path.endswith("/kernel"):
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def mapped_variables(dit):
    """{their name: (our variable, their array -> ours)}: test_dit's mapping, and h_embedder's MLP -> interval_dense."""
    names = authors_names(dit)
    for index, layer in ((0, dit.interval_dense0), (2, dit.interval_dense1)):
        names[f"h_embedder.mlp.{index}.weight"] = (layer.kernel, lambda a: a.T)
        names[f"h_embedder.mlp.{index}.bias"] = (layer.bias, lambda a: a)
    return names


def ours_and_theirs(dit, arrays, prefix):
    """[(our variable, their array under `prefix` in its layout)], each trainable variable exactly once."""
    theirs = {
        torch_style_name(key[len(prefix):]): torch_layout(key, arrays[key].astype("float32"))
        for key in arrays
        if key.startswith(prefix)
    }
    names = mapped_variables(dit)
    assert set(names) == set(theirs), set(names) ^ set(theirs)
    assert len({id(variable) for variable, _ in names.values()}) == len(dit.trainable_variables)
    return [(variable, convert(theirs[name])) for name, (variable, convert) in sorted(names.items())]


def golden_dit(arrays):
    tiny = GOLDEN_VALUES["tiny"]
    # label_dropout only gives the null class its learned row, as their table of num_classes + 1 rows.
    dit = DiT(input_size=tiny["input_size"], patch_size=tiny["patch_size"], in_channels=tiny["in_channels"],
              hidden_size=tiny["hidden_size"], depth=tiny["depth"], num_heads=tiny["num_heads"],
              num_classes=tiny["num_classes"], label_dropout=0.1, interval_embedding=True)
    dit.build([(None, tiny["input_size"], tiny["input_size"], tiny["in_channels"]), (None,), (None,), (None,)])
    for variable, value in ours_and_theirs(dit, arrays, "weights/"):
        variable.assign(value)
    return dit


def objective_and_batch(case, arrays):
    """keras-lct's MeanFlow with the case's settings, and loss_terms' arguments on the golden inputs and draws."""
    settings = GOLDEN_VALUES["cases"][case]
    objective = MeanFlow(**{name: settings[name] for name in ("omega", "kappa", "t_start", "t_end", "norm_p",
                                                               "norm_eps")})
    dropped = arrays["dropped"]
    labels = np.where(dropped, GOLDEN_VALUES["tiny"]["num_classes"], arrays["labels"]).astype("int32")
    batch = {name: ops.convert_to_tensor(arrays[name]) for name in ("t", "r")}
    batch.update(clean=ops.convert_to_tensor(arrays["x"]), noise=ops.convert_to_tensor(arrays["noise"]),
                 labels=ops.convert_to_tensor(labels), dropped=ops.convert_to_tensor(dropped))
    return objective, batch


def relative_error(ours, theirs):
    """max |ours - theirs| / max |theirs|."""
    scale = np.abs(theirs).max()
    assert scale > 0
    return float(np.abs(np.asarray(ours, "float64") - theirs).max() / scale)


@pytest.mark.parametrize("case", CASES)
def test_loss_terms_equal_the_official_meanflow(case, golden_arrays):
    dit = golden_dit(golden_arrays)
    objective, batch = objective_and_batch(case, golden_arrays)
    terms = objective.loss_terms(dit, **batch, training=True)
    assert np.abs(golden_arrays[f"{case}/u"]).max() > 1  # every weight random: u of order 1, not adaLN-Zero's 0
    errors = {name: relative_error(ops.convert_to_numpy(terms[name]), golden_arrays[f"{case}/{theirs}"])
              for name, theirs in TERMS.items()}
    assert max(errors.values()) <= RTOL, errors


# v_g is under stop-gradient, so the guidance settings leave the gradient's path alone: the "omega"
# case's gradients would check nothing "kappa"'s do not (its terms above are checked).
@pytest.mark.parametrize("case", [case for case in CASES if case != "omega"])
def test_loss_gradients_equal_the_official_meanflow(case, golden_arrays):
    dit = golden_dit(golden_arrays)
    objective, batch = objective_and_batch(case, golden_arrays)
    pairs = ours_and_theirs(dit, golden_arrays, f"{case}/gradients/")
    loss, gradients = value_and_gradients(
        lambda: objective.loss_terms(dit, **batch, training=True)["loss"], [variable for variable, _ in pairs]
    )
    assert relative_error(loss, golden_arrays[f"{case}/loss"]) <= RTOL
    errors = {variable.path: relative_error(ours, theirs) for (variable, theirs), ours in zip(pairs, gradients)}
    assert max(errors.values()) <= RTOL, {path: error for path, error in errors.items() if error > RTOL}


@pytest.mark.backend_neutral
def test_the_golden_draws_take_every_branch(golden_arrays):
    """r = t and r < t, dropped and kept labels, t inside and outside each guidance window, guidance that moves v."""
    t, r, dropped = golden_arrays["t"], golden_arrays["r"], golden_arrays["dropped"]
    assert np.any(r == t) and np.any(r < t) and np.any(dropped) and not np.all(dropped)
    velocity = golden_arrays["noise"] - golden_arrays["x"]
    for case, settings in GOLDEN_VALUES["cases"].items():
        inside = (t >= settings["t_start"]) & (t <= settings["t_end"])
        guided = settings["omega"] != 1.0 or settings["kappa"] != 0.0
        assert not guided or (np.any(inside & ~dropped) and np.any(~inside & ~dropped)), case
        moved = np.abs(golden_arrays[f"{case}/v_g"] - velocity).max(axis=(1, 2, 3)) > 1e-3
        np.testing.assert_array_equal(moved, inside & ~dropped & guided, err_msg=case)
