"""keras_lct.objectives.EDMDiffusion and ECT equal the official losses (golden values of their code).

tests/golden/make_ect_golden.py (its docstring says how to rerun it) runs EDM's `EDMLoss`
(NVlabs/edm) and ECT's `ECMLoss` (locuslab/ect, branches `main` and `imgnet`) with their own
preconditioners around a small keras-lct UNet (its torch build, with random weights), on fed
draws. These tests load the same weights into the same UNet on each backend, run the objectives'
`loss_terms` on the same images, labels and draws, and compare what both compute, and the
gradients of the loss through each backend's own autodiff.
"""

import json
import pathlib

import numpy as np
import pytest
from keras import ops
from test_backend_ops import value_and_gradients

from keras_lct.models import ConsistencyModel
from keras_lct.models import UNet
from keras_lct.objectives import ECT
from keras_lct.objectives import EDMDiffusion

GOLDEN = pathlib.Path(__file__).parent / "golden"
GOLDEN_VALUES = json.loads((GOLDEN / "ect_golden.json").read_text())
CASES = GOLDEN_VALUES["cases"]
# Each quantity is compared relative to its largest magnitude: max |ours - theirs| <= RTOL * max |theirs|.
RTOL = 1e-5
# Gradients: the noise embedding's first layer reads sin/cos of noise labels 250 ln(sigma) of up to ~1000,
# where the backends' float32 sin/cos differ in their last places; measured up to 9e-5 of the largest value.
GRADIENT_RTOL = 2e-4
# Gradients are checked on one case of each loss and branch (the others share their code paths).
GRADIENT_CASES = ("edm_conditional", "ect_main_sigmoid_stage0", "ect_imgnet_stage1")


@pytest.fixture(scope="module")
def golden_arrays():
    with np.load(GOLDEN / "ect_golden.npz") as arrays:
        return dict(arrays)


def objective_of(case):
    settings = CASES[case]
    if settings["reference"] == "edm":
        return EDMDiffusion(p_mean=settings["P_mean"], p_std=settings["P_std"])
    return ECT(
        p_mean=settings["P_mean"], p_std=settings["P_std"], q=settings["q"], c=settings["c"], k=settings["k"],
        b=settings["b"], mapping={"sigmoid": "sigmoid", "const": "constant"}[settings["adj"]],
        weighting="edm" if settings.get("wt") == "snrpk" else "interval",
    )


def golden_model(case, arrays):
    """The UNet of the golden file, with its weights, in a ConsistencyModel of the case's objective."""
    settings = CASES[case]
    network_config = dict(GOLDEN_VALUES["network"])
    preset = network_config.pop("preset")
    num_classes = GOLDEN_VALUES["num_classes"] if settings["conditional"] else 0
    network = UNet.from_preset(preset, num_classes=num_classes, name="unet", **network_config)
    model = ConsistencyModel(network, objective=objective_of(case), ema_decays=())
    model.build((None,) + arrays["images"].shape[1:])
    weights = f"weights/{'conditional' if settings['conditional'] else 'unconditional'}/"
    for variable in network.weights:
        variable.assign(arrays[weights + network_path(variable)].astype("float32"))
    return model


def network_path(variable):
    """The variable's path within the network, as the golden file names it ("unet/...")."""
    return variable.path[variable.path.index("unet/"):]


def assert_close(ours, theirs, what, rtol=RTOL):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    error = np.max(np.abs(ours - theirs))
    assert error <= rtol * np.max(np.abs(theirs)), f"{what}: max error {error:.3g}, largest value {np.max(np.abs(theirs)):.3g}"


def loss_terms(model, case, arrays):
    settings = CASES[case]
    labels = ops.convert_to_tensor(arrays["labels"]) if settings["conditional"] else None
    # Their sigma (EDM) or t (ECT), exp(P_mean + P_std n) of the fed n, as their float32 exp rounded it.
    level = arrays[f"{case}/{'sigma' if settings['reference'] == 'edm' else 't'}"].reshape(-1)
    np.testing.assert_allclose(level, np.exp(settings["P_mean"] + settings["P_std"] * arrays[f"{case}/rnd_normal"]), rtol=1e-6)
    inputs = [ops.convert_to_tensor(arrays[name]) for name in ("images", "noise")]
    if settings["reference"] == "edm":
        return model.objective.loss_terms(model, model.network, *inputs, level.astype("float32"), labels)
    return model.objective.loss_terms(model, model.network, *inputs, level.astype("float32"), settings["stage"], labels,
                                      c=settings["c"])


@pytest.mark.parametrize("case", list(CASES))
def test_the_loss_equals_the_official_code(case, golden_arrays):
    model = golden_model(case, golden_arrays)
    terms = {name: ops.convert_to_numpy(value) for name, value in loss_terms(model, case, golden_arrays).items()}
    names = ({"denoised": "D"} if CASES[case]["reference"] == "edm" else
             {"r": "r", "student": "D_yt", "target": "D_yr"})
    for ours, theirs in {**names, "per_sample_loss": "loss_per_sample", "loss": "loss"}.items():
        assert_close(terms[ours], golden_arrays[f"{case}/{theirs}"], f"{case}: {ours}")


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_the_gradients_equal_the_official_code(case, golden_arrays):
    model = golden_model(case, golden_arrays)
    variables = model.network.trainable_variables
    loss, gradients = value_and_gradients(lambda: loss_terms(model, case, golden_arrays)["loss"], variables)
    assert_close(loss, golden_arrays[f"{case}/loss"], f"{case}: loss")
    for variable, gradient in zip(variables, gradients):
        assert_close(gradient, golden_arrays[f"{case}/gradients/{network_path(variable)}"],
                     f"{case}: gradient of {network_path(variable)}", GRADIENT_RTOL)
