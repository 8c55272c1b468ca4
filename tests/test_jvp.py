"""Forward mode through the networks: `keras_lct.backend.forward_mode.jvp` on every backend.

MeanFlow's target needs du/dt, a JVP of the network (`keras.ops.linalg.jvp`: jax.jvp,
torch.func.jvp, tensorflow's ForwardAccumulator), and its training needs the JVP's primal
output to carry the plain call's gradient. Each network here (a UNet with attention, NsLN
and GroupNorm; a DiT with LayerNorm and NsLN query-key norms) has random weights everywhere,
the zero-initialized layers included, so that every layer's derivative shows in the output.
"""

import collections

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct.backend import compiled
from keras_lct.backend import fast_paths
from keras_lct.backend import forward_mode
from keras_lct.layers import dot_product_attention
from keras_lct.models import DiT
from keras_lct.models import UNet

BATCH = 2
UNET = dict(
    img_resolution=8, in_channels=2, out_channels=2, model_channels=8, channel_mult=(1, 2), num_blocks=1,
    attn_resolutions=(4,), channels_per_head=8,
)
DIT = dict(input_size=4, patch_size=2, in_channels=2, hidden_size=32, depth=1, num_heads=2, qk_norm=True)
# name: (network, whether it takes MeanFlow's interval h after t, its class count)
NETWORKS = {
    "unet_nsln_interval": lambda: (UNet(norm="nsln", interval_embedding=True, **UNET), True, 0),
    "unet_group": lambda: (UNet(norm="group", **UNET), False, 0),
    "dit_layer": lambda: (DiT(norm="layer", **DIT), False, 0),
    "dit_nsln_interval_labels": lambda: (DiT(norm="nsln", interval_embedding=True, num_classes=3, **DIT), True, 3),
}

Case = collections.namedtuple("Case", "network primals labels")


@pytest.fixture(scope="module", params=list(NETWORKS))
def case(request):
    """A built network with random weights, its differentiated inputs `(x, t[, h])` and its fixed labels."""
    rng = np.random.default_rng(0)
    network, takes_interval, num_classes = NETWORKS[request.param]()
    size = network.img_resolution if isinstance(network, UNet) else network.input_size
    x = rng.normal(size=(BATCH, size, size, 2)).astype("float32")
    times = [rng.uniform(0.2, 0.9, size=(BATCH,)).astype("float32") for _ in range(1 + takes_interval)]
    labels = [rng.integers(0, num_classes, size=(BATCH,)).astype("int32")] if num_classes else []
    network([x, *times, *labels])
    for variable in network.trainable_variables:  # kernels of unit gain: a smooth function of the inputs
        std = np.prod(variable.shape[:-1]) ** -0.5 if len(variable.shape) > 1 else 0.3
        variable.assign(rng.normal(0.0, std, size=variable.shape).astype("float32"))
    return Case(network, (x, *times), labels)


def network_function(case, call=None):
    """The network (or `call`, a stand-in for it) as a function of its differentiated inputs, the
    labels fixed: what a JVP takes."""
    call = case.network if call is None else call
    return lambda *inputs: call([*inputs, *case.labels])


def tangent_directions(case):
    """Random tangents along each input alone, then along all at once."""
    rng = np.random.default_rng(1)
    tangents = [rng.normal(size=np.shape(p)).astype("float32") for p in case.primals]
    alone = [[t if i == j else np.zeros_like(t) for j, t in enumerate(tangents)] for i in range(len(tangents))]
    return alone + [tangents]


def central_difference(function, primals, tangents, eps=5e-2):
    """The directional derivative by the 4-point central difference (error O(eps^4)), in float64
    from the float32 outputs: (8 (f(p + e d) - f(p - e d)) - (f(p + 2e d) - f(p - 2e d))) / 12 e."""
    def at(step):
        moved = [p + step * d for p, d in zip(primals, tangents)]
        return ops.convert_to_numpy(function(*moved)).astype("float64")

    return (8 * (at(eps) - at(-eps)) - (at(2 * eps) - at(-2 * eps))) / (12 * eps)


def assert_relatively_close(actual, expected, tolerance):
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


def test_jvp_equals_central_differences_and_its_primal_the_plain_call(case):
    function = network_function(case)
    plain = ops.convert_to_numpy(function(*case.primals))
    for tangents in tangent_directions(case):
        outputs, output_tangents = forward_mode.jvp(function, case.primals, tangents)
        np.testing.assert_allclose(ops.convert_to_numpy(outputs), plain, rtol=1e-5, atol=1e-5)
        expected = central_difference(function, case.primals, tangents)
        assert np.linalg.norm(expected) > 1e-3 * np.linalg.norm(plain)  # every input moves the output
        assert_relatively_close(ops.convert_to_numpy(output_tangents), expected, 1e-3)


def meanflow_like_loss(function, primals, tangents):
    """mean((u - stop_gradient(u - du))^2) with u, du from the JVP: the shape of MeanFlow's loss."""
    u, du = forward_mode.jvp(function, primals, tangents)
    return ops.mean(ops.square(u - ops.stop_gradient(u - du)))


def plain_loss(function, primals, target):
    return ops.mean(ops.square(function(*primals) - ops.convert_to_tensor(target)))


def gradients(network, loss_of, jit_compile=None):
    """loss_of(call) and its gradients w.r.t. the network's trainable variables, by the backend's
    own machinery; `call(inputs)` runs the network (jax: a stateless call of traced weights).

    jit_compile: tensorflow's step in a tf.function of this `jit_compile` (True: XLA); None:
    eagerly. jax always runs under jax.jit, as its training step does (op by op, jax.grad takes
    ~10 s a network here).
    """
    variables = network.trainable_variables
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        non_trainable = [v.value for v in network.non_trainable_variables]

        def loss(trainable):
            return loss_of(lambda inputs: network.stateless_call(trainable, non_trainable, inputs)[0])

        value, grads = jax.jit(jax.value_and_grad(loss))([v.value for v in variables])
        return float(value), [np.asarray(g) for g in grads]
    if backend == "torch":
        for variable in variables:
            variable.value.grad = None
        value = loss_of(network)
        value.backward()
        grads = [ops.convert_to_numpy(v.value.grad) for v in variables]
        for variable in variables:
            variable.value.grad = None
        return float(ops.convert_to_numpy(value)), grads
    import tensorflow as tf

    def value_and_grad():
        with tf.GradientTape() as tape:
            value = loss_of(network)
        return value, tape.gradient(value, [v.value for v in variables])

    if jit_compile is not None:
        value_and_grad = tf.function(value_and_grad, jit_compile=jit_compile)
    value, grads = value_and_grad()
    return float(value), [tf.convert_to_tensor(g).numpy() for g in grads]  # a class table's: IndexedSlices


def assert_same_gradients(actual, expected):
    (actual_value, actual_grads), (expected_value, expected_grads) = actual, expected
    np.testing.assert_allclose(actual_value, expected_value, rtol=1e-4)
    assert len(actual_grads) == len(expected_grads)
    # Against the largest gradient: some are zero but for rounding (a key norm's offset moves
    # every logit of a query alike, which the softmax ignores).
    scale = max(np.abs(b).max() for b in expected_grads)
    for a, b in zip(actual_grads, expected_grads):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


# One UNet and one DiT: the gradient tests compile a step per network (the central differences above
# cover every network's forward mode).
@pytest.mark.parametrize("case", ["unet_nsln_interval", "dit_nsln_interval_labels"], indirect=True)
def test_the_jvp_primal_carries_the_plain_calls_gradient_and_the_stopped_tangent_none(case):
    tangents = tangent_directions(case)[-1]
    function = network_function(case)
    u, du = forward_mode.jvp(function, case.primals, tangents)
    target = ops.convert_to_numpy(u) - ops.convert_to_numpy(du)

    through_jvp = gradients(
        case.network, lambda call: meanflow_like_loss(network_function(case, call), case.primals, tangents)
    )
    plain = gradients(case.network, lambda call: plain_loss(network_function(case, call), case.primals, target))
    assert through_jvp[0] > 0 and any(np.abs(g).max() > 0 for g in plain[1])
    assert_same_gradients(through_jvp, plain)


@pytest.mark.compiled_step
@pytest.mark.parametrize("case", ["dit_nsln_interval_labels"], indirect=True)  # attention, NsLN, labels, interval
def test_the_jvp_and_its_gradient_in_a_compiled_step(case):
    """tf.function with and without XLA; torch with jit_compile: the network's compiled caller,
    which runs the JVP's call eagerly and never hands it to dynamo (its code would be marked skipped)."""
    if keras.backend.backend() == "jax":
        pytest.skip("jax: the test above runs its step under jax.jit already")
    tangents = tangent_directions(case)[-1]

    def loss_of(call):
        return meanflow_like_loss(network_function(case, call), case.primals, tangents)

    eager = gradients(case.network, loss_of)
    if keras.backend.backend() == "torch":
        from torch._dynamo.utils import counters

        caller = compiled.network_caller(case.network, jit_compile=True)
        frames = sum(counters["frames"].values())
        assert_same_gradients(gradients(case.network, lambda call: loss_of(caller)), eager)
        assert sum(counters["frames"].values()) == frames, "dynamo was handed a call inside the JVP"
    else:
        for jit_compile in (False, True):
            assert_same_gradients(gradients(case.network, loss_of, jit_compile=jit_compile), eager)


def test_no_gradient_leaves_the_jvp_as_it_is(case):
    tangents = tangent_directions(case)[-1]
    outputs, output_tangents = forward_mode.jvp(network_function(case), case.primals, tangents)
    with fast_paths.no_gradient():
        quiet_outputs, quiet_tangents = forward_mode.jvp(network_function(case), case.primals, tangents)
    assert_relatively_close(ops.convert_to_numpy(quiet_outputs), ops.convert_to_numpy(outputs), 1e-5)
    assert_relatively_close(ops.convert_to_numpy(quiet_tangents), ops.convert_to_numpy(output_tangents), 1e-5)


def test_the_fused_attention_steps_aside_only_in_forward_mode():
    q, k, v = (np.random.default_rng(i).normal(size=(2, 6, 2, 4)).astype("float32") for i in range(3))
    assert (fast_paths.dot_product_attention(q, k, v) is not None) == fast_paths.fast_paths_enabled()
    assert not fast_paths.in_forward_mode()
    with pytest.raises(RuntimeError):
        with fast_paths.forward_mode():
            assert fast_paths.in_forward_mode()
            assert fast_paths.dot_product_attention(q, k, v) is None
            raise RuntimeError("the flag must fall back on the way out")
    assert not fast_paths.in_forward_mode()
    # The attention JVP itself, along q only, against its central difference.
    dq = np.random.default_rng(3).normal(size=q.shape).astype("float32")
    _, attended_tangent = forward_mode.jvp(lambda query: dot_product_attention(query, k, v), (q,), (dq,))
    expected = central_difference(lambda query: dot_product_attention(query, k, v), (q,), (dq,))
    assert_relatively_close(ops.convert_to_numpy(attended_tangent), expected, 1e-3)


def test_an_output_independent_of_the_primals_gets_a_zero_tangent():
    x = np.ones((2, 3), "float32")
    outputs, (independent, dependent) = forward_mode.jvp(lambda x: (ops.zeros((2,)), 2.0 * x), (x,), (x,))
    np.testing.assert_array_equal(ops.convert_to_numpy(independent), np.zeros(2))
    np.testing.assert_allclose(ops.convert_to_numpy(dependent), 2.0 * x)


def test_one_tangent_per_primal_or_a_clear_error():
    x = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match="one tangent per primal.*2 primals and 1 tangents.*every input"):
        forward_mode.jvp(lambda a, b: a * b, (x, x), (x,))
