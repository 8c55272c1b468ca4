"""keras_lct.models.DiT: parity with the authors' DiT (golden values), labels, saving, the ConsistencyModel drop-in.

The golden values come from the authors' own modules, run by tests/golden/make_dit_golden.py
(its docstring says how to rerun it): parameter counts of their presets, and the outputs of
small configurations on random weights, which `load_authors_weights` loads into ours.
"""

import json
import pathlib

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct.backend import use_fast_paths
from keras_lct.data import NoisePairedDataset
from keras_lct.models import DIT_PRESETS
from keras_lct.models import ConsistencyModel
from keras_lct.models import DiT
from keras_lct.optimizers import RAdam

GOLDEN = pathlib.Path(__file__).parent / "golden"
GOLDEN_VALUES = json.loads((GOLDEN / "dit_golden.json").read_text())
# An output this close to theirs rules out a wrong norm epsilon (1e-5 for 1e-6 moves it ~1.5e-5).
PARITY_ATOL = 3e-6
# Over the whole c_noise range (|c_noise| up to ~1500) one float32 rounding of a timestep angle is ~6e-5, and
# their frequencies exp(-ln(1e4) j / 128) and ours (1e-4)^(j / 128) differ in the last bit (docs/dit.md).
FULL_RANGE_ATOL = 2e-4
# Their count variants (tests/golden/make_dit_golden.py), as keras-lct arguments.
COUNT_VARIANTS = {
    "ssl_ot_conditional": dict(num_classes=1000, label_dropout=0.1),
    "ssl_ot_unconditional": dict(),
    "master_nsln_conditional": dict(norm="nsln", num_classes=1000, label_dropout=0.1),
}
MICRO = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4)


@pytest.fixture(scope="module")
def golden_arrays():
    with np.load(GOLDEN / "dit_golden.npz") as arrays:
        return dict(arrays)


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def build_shapes_only(model, input_shapes):
    """Builds `model` with variables that have shapes and no values: no memory, no draws (XL/2 in ~0.1 s).

    Such a model can be counted, not called; the test's `keras.backend.clear_session()`
    (conftest) forgets its variables.
    """
    with keras.StatelessScope(initialize_variables=False), use_fast_paths(False):
        model.build(input_shapes)


def authors_names(dit):
    """{their state_dict name: (our variable, their array -> ours)}: the mapping of docs/dit.md."""
    same, linear_kernel = (lambda a: a), (lambda a: a.T)  # torch Linear weights are (out, in)
    names = {
        "x_embedder.proj.weight": (dit.patch_embedding.projection.kernel, lambda a: a.transpose(2, 3, 1, 0)),
        "x_embedder.proj.bias": (dit.patch_embedding.projection.bias, same),
    }

    def linear(their_name, layer):
        names[f"{their_name}.weight"] = (layer.kernel, linear_kernel)
        names[f"{their_name}.bias"] = (layer.bias, same)

    linear("t_embedder.mlp.0", dit.timestep_dense0)
    linear("t_embedder.mlp.2", dit.timestep_dense1)
    if dit.class_embedding is not None:
        names["y_embedder.embedding_table.weight"] = (dit.class_embedding.embeddings, same)
    for index, block in enumerate(dit.blocks):
        prefix = f"blocks.{index}."
        for their_name, layer in [("attn.qkv", block.qkv), ("attn.proj", block.proj), ("mlp.fc1", block.fc1),
                                  ("mlp.fc2", block.fc2), ("adaLN_modulation.1", block.modulation)]:
            linear(prefix + their_name, layer)
        if block.qk_norm:
            for their_name, norm in (("attn.q_norm", block.query_norm), ("attn.k_norm", block.key_norm)):
                names[f"{prefix}{their_name}.bias"] = (norm.beta, same)
                if norm.scale:  # NsLN's scale is theirs frozen at 1, ours absent
                    names[f"{prefix}{their_name}.weight"] = (norm.gamma, same)
    linear("final_layer.linear", dit.final_layer.linear)
    linear("final_layer.adaLN_modulation.1", dit.final_layer.modulation)
    return names


def load_authors_weights(dit, arrays, config):
    """Their random weights of `config` (golden) into `dit`; every trainable variable set exactly once."""
    prefix = f"{config}/weights/"
    theirs = {key[len(prefix):]: arrays[key] for key in arrays if key.startswith(prefix)}
    names = authors_names(dit)
    assert set(names) == set(theirs), set(names) ^ set(theirs)
    assert len({id(variable) for variable, _ in names.values()}) == len(dit.trainable_variables)
    for name, (variable, convert) in names.items():
        variable.assign(convert(theirs[name].astype("float32")))


def parity_dit(config):
    dit = DiT(**MICRO, **GOLDEN_VALUES["configs"][config]["ours"])
    dit.build([(None, 8, 8, 4), (None,)] + ([(None,)] if dit.num_classes else []))
    return dit


@pytest.mark.parametrize("config", list(GOLDEN_VALUES["configs"]))
def test_output_equals_the_authors_dit_on_their_weights(config, golden_arrays):
    dit = parity_dit(config)
    load_authors_weights(dit, golden_arrays, config)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(dit.patch_embedding.position_embedding), golden_arrays[f"{config}/pos_embed"]
    )
    labels = [golden_arrays["class_labels"]] if dit.num_classes else []
    expected = golden_arrays[f"{config}/output"]
    assert np.abs(expected).max() > 0.5  # every weight random: an output of order 1
    for fast in (True, False):  # torch's fused attention and the keras.ops attention
        with use_fast_paths(fast):
            out = dit([golden_arrays["x"], golden_arrays["noise_labels"]] + labels)
            np.testing.assert_allclose(ops.convert_to_numpy(out), expected, rtol=0, atol=PARITY_ATOL)
    out = dit([golden_arrays["x"], golden_arrays["full_range_noise_labels"]] + labels)
    full_range = golden_arrays[f"{config}/full_range_output"]
    np.testing.assert_allclose(ops.convert_to_numpy(out), full_range, rtol=0, atol=FULL_RANGE_ATOL)


@pytest.mark.parametrize("preset", [name for name in DIT_PRESETS if "/" in name])
def test_trainable_parameter_counts_equal_the_authors(preset):
    for variant, arguments in COUNT_VARIANTS.items():
        dit = DiT.from_preset(preset, **arguments)
        build_shapes_only(dit, [(None, 32, 32, 4), (None,)] + ([(None,)] if dit.num_classes else []))
        assert trainable_count(dit) == GOLDEN_VALUES["dit_trainable_parameters"][variant][preset], variant
        assert [v.name for v in dit.non_trainable_variables] == ["position_embedding"]


def test_the_norms_of_each_reference():
    plain, nsln = DiT(**MICRO), DiT(**MICRO, norm="NsLN")
    assert (plain.norm, plain.qk_norm, plain.epsilon) == ("layer", False, 1e-6)
    assert (nsln.norm, nsln.qk_norm, nsln.epsilon) == ("nsln", True, 1e-5)
    nsln.build([(None, 8, 8, 4), (None,)])
    block = nsln.blocks[0]
    assert not block.query_norm.scale and block.query_norm.center  # an offset, no scale
    assert not block.norm1.weights and block.norm1.epsilon == 1e-5


def test_two_inputs_mean_the_null_class_and_labels_matter(golden_arrays):
    dit = parity_dit("ssl_ot_conditional")
    load_authors_weights(dit, golden_arrays, "ssl_ot_conditional")
    x, noise_labels = golden_arrays["x"], golden_arrays["noise_labels"]
    null = np.full((3,), dit.num_classes, "int32")
    unlabelled = ops.convert_to_numpy(dit([x, noise_labels]))
    np.testing.assert_allclose(unlabelled, ops.convert_to_numpy(dit([x, noise_labels, null])), atol=1e-6)
    labelled = ops.convert_to_numpy(dit([x, noise_labels, np.array([1, 2, 3], "int32")]))
    assert np.abs(labelled - unlabelled).min() > 0  # every sample moved by its label
    assert dit.class_embedding.embeddings.shape == (11, 32)  # the null class has a learned row


def test_fresh_dit_is_initialized_as_theirs():
    dit = DiT(**MICRO, num_classes=5)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    out = ops.convert_to_numpy(dit([x, np.array([0.0, 300.0], "float32"), np.array([0, 4], "int32")]))
    assert out.shape == (2, 8, 8, 4) and np.all(out == 0)  # zero final layer
    assert dit.class_embedding.embeddings.shape == (5, 32)  # label_dropout 0: no null class
    for layer in [dit.final_layer.linear, dit.final_layer.modulation] + [block.modulation for block in dit.blocks]:
        assert not np.any(ops.convert_to_numpy(layer.kernel))
    kernel = ops.convert_to_numpy(dit.patch_embedding.projection.kernel)
    limit = np.sqrt(6 / (2 * 2 * 4 + 32))  # xavier on the linear map of a flattened patch
    assert 0.8 * limit < np.abs(kernel).max() <= limit
    assert 0.01 < np.std(ops.convert_to_numpy(dit.timestep_dense0.kernel)) < 0.03
    assert not np.any(ops.convert_to_numpy(dit.blocks[0].qkv.bias))


@pytest.mark.parametrize(
    "arguments",
    [
        dict(),
        dict(num_classes=3, label_dropout=0.2, norm="nsln"),
        dict(num_classes=3, label_dropout=0.2, interval_embedding=True),
    ],
    ids=["unconditional", "conditional", "intervals"],
)
def test_keras_file_round_trip(arguments, tmp_path):
    dit = DiT(**MICRO, **arguments)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 8, 8, 4)).astype("float32"), np.array([-50.0, 600.0], "float32")]
    if dit.interval_embedding:
        inputs.append(np.array([0.25, 0.0], "float32"))
    if dit.num_classes:
        inputs.append(np.array([2, 3], "int32"))
    dit(inputs)
    for weight in dit.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1)
    expected = ops.convert_to_numpy(dit(inputs))
    dit.save(tmp_path / "dit.keras")
    restored = keras.models.load_model(tmp_path / "dit.keras")
    assert restored.get_config() == dit.get_config()
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(ops.convert_to_numpy(restored(inputs)), expected, rtol=1e-5, atol=1e-6)


def test_the_interval_embedding_is_a_second_timestep_mlp_summed_into_the_conditioning():
    """MeanFlow's DiT: c = t_emb + h_emb (+ y_emb), both MLPs on the same sinusoid (docs/reference.md "MeanFlow")."""
    labels = dict(num_classes=3, label_dropout=0.1)
    meanflow, plain = DiT(**MICRO, **labels, interval_embedding=True, name="dit"), DiT(**MICRO, **labels, name="dit")
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 4)).astype("float32")
    t, class_labels = np.array([0.2, 0.9], "float32"), np.array([2, 3], "int32")
    assert meanflow([x, t, t]).shape == (2, 8, 8, 4)  # the null class
    plain([x, t])
    assert not any("interval" in weight.path for weight in plain.weights)
    assert (meanflow.interval_dense0.kernel.shape, meanflow.interval_dense1.kernel.shape) == ((256, 32), (32, 32))
    assert 0.01 < np.std(ops.convert_to_numpy(meanflow.interval_dense0.kernel)) < 0.03  # as the timestep MLP
    rng = np.random.default_rng(3)
    for weight in plain.trainable_weights:  # adaLN-Zero: a fresh DiT outputs zeros
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1)
    weights = {weight.path: weight for weight in plain.weights}
    for weight in meanflow.weights:  # the interval MLP a copy of the timestep MLP
        weight.assign(weights[weight.path.replace("interval_dense", "timestep_dense")])
    for weight in plain.timestep_dense1.weights:  # so that t_emb + h_emb at h = t is twice t_emb
        weight.assign(2.0 * weight)
    expected = ops.convert_to_numpy(plain([x, t, class_labels]))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(ops.convert_to_numpy(meanflow([x, t, t, class_labels])), expected, rtol=0, atol=1e-5)
    other = ops.convert_to_numpy(meanflow([x, t, np.array([0.0, 0.5], "float32"), class_labels]))
    assert np.abs(other - expected).min() > 0  # every sample moved by its interval
    symbolic = [keras.KerasTensor((None, 8, 8, 4)), keras.KerasTensor((None,)), keras.KerasTensor((None,))]
    assert DiT(**MICRO, interval_embedding=True)(symbolic).shape == (None, 8, 8, 4)


def test_symbolic_build_as_the_consistency_model_does():
    dit = DiT.from_preset("DiT-smoke", num_classes=10, label_dropout=0.1)
    x, t, y = keras.KerasTensor((None, 16, 16, 4)), keras.KerasTensor((None,)), keras.KerasTensor((None,), "int32")
    assert dit([x, t, y]).shape == (None, 16, 16, 4)
    assert dit([x, t]).shape == (None, 16, 16, 4)  # the null class


def test_a_drop_in_for_the_unet_in_a_consistency_model():
    model = ConsistencyModel(DiT.from_preset("DiT-digits", depth=1), ema_decays=(0.9,))
    model.build((None, 4, 4, 4))
    model.compile(optimizer=RAdam(1e-3))
    data = np.random.default_rng(3).normal(size=(8, 4, 4, 4)).astype("float32") * 0.5
    before = [ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    history = model.fit(NoisePairedDataset(data, batch_size=4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(a, ops.convert_to_numpy(b)) for a, b in zip(before, model.network.trainable_variables))
    assert np.all(np.isfinite(model.sample(2, steps=2, seed=0)))


def test_mixed_bfloat16_computes_in_bfloat16_and_keeps_weights_in_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    dit = DiT(**MICRO, norm="nsln", num_classes=3, label_dropout=0.1)
    x, noise_labels = np.zeros((2, 8, 8, 4), "float32"), np.array([0.0, 1.0], "float32")
    for inputs in ([x, noise_labels], [x, noise_labels, np.array([0, 3], "int32")]):
        out = dit(inputs)
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(v.dtype == "float32" for v in dit.weights)
    assert keras.backend.standardize_dtype(dit.class_embedding(np.array([1, 3])).dtype) == "bfloat16"


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: DiT(**MICRO)([np.zeros((1, 8, 8, 4)), np.zeros((1,)), np.zeros((1,), "int32")]),
         r"unconditional \(num_classes=0\) but received class labels"),
        (lambda: DiT(**MICRO, num_classes=4)([np.zeros((1, 8, 8, 4)), np.zeros((1,))]),
         r"has no null class \(label_dropout=0\): call it on \[x, noise_labels, class_labels\]"),
        (lambda: DiT(**MICRO, interval_embedding=True)([np.zeros((1, 8, 8, 4)), np.zeros((1,))]),
         r"\[x, noise_labels, intervals\]; received 2 inputs\. It was built with `interval_embedding=True`"),
        (lambda: DiT(**MICRO, num_classes=4, interval_embedding=True).build([(None, 8, 8, 4), (None,), (None,)]),
         r"call it on \[x, noise_labels, intervals, class_labels\]"),
        (lambda: DiT(**MICRO).build([(None, 8, 8, 4), (None,), (None,), (None,)]),
         "Only a network built with `interval_embedding=True` takes intervals"),
        (lambda: DiT(**MICRO, label_dropout=0.1), "the network is unconditional"),
        (lambda: DiT(**MICRO, num_classes=-1), "num_classes"),
        (lambda: DiT(**MICRO, num_classes=3, label_dropout=1.0), "label_dropout"),
        (lambda: DiT(**dict(MICRO, patch_size=3)), "patch_size=3 does not divide input_size=8"),
        (lambda: DiT(**dict(MICRO, num_heads=3)), "num_heads=3"),
        (lambda: DiT(**MICRO, norm="group"), "'layer'.*or 'nsln'"),
        (lambda: DiT(**MICRO).build([(None, 16, 16, 4), (None,)]), r"\(8, 8, 4\); received \(16, 16, 4\)"),
        (lambda: DiT.from_preset("XXL/2"), "Unknown DiT preset 'XXL/2'"),
    ],
)
def test_bad_calls_and_arguments(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_presets_take_overrides():
    dit = DiT.from_preset("DiT-S/2", input_size=16, in_channels=8, num_classes=10, label_dropout=0.1)
    assert (dit.depth, dit.hidden_size, dit.num_heads, dit.patch_size) == (12, 384, 6, 2)
    assert (dit.input_size, dit.in_channels, dit.out_channels, dit.num_classes) == (16, 8, 8, 10)
