"""The backend fast paths (keras_lct.backend.fast_paths) give what the plain keras.ops code gives.

On torch these compare two different computations (fused kernels, copy-free
layouts, multi-tensor updates) against Keras' own; on tensorflow, NsLN's
hand-written gradient against autodiff of the plain ops; on jax no fast path
exists and both sides run the same code, which the same tests pin.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct.backend import fast_paths
from keras_lct.backend import process
from keras_lct.layers import Conv2D
from keras_lct.layers import Dense
from keras_lct.layers import NonScalingLayerNormalization
from keras_lct.models import ConsistencyModel
from keras_lct.models import MLPDenoiser
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam

RNG = np.random.default_rng(0)


def value_and_gradients(fn, variables):
    """fn() (a scalar built from Keras variables) and its gradients w.r.t. `variables`."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def stateless(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn()

        value, grads = jax.value_and_grad(stateless)([v.value for v in variables])
        return np.asarray(value), [np.asarray(g) for g in grads]
    if backend == "torch":
        for variable in variables:
            variable.value.grad = None
        value = fn()
        value.backward()
        grads = [ops.convert_to_numpy(v.value.grad) for v in variables]
        for variable in variables:
            variable.value.grad = None
        return value.detach().cpu().numpy(), grads
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = fn()
    grads = tape.gradient(value, [v.value for v in variables])
    return value.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]  # an embedding's: IndexedSlices


def both_paths(fn, variables):
    with fast_paths.use_fast_paths(True):
        fast = value_and_gradients(fn, variables)
    with fast_paths.use_fast_paths(False):
        plain = value_and_gradients(fn, variables)
    return fast, plain


def require_a_fast_path(*backends):
    """Skip where no fast path exists: there both paths run the same code and could not differ."""
    if keras.backend.backend() not in backends:
        pytest.skip(f"{keras.backend.backend()} has no fast path for this: both paths are the same code")


def assert_close(fast, plain, rtol=2e-5, atol=2e-6):
    (fast_value, fast_grads), (plain_value, plain_grads) = fast, plain
    np.testing.assert_allclose(fast_value, plain_value, rtol=rtol, atol=atol)
    assert len(fast_grads) == len(plain_grads)
    for a, b in zip(fast_grads, plain_grads):
        scale = np.abs(b).max() + 1e-12
        np.testing.assert_allclose(a / scale, b / scale, rtol=rtol, atol=atol)


def test_fast_paths_are_on_only_for_torch_and_can_be_switched_off():
    assert fast_paths.fast_paths_enabled() == (keras.backend.backend() == "torch")
    with fast_paths.use_fast_paths(False):
        assert not fast_paths.fast_paths_enabled()
    assert fast_paths.fast_paths_enabled() == (keras.backend.backend() == "torch")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=8, kernel_size=3, padding="same"),
        dict(filters=8, kernel_size=1, padding="same"),
        dict(filters=6, kernel_size=3, padding="valid", dilation_rate=2),
        dict(filters=8, kernel_size=3, padding="same", strides=2),  # Keras' own code
        dict(filters=8, kernel_size=3, padding="same", use_bias=False),
    ],
)
def test_conv2d_equals_keras_conv2d(kwargs):
    x = keras.Variable(RNG.normal(size=(2, 9, 9, 5)).astype("float32"))
    layer = Conv2D(**kwargs, bias_initializer="glorot_uniform")
    layer.build(x.shape)
    reference = keras.layers.Conv2D(**kwargs)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    weights = np.asarray(RNG.normal(size=ops.shape(layer(x))), "float32")
    fast, plain = both_paths(lambda: ops.sum(ops.multiply(layer(x), weights)), [x] + layer.trainable_variables)
    assert_close(fast, plain)
    keras_value, _ = value_and_gradients(lambda: ops.sum(ops.multiply(reference(x), weights)), [x])
    np.testing.assert_allclose(fast[0], keras_value, rtol=2e-5)


@pytest.mark.parametrize("shape", [(5, 7), (2, 6, 7)])
def test_dense_equals_keras_dense(shape):
    x = keras.Variable(RNG.normal(size=shape).astype("float32"))
    layer = Dense(4, activation="silu", bias_initializer="glorot_uniform")
    layer.build(x.shape)
    reference = keras.layers.Dense(4, activation="silu")
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    weights = np.asarray(RNG.normal(size=shape[:-1] + (4,)), "float32")
    fast, plain = both_paths(lambda: ops.sum(ops.multiply(layer(x), weights)), [x] + layer.trainable_variables)
    assert_close(fast, plain)
    keras_value, _ = value_and_gradients(lambda: ops.sum(ops.multiply(reference(x), weights)), [x])
    np.testing.assert_allclose(fast[0], keras_value, rtol=2e-5)


def test_nsln_has_a_fast_path_on_torch_and_tensorflow_that_can_be_switched_off():
    x = RNG.normal(size=(2, 4, 4, 3)).astype("float32")
    beta = np.zeros((4, 4, 3), "float32")
    fast = fast_paths.layer_normalization(x, beta, 1e-5)
    assert (fast is not None) == (keras.backend.backend() in ("torch", "tensorflow"))
    with fast_paths.use_fast_paths(False):
        assert fast_paths.layer_normalization(x, beta, 1e-5) is None


@pytest.mark.parametrize("policy, tolerance", [("float32", 2e-5), ("mixed_bfloat16", 2e-2)])
def test_nsln_fused_equals_plain(policy, tolerance):
    require_a_fast_path("torch", "tensorflow")
    x = keras.Variable((1.0 + 3.0 * RNG.normal(size=(3, 4, 4, 8))).astype("float32"))
    layer = NonScalingLayerNormalization(dtype=policy)
    layer.build(x.shape)
    layer.beta.assign(RNG.normal(size=layer.beta.shape).astype("float32"))
    assert keras.backend.standardize_dtype(layer(x).dtype) == layer.compute_dtype and layer.beta.dtype == "float32"
    weights = np.asarray(RNG.normal(size=x.shape), "float32")
    fast, plain = both_paths(lambda: ops.sum(ops.multiply(ops.cast(layer(x), "float32"), weights)), [x, layer.beta])
    assert_close(fast, plain, rtol=tolerance, atol=tolerance / 10)


def small_model(norm):
    keras.utils.set_random_seed(0)
    network = UNet(img_resolution=8, in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
                   num_blocks=1, attn_resolutions=(4,), channels_per_head=16, norm=norm)
    model = ConsistencyModel(network, num_scales=21)
    model.build((None, 8, 8, 4))
    # Every weight random (zero-initialized output layers would hide most gradients).
    rng = np.random.default_rng(1)
    for variable in network.trainable_variables:
        variable.assign(0.2 * rng.normal(size=variable.shape).astype("float32"))
    return model


@pytest.mark.parametrize("norm", ["nsln", "group"])
def test_training_loss_and_gradients_equal_on_both_paths(norm):
    require_a_fast_path(*(["torch", "tensorflow"] if norm == "nsln" else ["torch"]))  # tensorflow: NsLN's only
    model = small_model(norm)
    clean = RNG.normal(size=(6, 8, 8, 4)).astype("float32")
    noise = RNG.normal(size=(6, 8, 8, 4)).astype("float32")
    variables = model.network.trainable_variables

    def loss():
        return model.compute_loss(x=clean, y=noise, training=False)

    fast, plain = both_paths(loss, variables)
    assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    assert all(np.abs(g).max() > 0 for g in plain[1])


def counted_layer_calls(monkeypatch):
    """A list that grows by one at each run of Keras' `Layer.__call__`."""
    calls = []
    keras_call = keras.layers.Layer.__call__

    def counting_call(self, *args, **kwargs):
        calls.append(self.name)
        return keras_call(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting_call)
    return calls


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_nested_layer_calls_skip_keras_call_on_torch_with_the_same_outputs(monkeypatch, policy):
    keras.utils.set_random_seed(0)
    network = UNet(img_resolution=8, in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
                   num_blocks=1, attn_resolutions=(4,), channels_per_head=16, dropout=0.0, dtype=policy)
    inputs = [RNG.normal(size=(2, 8, 8, 4)).astype("float32"), np.array([0.1, 2.0], "float32")]
    network(inputs)
    for variable in network.trainable_variables:
        variable.assign(0.2 * RNG.normal(size=variable.shape).astype("float32"))
    calls = counted_layer_calls(monkeypatch)
    direct_call_context = fast_paths._direct_call_context
    outputs, layer_calls = {}, {}
    for direct in (True, False):
        calls.clear()
        monkeypatch.setattr(fast_paths, "_direct_call_context", direct_call_context if direct else lambda *a: None)
        outputs[direct] = ops.convert_to_numpy(ops.cast(network(inputs, training=True), "float32"))
        layer_calls[direct] = list(calls)
    assert len(layer_calls[False]) > len(network._flatten_layers(include_self=False))  # all, some twice
    expected = [network.name] if keras.backend.backend() == "torch" else layer_calls[False]
    assert layer_calls[True] == expected
    np.testing.assert_array_equal(outputs[True], outputs[False])  # the same computation, bit for bit


@pytest.mark.parametrize("training", [True, False])
def test_nested_calls_take_the_training_flag_of_the_enclosing_call(training):
    keras.utils.set_random_seed(0)
    network = UNet(img_resolution=8, in_channels=4, out_channels=4, model_channels=16, channel_mult=(1,),
                   num_blocks=1, attn_resolutions=(), channels_per_head=16, dropout=0.5)
    inputs = [RNG.normal(size=(2, 8, 8, 4)).astype("float32"), np.array([0.1, 2.0], "float32")]
    network(inputs)
    for variable in network.trainable_variables:
        variable.assign(0.2 * RNG.normal(size=variable.shape).astype("float32"))
    first, second = (ops.convert_to_numpy(network(inputs, training=training)) for _ in range(2))
    with fast_paths.use_fast_paths(False):
        plain = ops.convert_to_numpy(network(inputs, training=False))
    if training:  # dropout active in every block: two calls differ
        assert np.abs(first - second).max() > 1e-3
    else:
        np.testing.assert_allclose(first, plain, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(second, plain, rtol=1e-4, atol=1e-5)


def test_a_nested_layer_with_a_forward_hook_runs_through_keras(monkeypatch):
    keras.utils.set_random_seed(0)
    network = UNet(img_resolution=8, in_channels=4, out_channels=4, model_channels=16, channel_mult=(1,),
                   num_blocks=1, attn_resolutions=(), channels_per_head=16)
    inputs = [RNG.normal(size=(2, 8, 8, 4)).astype("float32"), np.array([0.1, 2.0], "float32")]
    network(inputs)
    hooked = network._flatten_layers(include_self=False)[-1]
    if keras.backend.backend() == "torch":
        seen = []
        hooked.register_forward_hook(lambda module, args, output: seen.append(module.name))
        network(inputs)
        assert seen == [hooked.name]
    calls = counted_layer_calls(monkeypatch)
    network(inputs)
    assert hooked.name in calls
    if keras.backend.backend() == "torch":  # the others go through Keras' __call__ too
        assert set(calls) == {network.name, hooked.name}


def test_kernels_are_stored_as_torch_convolves_them_and_their_state_follows(tmp_path):
    require_a_fast_path("torch")  # the kernel layout is torch's; tensorflow's NsLN: test_fit_steps_equal_on_both_paths
    batch = RNG.normal(size=(4, 8, 8, 4)).astype("float32")
    models = {}
    for enabled in (True, False):
        with fast_paths.use_fast_paths(enabled):
            models[enabled] = small_model("nsln")
            models[enabled].compile(optimizer=RAdam(1e-3, weight_decay=1e-2))
            models[enabled].train_on_batch(batch)
    stored, plain = models[True], models[False]
    for a, b in zip(stored.variables + stored.optimizer.variables, plain.variables + plain.optimizer.variables):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-4, atol=1e-6)
    kernels = [v for v in stored.network.trainable_variables if len(v.shape) == 4 and v.shape[0] == 3]
    assert kernels
    import torch

    def memory_order(variable):
        return fast_paths.memory_order(variable.value)

    for kernel in kernels:  # (kh, kw, in, out) stored out-major: a channels_last (out, in, kh, kw) weight
        assert memory_order(kernel) == (3, 0, 1, 2)
        assert kernel.value.permute(3, 2, 0, 1).is_contiguous(memory_format=torch.channels_last)
    for states in (stored.optimizer._momentums, stored.optimizer._velocities, stored.ema.averages[0]):
        for variable in stored.network.trainable_variables:
            assert memory_order(states[stored.optimizer._get_variable_index(variable)]) == memory_order(variable)
    assert all(v.value.is_contiguous() for v in plain.network.trainable_variables)

    stored.save(tmp_path / "stored.keras")
    loaded = keras.saving.load_model(tmp_path / "stored.keras")
    for a, b in zip(stored.network.trainable_variables, loaded.network.trainable_variables):
        assert memory_order(a) == memory_order(b)
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


@pytest.mark.compiled_step
def test_fit_steps_equal_on_both_paths():
    """RAdam (both of its branches), the EMA and the step's state, through `fit`."""
    require_a_fast_path("torch", "tensorflow")  # tensorflow: NsLN's
    clean = RNG.normal(size=(8 * 4, 8, 8, 4)).astype("float32")
    results = {}
    for enabled in (True, False):
        with fast_paths.use_fast_paths(enabled):
            model = small_model("nsln")
            model.compile(optimizer=RAdam(1e-3, weight_decay=1e-2))
            history = model.fit(clean, batch_size=8, epochs=2, shuffle=False, verbose=0)  # 8 steps: rho_t > 5 from 6
            results[enabled] = (
                history.history["loss"],
                [ops.convert_to_numpy(v) for v in model.network.trainable_variables],
                [ops.convert_to_numpy(v) for v in model.ema.averages[0]],
            )
    (fast_loss, fast_weights, fast_ema), (plain_loss, plain_weights, plain_ema) = results[True], results[False]
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-4)
    for a, b in zip(fast_weights + fast_ema, plain_weights + plain_ema):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


class _NumberedBatches(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return np.full((4, 3), index, "float32")


def _page_faults_of_large_buffers(count=20, size=4 << 20):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        buffer = np.ones(size // 8)
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_large_allocations_stay_on_the_heap_after_fit_reads_a_py_dataset():
    # On tensorflow, fit turns a PyDataset into a generator dataset, whose first
    # iterator froze malloc's mmap threshold at 128 KiB: every 4 MiB buffer was
    # then mapped and faulted in anew (1,024 faults each); on the heap it is reused.
    model = ConsistencyModel(MLPDenoiser(3, width=8), ema_decays=())
    model.compile(optimizer="sgd")
    model.fit(_NumberedBatches(), epochs=1, verbose=0)
    faults = _page_faults_of_large_buffers()
    assert faults < 2 * (4 << 20) // 4096, f"{faults} page faults for 20 reused 4 MiB buffers"
    pinned = process.keep_large_allocations_on_the_heap()
    assert pinned is (keras.backend.backend() == "tensorflow")
