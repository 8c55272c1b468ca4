"""keras_lct.layers: every layer through run_layer_test, and each formula against numpy."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct import layers
from keras_lct.backend import use_fast_paths
from keras_lct.layers.embedding import check_conditional_inputs
from keras_lct.layers.embedding import split_conditional_inputs
from keras_lct.models import MLPDenoiser
from layer_test_case import run_layer_test


def numpy_of(value):
    return ops.convert_to_numpy(value)


@pytest.mark.parametrize(
    "layer_cls, kwargs, shapes, output_shape, trainable, non_trainable",
    [
        (layers.NonScalingLayerNormalization, {}, [(2, 4, 4, 8)], (2, 4, 4, 8), 1, 0),
        (layers.PositionalEmbedding, {"num_channels": 16}, [(3,)], (3, 16), 0, 0),
        (layers.FourierEmbedding, {"num_channels": 16, "scale": 0.5, "seed": 1}, [(3,)], (3, 16), 0, 1),
        (layers.Resample2D, {"mode": "down"}, [(2, 8, 8, 3)], (2, 4, 4, 3), 0, 0),
        (layers.Resample2D, {"mode": "up"}, [(2, 4, 4, 3)], (2, 8, 8, 3), 0, 0),
        # norm (beta) + qkv (kernel, bias) + proj (kernel, bias)
        (layers.AttentionBlock, {"channels": 64, "num_heads": 2}, [(2, 4, 4, 64)], (2, 4, 4, 64), 5, 0),
        # norm0, conv0 x2, affine x2, norm1, conv1 x2, skip x2
        (layers.UNetBlock, {"in_channels": 8, "out_channels": 16, "emb_channels": 12}, [(2, 8, 8, 8), (2, 12)], (2, 8, 8, 16), 10, 0),
        # group norms hold 2 weights; attention adds 6; down: no skip conv without a channel change
        (
            layers.UNetBlock,
            {"in_channels": 64, "out_channels": 64, "emb_channels": 12, "down": True, "attention": True, "norm": "group"},
            [(2, 8, 8, 64), (2, 12)],
            (2, 4, 4, 64),
            10 + 6,
            0,
        ),
        (layers.UNetBlock, {"in_channels": 8, "out_channels": 8, "emb_channels": 4, "up": True, "norm": "rms"}, [(2, 4, 4, 8), (2, 4)], (2, 8, 8, 8), 8, 0),
        # projection (kernel, bias); the fixed position embedding
        (layers.PatchEmbedding, {"patch_size": 2, "hidden_size": 16}, [(2, 8, 6, 3)], (2, 12, 16), 2, 1),
        # qkv, proj, fc1, fc2, modulation (kernel, bias each); the norms hold no weights
        (layers.DiTBlock, {"hidden_size": 32, "num_heads": 4}, [(2, 16, 32), (2, 32)], (2, 16, 32), 10, 0),
        # + the offsets of the query and key norms (NsLN) or their scales and offsets (layer)
        (layers.DiTBlock, {"hidden_size": 32, "num_heads": 4, "qk_norm": "nsln", "epsilon": 1e-5}, [(2, 16, 32), (2, 32)], (2, 16, 32), 12, 0),
        (layers.DiTBlock, {"hidden_size": 32, "num_heads": 2, "mlp_ratio": 2.0, "qk_norm": "layer"}, [(2, 16, 32), (2, 32)], (2, 16, 32), 14, 0),
        (layers.DiTFinalLayer, {"hidden_size": 32, "patch_size": 2, "out_channels": 4}, [(2, 16, 32), (2, 32)], (2, 16, 16), 4, 0),
    ],
)
def test_layer_contract(layer_cls, kwargs, shapes, output_shape, trainable, non_trainable, tmp_path):
    # Embeddings have no weights to train; their output is still checked.
    run_layer_test(layer_cls, kwargs, shapes, output_shape, trainable, non_trainable, tmp_path, run_training_check=trainable > 0)


def test_nsln_has_no_scale_and_normalizes_each_sample():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 4, 4, 6)) * np.array([1.0, 10.0, 0.1]).reshape(3, 1, 1, 1) + 5).astype("float32")
    layer = layers.NonScalingLayerNormalization()
    y = numpy_of(layer(x))
    assert [w.name for w in layer.weights] == ["beta"] and layer.beta.shape == (4, 4, 6)
    np.testing.assert_allclose(y.reshape(3, -1).mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.reshape(3, -1).var(axis=1), 1.0, rtol=1e-3)
    flat = x.reshape(3, -1).astype("float64")
    expected = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y.reshape(3, -1), expected, rtol=1e-4, atol=1e-5)
    layer.beta.assign(np.full((4, 4, 6), 0.5, "float32"))
    np.testing.assert_allclose(numpy_of(layer(x)).reshape(3, -1), expected + 0.5, rtol=1e-4, atol=1e-5)


def outlier_spread(layer, x, outlier_position):
    """How much one huge value moves the layer's outputs everywhere else."""
    spiked = x.copy()
    spiked[(0,) + outlier_position] = 1e4
    change = np.abs(numpy_of(layer(spiked)) - numpy_of(layer(x)))[0]
    change[outlier_position] = 0.0
    return change.max()


def test_an_outlier_moves_nsln_no_more_than_a_trained_layernorm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 8, 8, 16)).astype("float32")
    nsln = layers.normalization("nsln", 16)
    layer_norm = layers.normalization("layer", 16)
    nsln.build(x.shape)
    layer_norm.build(x.shape)
    # A trained LayerNorm has non-unit scales; the shared statistics times a
    # large gamma amplify the outlier's effect on every other feature.
    layer_norm.gamma.assign(rng.uniform(0.5, 4.0, size=layer_norm.gamma.shape).astype("float32"))
    position = (3, 5, 7)
    nsln_spread, layer_norm_spread = outlier_spread(nsln, x, position), outlier_spread(layer_norm, x, position)
    assert 0 < nsln_spread <= layer_norm_spread, (nsln_spread, layer_norm_spread)
    # And the effect is a per-sample shift/shrink only: bounded by the normalized inputs.
    assert nsln_spread <= np.abs(numpy_of(nsln(x))).max() + 1.0


def numpy_group_norm(x, groups, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups).astype("float64")
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


def numpy_layer_norm(x, eps=1e-5, center=True):
    flat = x.reshape(len(x), -1).astype("float64")
    mean = flat.mean(1, keepdims=True) if center else 0.0
    var = flat.var(1, keepdims=True) if center else (flat**2).mean(1, keepdims=True)
    return ((flat - mean) / np.sqrt(var + eps)).reshape(x.shape)


@pytest.mark.parametrize(
    "kind, expected_fn, weight_shapes",
    [
        ("group", lambda x: numpy_group_norm(x, 16), [(64,), (64,)]),  # min(32, 64 // 4) groups
        ("GN", lambda x: numpy_group_norm(x, 16), [(64,), (64,)]),
        ("instance", lambda x: numpy_group_norm(x, 64), [(64,), (64,)]),
        ("layer", numpy_layer_norm, [(4, 4, 64), (4, 4, 64)]),
        ("rms", lambda x: numpy_layer_norm(x, center=False), [(4, 4, 64)]),
        ("NsLN", numpy_layer_norm, [(4, 4, 64)]),
        ("NsGN", lambda x: numpy_group_norm(x, 16), [(64,)]),  # GroupNorm without its scale
        ("non_scaling_instance", lambda x: numpy_group_norm(x, 64), [(64,)]),
    ],
)
def test_norm_factory_against_numpy(kind, expected_fn, weight_shapes):
    x = (np.random.default_rng(2).normal(size=(2, 4, 4, 64)) * 3 + 1).astype("float32")
    layer = layers.normalization(kind, 64)
    y = numpy_of(layer(x))
    np.testing.assert_allclose(y, expected_fn(x), rtol=2e-3, atol=2e-3)
    assert sorted(tuple(w.shape) for w in layer.trainable_weights) == sorted(weight_shapes)


@pytest.mark.parametrize("kind, groups", [("nsgn", 16), ("nsin", 64)])
def test_non_scaling_group_norms_add_their_offset_per_channel_and_never_scale(kind, groups):
    x = (np.random.default_rng(3).normal(size=(2, 4, 4, 64)) * 3 + 1).astype("float32")
    layer = layers.normalization(kind, 64)
    layer.build(x.shape)
    offset = np.linspace(-1, 1, 64).astype("float32")
    layer.beta.assign(offset)
    np.testing.assert_allclose(numpy_of(layer(x)), numpy_group_norm(x, groups) + offset, rtol=2e-3, atol=2e-3)
    assert not hasattr(layer, "gamma") or layer.gamma is None


def test_group_count_follows_the_authors_rule():
    assert layers.normalization("group", 64).groups == 16
    assert layers.normalization("group", 256).groups == 32
    assert layers.normalization("group", 4).groups == 1


def test_positional_embedding_against_numpy():
    x = np.array([-1553.7, 0.0, 3.2, 1095.5], "float32")
    y = numpy_of(layers.PositionalEmbedding(8)(x))
    frequencies = (1 / 10000) ** (np.arange(4) / 4)
    angles = x[:, None].astype("float64") * frequencies
    np.testing.assert_allclose(y, np.concatenate([np.cos(angles), np.sin(angles)], axis=1), atol=2e-3)
    with_endpoint = numpy_of(layers.PositionalEmbedding(8, endpoint=True)(x[1:3]))
    angles = x[1:3, None].astype("float64") * (1 / 10000) ** (np.arange(4) / 3)
    np.testing.assert_allclose(with_endpoint, np.concatenate([np.cos(angles), np.sin(angles)], axis=1), atol=1e-5)


def test_fourier_embedding_against_its_frequencies():
    layer = layers.FourierEmbedding(6, scale=2.0, seed=3)
    x = np.array([0.1, -0.7], "float32")
    y = numpy_of(layer(x))
    frequencies = numpy_of(layer.frequencies).astype("float64")
    angles = 2 * math.pi * x[:, None] * frequencies
    np.testing.assert_allclose(y, np.concatenate([np.cos(angles), np.sin(angles)], axis=1), atol=1e-5)
    assert 0.3 < np.std(frequencies) < 6.0


def test_resampling_against_numpy():
    x = np.arange(2 * 4 * 4 * 1, dtype="float32").reshape(2, 4, 4, 1)
    down = numpy_of(layers.Resample2D("down")(x))
    np.testing.assert_allclose(down, x.reshape(2, 2, 2, 2, 2, 1).mean(axis=(2, 4)))
    up = numpy_of(layers.Resample2D("up")(x))
    np.testing.assert_allclose(up, x.repeat(2, axis=1).repeat(2, axis=2))


def test_attention_block_against_numpy():
    rng = np.random.default_rng(4)
    layer = layers.AttentionBlock(64, num_heads=2, norm="nsln")
    x = rng.normal(size=(1, 2, 3, 64)).astype("float32")
    layer.build(x.shape)
    for weight in layer.proj.weights:  # undo the zero init to see the attention
        weight.assign(rng.normal(size=weight.shape).astype("float32") * 0.1)
    y = numpy_of(layer(x))
    normalized = numpy_layer_norm(x)
    kernel, bias = (numpy_of(w).astype("float64") for w in layer.qkv.weights)
    qkv = (normalized.reshape(6, 64) @ kernel.reshape(64, 192) + bias).reshape(6, 2, 32, 3)
    q, k, v = qkv[None, ..., 0], qkv[None, ..., 1], qkv[None, ..., 2]
    attended = numpy_attention(q, k, v).reshape(6, 64)
    proj_kernel, proj_bias = (numpy_of(w).astype("float64") for w in layer.proj.weights)
    expected = x.reshape(6, 64) + attended @ proj_kernel.reshape(64, 64) + proj_bias
    np.testing.assert_allclose(y.reshape(6, 64), expected, rtol=1e-3, atol=1e-3)


def numpy_attention(query, key, value):
    """softmax(q k^T / sqrt(d)) v in float64, for (batch, tokens, heads, d) arrays."""
    query, key, value = (np.asarray(t, "float64") for t in (query, key, value))
    logits = np.einsum("bqhc,bkhc->bhqk", query, key) / math.sqrt(query.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhc->bqhc", weights / weights.sum(-1, keepdims=True), value)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_paths", "plain"])
def test_dot_product_attention_against_numpy(fast):
    rng = np.random.default_rng(6)
    query = rng.normal(size=(2, 5, 2, 8)).astype("float32")
    key, value = (rng.normal(size=(2, 7, 2, 8)).astype("float32") for _ in range(2))
    low = [ops.cast(t, "bfloat16") for t in (query, key, value)]
    with use_fast_paths(fast):  # the torch kernel (on torch) and the keras.ops code give the same values
        attended = layers.dot_product_attention(query, key, value)
        attended_low = layers.dot_product_attention(*low)
    np.testing.assert_allclose(numpy_of(attended), numpy_attention(query, key, value), rtol=1e-5, atol=1e-5)
    # bfloat16 in, bfloat16 out; computed in float32, so only the result's rounding is lost
    assert keras.backend.standardize_dtype(attended_low.dtype) == "bfloat16"
    expected_low = numpy_attention(*(numpy_of(ops.cast(t, "float32")) for t in low))
    np.testing.assert_allclose(numpy_of(ops.cast(attended_low, "float32")), expected_low, rtol=1e-2, atol=1e-2)


def test_unet_block_zero_init_makes_it_the_skip_path():
    block = layers.UNetBlock(8, 16, emb_channels=4, down=True)
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 8)).astype("float32")
    y = numpy_of(block(x, np.zeros((2, 4), "float32")))
    skip = numpy_of(block.skip(layers.Resample2D("down")(x)))
    np.testing.assert_allclose(y, skip, rtol=1e-5, atol=1e-5)  # conv1 starts at zero


def test_initialization_is_uniform_within_one_over_sqrt_fan_in():
    block = layers.UNetBlock(32, 32, emb_channels=16)
    block.build((None, 8, 8, 32), (None, 16))
    kernel = numpy_of(block.conv0.kernel)
    limit = 1 / math.sqrt(32 * 9)
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert np.all(numpy_of(block.conv1.kernel) == 0)


@pytest.mark.parametrize("null_class, rows", [(None, 4), ("learned", 5), ("zero", 4)])
def test_class_embedding_rows_null_class_and_file_round_trip(null_class, rows, tmp_path):
    layer = layers.ClassEmbedding(4, 6, null_class=null_class, embeddings_initializer="ones")
    config = layer.get_config()
    assert layers.ClassEmbedding.from_config(config).get_config() == config
    labels = keras.Input(shape=(), dtype="int32")
    model = keras.Model(labels, layer(labels))
    table = np.random.default_rng(7).normal(size=(rows, 6)).astype("float32")
    layer.embeddings.assign(table)
    assert [w.name for w in layer.trainable_weights] == ["embeddings"] and layer.embeddings.shape == (rows, 6)
    known = np.array([3, 0, 2], "int32")
    np.testing.assert_array_equal(numpy_of(model(known)), table[known])
    if null_class is not None:  # the null class, label 4: its own row, or zeros
        expected = table[4] if null_class == "learned" else np.zeros(6, "float32")
        np.testing.assert_array_equal(numpy_of(model(np.array([4], "int32")))[0], expected)
    model.save(tmp_path / "labels.keras")
    np.testing.assert_array_equal(numpy_of(keras.models.load_model(tmp_path / "labels.keras")(known)), table[known])


def test_the_dit_blocks_start_as_the_identity():
    rng = np.random.default_rng(8)
    tokens, conditioning = rng.normal(size=(2, 16, 32)).astype("float32"), rng.normal(size=(2, 32)).astype("float32")
    np.testing.assert_array_equal(numpy_of(layers.DiTBlock(32, 4, qk_norm="nsln")(tokens, conditioning)), tokens)  # zero gates
    assert not np.any(numpy_of(layers.DiTFinalLayer(32, 2, 4)(tokens, conditioning)))


def test_patch_embedding_and_unpatchify_share_the_patch_order():
    rng = np.random.default_rng(9)
    image = rng.normal(size=(2, 4, 6, 3)).astype("float32")  # a 2 x 3 grid of 2 x 2 patches
    patches = image.reshape(2, 2, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 12)  # row-major, (row, column, channel)
    np.testing.assert_array_equal(numpy_of(layers.unpatchify(patches, 2, 3, 2, 3)), image)
    embedding = layers.PatchEmbedding(2, 8)
    tokens = numpy_of(embedding(image))
    kernel, bias = (numpy_of(w).astype("float64") for w in embedding.projection.weights)
    expected = patches @ kernel.reshape(12, 8) + bias + layers.sincos_position_embedding_2d(8, 2, 3)
    np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-5)


def test_sincos_position_embedding_against_numpy():
    table = layers.sincos_position_embedding_2d(8, 2, 3)  # 2 rows, 3 columns; 2 frequencies per half
    frequencies = 1 / 10000 ** (np.arange(2) / 2)
    row, column = 1, 2
    angles_column, angles_row = column * frequencies, row * frequencies
    expected = np.concatenate([np.sin(angles_column), np.cos(angles_column), np.sin(angles_row), np.cos(angles_row)])
    np.testing.assert_allclose(table[row * 3 + column], expected, rtol=1e-6)
    assert table.shape == (6, 8) and table.dtype == np.float32


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: layers.normalization("batch", 8), "Unknown normalization 'batch'"),
        (lambda: layers.AttentionBlock(64, num_heads=3), "num_heads"),
        (lambda: layers.UNetBlock(8, 96, 4, attention=True), "channels_per_head=64"),
        (lambda: layers.UNetBlock(8, 8, 4, up=True, down=True), "not both"),
        (lambda: layers.Resample2D("sideways"), "mode"),
        (lambda: layers.PositionalEmbedding(7), "num_channels"),
        (lambda: layers.ClassEmbedding(0, 8), "num_classes"),
        (lambda: layers.ClassEmbedding(3, 8, null_class="random"), "null_class"),
        (lambda: layers.DiTBlock(32, 3), "num_heads"),
        (lambda: layers.DiTBlock(32, 4, qk_norm="rms"), "qk_norm"),
        (lambda: layers.PatchEmbedding(2, 30), "hidden_size"),
        (lambda: layers.PatchEmbedding(3, 8)(np.zeros((1, 8, 8, 3))), "divisible by 3"),
        (lambda: layers.sincos_position_embedding_2d(6, 2, 2), "divisible by 4"),
    ],
)
def test_bad_arguments(make, words):
    with pytest.raises(ValueError, match=words):
        make()


@pytest.mark.parametrize(
    "num_classes, label_dropout, given, expected",
    [
        (0, 0.0, ["x", "t", "h"], ("x", "t", "h", None)),
        (3, 0.0, ["x", "t", "h", "y"], ("x", "t", "h", "y")),
        (3, 0.1, ["x", "t", "h"], ("x", "t", "h", "null")),  # no labels: the null class
    ],
)
def test_conditional_inputs_split_with_intervals(num_classes, label_dropout, given, expected):
    tensors = {"x": np.zeros((2, 5), "float32"), "t": np.array([0.5, 0.9]), "h": np.array([0.1, 0.0]), "y": np.array([2, 0])}
    split = split_conditional_inputs([tensors[name] for name in given], num_classes, label_dropout, "Net", True)
    for value, name in zip(split, expected):
        if name is None:
            assert value is None
        elif name == "null":
            np.testing.assert_array_equal(numpy_of(value), [num_classes] * 2)
        else:
            assert value is tensors[name]
    assert split_conditional_inputs([tensors["x"], tensors["t"]], 0, 0.0, "Net")[2:] == (None, None)


@pytest.mark.parametrize(
    "count, num_classes, label_dropout, interval_embedding, words",
    [
        (2, 0, 0.0, True, r"takes the inputs \[x, noise_labels, intervals\]; received 2 inputs\. .*pass the intervals"),
        (2, 3, 0.1, True, r"\[x, noise_labels, intervals, class_labels\] or \[x, noise_labels, intervals\] \(the null"),
        (4, 0, 0.0, True, r"unconditional \(num_classes=0\) but received class labels: call it on \[x, noise_labels, intervals\]"),
        (3, 3, 0.0, True, r"no null class \(label_dropout=0\): call it on \[x, noise_labels, intervals, class_labels\]"),
        (4, 3, 0.0, False, r"received 4 inputs\. Only a network built with `interval_embedding=True` takes intervals"),
        (3, 0, 0.0, False, r"received class labels: .*or with `interval_embedding=True` to take intervals"),
        (5, 3, 0.1, True, r"received 5 inputs\. Call it on a list of these tensors"),
    ],
)
def test_conditional_inputs_name_the_list_to_pass(count, num_classes, label_dropout, interval_embedding, words):
    with pytest.raises(ValueError, match=words):
        check_conditional_inputs([(None,)] * count, num_classes, label_dropout, "Net", interval_embedding)


@pytest.mark.parametrize("arguments", [dict(), dict(num_classes=3, label_dropout=0.1)], ids=["unconditional", "conditional"])
def test_mlp_denoiser_takes_intervals(arguments, tmp_path):
    network = MLPDenoiser(3, width=8, depth=1, interval_embedding=True, **arguments)
    rng = np.random.default_rng(10)
    x, noise_labels = rng.normal(size=(2, 3)).astype("float32"), np.array([-300.0, 200.0], "float32")
    labels = [np.array([1, 3], "int32")] if network.num_classes else []
    assert network([x, noise_labels, np.zeros(2, "float32")] + labels).shape == (2, 3)
    for weight in network.weights:  # the output projection starts at zero
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    assert {"interval_embedding_0", "interval_embedding_1"} <= {layer.name for layer in network.layers}
    short, long = ([numpy_of(network([x, noise_labels, np.full(2, h, "float32")] + labels)) for h in (0.0, 1.0)])
    assert np.abs(short - long).min() > 0  # every sample moved by its interval
    network.save(tmp_path / "mlp.keras")
    restored = keras.models.load_model(tmp_path / "mlp.keras")
    assert restored.interval_embedding and restored.get_config() == network.get_config()
    np.testing.assert_allclose(numpy_of(restored([x, noise_labels, np.ones(2, "float32")] + labels)), long, rtol=1e-5, atol=1e-5)
    plain = MLPDenoiser(3, width=8, depth=1, **arguments)
    plain([x, noise_labels] + labels)
    assert not plain.interval_embedding and not any("interval" in weight.path for weight in plain.weights)
