"""The torch fast paths of the training step: kernels, memory layouts, direct nested calls.

Everything else in keras-lct is written once with `keras.ops`, and that code
stays the reference. The functions here compute the same values on the torch
backend without what eager Keras costs there; each returns None where it does
not apply (another backend, another layout, fast paths switched off), and the
caller then runs its plain `keras.ops` code. jax needs none of them: XLA fuses
the plain code and frees what the backward does not read. tensorflow takes
one, NsLN's (`layer_normalization`): its gradient there keeps one full-size
tensor per layer instead of two, which lowers the step's peak memory.

- `conv2d`: torch convolves NCHW, so Keras' torch `conv` copies every
  channels_last input to a contiguous NCHW tensor and then back to
  channels_last memory, per convolution, forward and backward. A permuted
  view of a contiguous NHWC tensor already *is* an NCHW tensor in
  channels_last memory, which oneDNN convolves natively: no copy at all.
- `dense`: a biased linear layer as one `addmm` (product and bias in one
  kernel) instead of a matmul and a separate broadcast add, forward and
  backward (the DiT's linear layers: ~6% of a small DiT's torch step).
- `layer_normalization`, `dot_product_attention`: one fused kernel each
  instead of a sequence of ops (moments / rsqrt / ...; einsum / softmax /
  einsum); `resample_2x` on channels_last memory instead of two copies.
- `no_gradient`: the stop-gradient target forward without recording an
  autograd graph (torch `no_grad`), so its activations are freed as it goes.
- `store_for_convolution`, `share_memory_layout`: `conv2d`'s kernels are
  stored in the memory order torch convolves with, so that no forward or
  backward call copies them; their optimizer and EMA state follow.
- `DirectNestedCall`: a mixin of the layers of `keras_lct.layers` by which
  a call from within another layer's call goes straight to `call` where
  Keras' `Layer.__call__` would only repeat its per-call work (~50 us).
- `exponential_moving_average`, `radam_update`: the EMA and RAdam updates of
  all variables in a few multi-tensor (`torch._foreach_*`) kernels instead of
  a handful of ops per variable (RAdam group by group, each group small
  enough to stay in the CPU's cache through its five passes).

`use_fast_paths(False)` switches all of them off (the tests check that both
paths give the same loss, gradients and updates).

Forward mode: while `keras_lct.backend.forward_mode.jvp` runs a function
(`forward_mode()` is on), the fast paths without a forward-mode rule step
aside for the plain code: `dot_product_attention` (torch's fused attention
kernels, flash and memory-efficient, have no forward-mode derivative). The
others are differentiated in forward mode as they are (tests/test_jvp.py).
"""

import contextlib
import threading

import keras
from keras import ops
from keras.src.backend.common import global_state  # Keras' call context and autocast scope (DirectNestedCall)


class _ThreadState(threading.local):
    """Per-thread switches; the class attributes are every thread's defaults, so that the
    attributes always exist (torch.compile guards on them: one present from the start
    keeps a compiled graph valid after a `forward_mode()` has come and gone)."""

    enabled = True
    forward_mode = False


_STATE = _ThreadState()


def _switched_on():
    return _STATE.enabled


def fast_paths_enabled():
    """Whether the torch fast paths are active (torch backend, not switched off)."""
    return _switched_on() and keras.backend.backend() == "torch"


@contextlib.contextmanager
def use_fast_paths(enabled=True):
    """Context that turns the backend fast paths on or off (for tests, debugging).

    Example:
    ```python
    with keras_lct.backend.use_fast_paths(False):
        loss = model.compute_loss(x)        # the plain keras.ops code
    ```
    """
    previous = _STATE.enabled
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = previous


@contextlib.contextmanager
def forward_mode():
    """Context in which a JVP is traced: the fast paths without a forward-mode rule step aside.

    Entered by `keras_lct.backend.forward_mode.jvp` around the function it
    differentiates; a Python flag, so it holds where the function is traced
    (jax's jit, tf.function) and where it runs eagerly (torch).
    """
    previous = _STATE.forward_mode
    _STATE.forward_mode = True
    try:
        yield
    finally:
        _STATE.forward_mode = previous


def in_forward_mode():
    """Whether a JVP is being traced (within `forward_mode()`)."""
    return _STATE.forward_mode


def _channels_last_tensor(inputs):
    """The torch tensor of a rank-4 contiguous NHWC input, or None."""
    if not fast_paths_enabled() or len(inputs.shape) != 4:
        return None
    x = ops.convert_to_tensor(inputs)
    return x if x.is_contiguous() else None


def conv2d(inputs, kernel, bias, strides, padding, dilation_rate):
    """`ops.conv(inputs, kernel, ...) + bias` for channels_last inputs and a
    (kh, kw, in, out) kernel, or None (strided or even-sized 'same')."""
    x = _channels_last_tensor(inputs)
    if x is None:
        return None
    if padding == "valid":
        torch_padding = 0
    elif all(stride == 1 for stride in strides) and all(size % 2 for size in kernel.shape[:2]):
        torch_padding = tuple(rate * (size - 1) // 2 for size, rate in zip(kernel.shape[:2], dilation_rate))
    else:
        return None
    import torch.nn.functional as F

    weight = ops.convert_to_tensor(kernel).permute(3, 2, 0, 1)
    bias = None if bias is None else ops.convert_to_tensor(bias)
    outputs = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, tuple(strides), torch_padding, tuple(dilation_rate))
    return outputs.permute(0, 2, 3, 1)


def dense(inputs, kernel, bias):
    """`ops.matmul(inputs, kernel) + bias` for a (in, out) kernel, in one torch `addmm`, or None.

    Inputs of any rank >= 2 are flattened to (rows, in) and back (a view of a
    contiguous tensor: no copy).
    """
    if not fast_paths_enabled() or bias is None or len(inputs.shape) < 2:
        return None
    import torch

    x = ops.convert_to_tensor(inputs)
    outputs = torch.addmm(ops.convert_to_tensor(bias), x.reshape(-1, x.shape[-1]), ops.convert_to_tensor(kernel))
    return outputs.reshape(*x.shape[:-1], outputs.shape[-1])


def store_for_convolution(kernel):
    """Stores a (kh, kw, in, out) kernel variable in the memory order torch convolves with (torch).

    Same shape and values, memory ordered (out, kh, kw, in): the
    permuted (out, in, kh, kw) view that `conv2d` hands torch is then a
    channels_last weight, the layout oneDNN convolves channels_last
    activations with, so no call copies the kernel, and the kernel's
    gradient comes back in the variable's own layout. Keras' assignments
    (`assign`, `load_weights`) copy into the variable and keep its layout.
    """
    if not fast_paths_enabled():
        return
    parameter = kernel.value
    parameter.data = parameter.data.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)


def memory_order(tensor):
    """The dimensions of a torch tensor, from the slowest to the fastest varying in memory."""
    return tuple(sorted(range(tensor.dim()), key=lambda dim: -tensor.stride(dim)))


def share_memory_layout(variables, references):
    """Gives each variable the memory layout of its reference of the same shape (torch).

    For state kept per variable (optimizer moments, EMA copies):
    elementwise updates between tensors of different memory orders run
    ~3x slower than between tensors of one order.
    """
    if keras.backend.backend() != "torch":
        return
    import torch

    for variable, reference in zip(variables, references):
        parameter, layout = variable.value, reference.value
        if parameter.shape == layout.shape and parameter.stride() != layout.stride():
            parameter.data = torch.empty_like(layout.data, dtype=parameter.dtype).copy_(parameter.data)


class DirectNestedCall:
    """Layer mixin: on torch, a call from within another layer's call runs `call` directly.

    Keras' `Layer.__call__` (input conversion, signature binding, build and
    input checks, name and autocast scopes, masks) costs ~50 µs per call on
    top of `call` in eager torch; the `tiny` UNet makes ~140 nested calls
    per forward, ~10% of its training step at batch 8. Where that work would
    change nothing (`_direct_call_context`), the call goes straight to
    `call`, with the `training` flag resolved as Keras resolves it. Top-level
    and symbolic calls, other backends and `use_fast_paths(False)` take
    Keras' path; a nested call skips only the input-spec check of a built
    layer (a wrong shape then fails in torch's kernel, which names it).

    Example:
    ```python
    class Conv2D(fast_paths.DirectNestedCall, keras.layers.Conv2D):
        pass  # first base: its `__call__` comes before Keras'
    ```
    """

    def __call__(self, *args, **kwargs):
        context = _direct_call_context(self, args, kwargs)
        if context is None:
            return super().__call__(*args, **kwargs)
        training = kwargs.pop("training", None)  # resolved as Keras does: the call's own, else the context's
        if training is None:
            training = context.training
        if training is not None and self._call_has_training_arg:
            kwargs["training"] = training
        return self.call(*args, **kwargs)


def _direct_call_context(layer, args, kwargs):
    """The enclosing Keras call context when `layer.__call__(*args, **kwargs)` would do no more
    than `layer.call` (with that context's `training`); None otherwise."""
    if not layer.built or (kwargs and set(kwargs) != {"training"}) or not fast_paths_enabled():
        return None
    import torch

    context = global_state.get_global_attribute("current_call_ctx")
    if context is None:  # a top-level call: Keras' path converts and checks its inputs
        return None
    input_dtype = layer.input_dtype
    for value in args:
        if (
            not isinstance(value, torch.Tensor)
            or value.dtype != getattr(torch, input_dtype, None)
            or getattr(value, "_keras_mask", None) is not None
        ):
            return None
    scope = global_state.get_global_attribute("autocast_scope")
    compute_dtype = layer.compute_dtype
    same_scope = (
        compute_dtype == layer.variable_dtype if scope is None else layer.autocast and scope.dtype == compute_dtype
    )
    if (
        not same_scope
        or layer.activity_regularizer is not None
        or layer.quantization_mode is not None
        or layer._remat_mode
        or layer._forward_hooks
        or layer._forward_pre_hooks
        or torch.nn.modules.module._global_forward_hooks
        or torch.nn.modules.module._global_forward_pre_hooks
    ):
        return None
    return context


def layer_normalization(inputs, beta, epsilon):
    """Normalization over all non-batch axes, no scale, plus `beta`; or None.

    torch: `F.layer_norm`, in the dtype of `inputs` (its kernel accumulates
    reduced precision in float32). tensorflow: in float32, with a gradient
    that keeps only the input and two statistics per sample (autodiff of the
    plain ops also keeps the centered input, a second full-size tensor per
    NsLN, until the backward).
    """
    if not _switched_on():
        return None
    if keras.backend.backend() == "torch":
        import torch.nn.functional as F

        x = ops.convert_to_tensor(inputs)
        return F.layer_norm(x, tuple(x.shape[1:]), None, ops.convert_to_tensor(beta).to(x.dtype), epsilon)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        axes = list(range(1, len(inputs.shape)))

        @tf.custom_gradient
        def normalize(x):
            mean, variance = tf.nn.moments(x, axes, keepdims=True)
            inverse_std = tf.math.rsqrt(variance + epsilon)

            def standardized():  # recomputed in the backward rather than kept from the forward
                return (x - mean) * inverse_std

            def gradient(upstream):
                normalized = standardized()
                upstream_mean = tf.reduce_mean(upstream, axes, keepdims=True)
                upstream_along_normalized = tf.reduce_mean(upstream * normalized, axes, keepdims=True)
                return inverse_std * (upstream - upstream_mean - normalized * upstream_along_normalized)

            return standardized(), gradient

        return normalize(tf.cast(inputs, "float32")) + tf.cast(beta, "float32")
    return None


def resample_2x(inputs, mode):
    """2x2 average pooling (`mode="down"`) or nearest x2 upsampling (`"up"`) of
    channels_last `inputs`, on their channels_last memory; or None."""
    x = _channels_last_tensor(inputs)
    if x is None:
        return None
    import torch.nn.functional as F

    x = x.permute(0, 3, 1, 2)
    y = F.avg_pool2d(x, 2) if mode == "down" else F.interpolate(x, scale_factor=2, mode="nearest")
    return y.permute(0, 2, 3, 1)


def dot_product_attention(query, key, value):
    """`softmax(q k^T / sqrt(d)) v` for (batch, tokens, heads, d) inputs, in
    float32, by torch's fused attention kernel; returned as (batch, tokens,
    heads, d) in the dtype of `value`; or None. The kernel of
    `keras_lct.layers.core.dot_product_attention`, whose `keras.ops` code is the reference.
    None in `forward_mode()`: torch's fused kernels have no forward-mode derivative."""
    if not fast_paths_enabled() or in_forward_mode():
        return None
    import torch.nn.functional as F

    dtype = ops.convert_to_tensor(value).dtype
    query, key, value = (ops.convert_to_tensor(t).float().transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(query, key, value).transpose(1, 2).to(dtype)


def no_gradient():
    """Context for a forward whose result is only used under `stop_gradient`.

    torch: `torch.no_grad()`; otherwise a no-op (jax and tensorflow drop what
    no gradient needs when they compile the step).
    """
    if fast_paths_enabled():
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def exponential_moving_average(averages, variables, decay):
    """`average <- decay average + (1 - decay) variable` in place, for Keras
    variables; returns True, or None when the fast path does not apply."""
    if not fast_paths_enabled():
        return None
    import torch

    with torch.no_grad():
        torch._foreach_lerp_([a.value for a in averages], [v.value for v in variables], 1.0 - float(decay))
    return True


def radam_update(variables, momentums, velocities, gradients, step_factors, beta_1, beta_2, epsilon, weight_decay):
    """One RAdam step over all variables in multi-tensor kernels, with the
    scalar `step_factors` of `keras_lct.optimizers.RAdam._step_factors`;
    torch only (the caller checks `fast_paths_enabled()`)."""
    import torch

    momentum_step, adaptive_factor, adaptive = (float(ops.convert_to_numpy(f)) for f in step_factors)
    params = [variable.value for variable in variables]
    momentums = [momentum.value for momentum in momentums]
    velocities = [velocity.value for velocity in velocities]
    gradients = [ops.convert_to_tensor(g).to(p.dtype) for g, p in zip(gradients, params)]
    with torch.no_grad():
        for group in _cache_sized_groups(params):
            params_, momentums_, velocities_, gradients_ = (
                tensors[group] for tensors in (params, momentums, velocities, gradients)
            )
            if weight_decay:
                gradients_ = torch._foreach_add(gradients_, params_, alpha=weight_decay)
            torch._foreach_lerp_(momentums_, gradients_, 1.0 - beta_1)
            torch._foreach_mul_(velocities_, beta_2)
            torch._foreach_addcmul_(velocities_, gradients_, gradients_, value=1.0 - beta_2)
            if adaptive:
                denominators = torch._foreach_sqrt(velocities_)
                torch._foreach_add_(denominators, epsilon)
                torch._foreach_addcdiv_(params_, momentums_, denominators, value=-momentum_step * adaptive_factor)
            else:
                torch._foreach_add_(params_, momentums_, alpha=-momentum_step)


def _cache_sized_groups(tensors, group_bytes=1 << 20):
    """Slices of `tensors`, each ending once `group_bytes` are reached.

    The RAdam update reads and writes each variable five times: over all
    variables at once (a `small` UNet's state is 4 x 100 MiB) every pass
    streams the whole state through memory, and its temporaries are fresh
    memory; group by group, a group's tensors stay in the CPU's cache across
    the passes (2x faster at `small`: docs/benchmarks.md).
    """
    start, size = 0, 0
    for index, tensor in enumerate(tensors):
        size += tensor.numel() * tensor.element_size()
        if size >= group_bytes:
            yield slice(start, index + 1)
            start, size = index + 1, 0
    if start < len(tensors):
        yield slice(start, len(tensors))
