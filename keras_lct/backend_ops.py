"""Backend-specific fast paths of the training step, in one place.

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
  Keras' `Layer.__call__` would only repeat its per-call work (~50 µs).
- `exponential_moving_average`, `radam_update`: the EMA and RAdam updates of
  all variables in a few multi-tensor (`torch._foreach_*`) kernels instead of
  a handful of ops per variable (RAdam group by group, each group small
  enough to stay in the CPU's cache through its five passes).

`use_fast_paths(False)` switches all of them off (the tests check that both
paths give the same loss, gradients and updates).

One process-wide setting is also here, `keep_large_allocations_on_the_heap`:
tensorflow's first generator dataset (every `PyDataset` that `fit` reads on
tensorflow becomes one) sets glibc's trim threshold to 128 KiB, which freezes
malloc's mmap threshold at its initial 128 KiB, so every activation of every
step is then mapped, page-faulted in and unmapped again: the step on a
`NoisePairedDataset` ran at half speed. Importing keras-lct on tensorflow
restores glibc's steady state once, before any dataset is read.

The backend-specific parts of the training step's reliability are here too:
`state_kept_through_fit` (jax: the state survives a failed first step),
`interrupts_delivered` (jax: a Ctrl-C is not lost in its garbage-collector
callback), `after` (tensorflow: state updates run only once the loss exists,
so a batch that never arrived leaves the step counter and EMA alone) and
`check_sample_shape` (tensorflow: a run-time shape check that gates the batch,
for sample shapes unknown when the step is traced). `step_can_be_jit_compiled`
says where `jit_compile=True` can compile the step (not torch: torch.compile).

And data parallelism's backend parts: `replica_position` (which part of an
update this replica computes), `scaled_for_replica_sum` (tensorflow sums the
replicas' gradients), `gradients_averaged_over_processes` (torch under
torchrun, which Keras' released torch backend does not cover).
"""

import contextlib
import ctypes
import functools
import signal
import sys
import threading

import keras
from keras import ops
from keras.src.backend.common import global_state  # Keras' call context and autocast scope (DirectNestedCall)

_STATE = threading.local()

# glibc's mallopt parameters, and the ceiling its dynamic mmap threshold grows
# to on 64-bit systems (its trim threshold follows at twice the mmap threshold).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD


def after(tensors):
    """Context whose (stateful) ops run only once `tensors` are computed.

    On tensorflow, a graph runs every op whose inputs are ready, so a step
    whose batch fails to arrive (an error in the input pipeline) would still
    apply the state updates that do not read the batch, such as the step
    counter. On jax and torch the step does not start without its batch, and
    this is a no-op.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.control_dependencies(tensors)


def step_can_be_jit_compiled():
    """Whether `compile(jit_compile=True)` can compile the training step here.

    Not on torch (Keras 3.15, torch 2.13): torch.compile's dynamo recompiles at
    every UNet block's name scope, and inductor fails on the channels_last
    convolution's strides (docs/benchmarks.md). A model that reports False as
    its `supports_jit` gets Keras' warning and runs eagerly instead.
    """
    return keras.backend.backend() != "torch"


@contextlib.contextmanager
def state_kept_through_fit(model):
    """Context around `fit` that keeps the model's state when the first step fails (jax).

    Keras' jax `fit` takes the state out of the variables for the compiled
    step and puts back that of the last completed step however `fit` ends;
    but when the first step failed (a bad batch, Ctrl-C while compiling)
    there is no such state and the variables stayed empty. This keeps
    references to the arrays `fit` starts from (no copies: they stay alive
    until a step completes) and puts them back then. Other backends keep
    their variables and need nothing.
    """
    if keras.backend.backend() != "jax":
        yield
        return
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # as fit would, so its state is kept too
    optimizer_variables = list(model.optimizer.variables) if model.optimizer is not None else []
    variables = model.trainable_variables + model.non_trainable_variables + optimizer_variables + model.metrics_variables
    kept = [(variable, variable.value) for variable in variables]
    try:
        yield
    except BaseException:
        for variable, value in kept:
            if variable._value is None and not value.is_deleted():
                variable.assign(value)
        raise


class _DeliverLostInterrupt(keras.callbacks.Callback):
    """Raises, after the batch, a Ctrl-C whose `KeyboardInterrupt` was swallowed."""

    def __init__(self, pending):
        super().__init__()
        self.pending = pending

    def on_train_batch_end(self, batch, logs=None):
        if self.pending:
            self.pending.clear()
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_delivered(callbacks):
    """Context around `fit` in which every Ctrl-C stops it; yields the callbacks to pass.

    Python raises `KeyboardInterrupt` in whatever Python code runs next, and
    when that is a garbage-collector callback or a `__del__` the exception is
    printed ("Exception ignored in ...") and dropped. jax registers such a
    callback (`_xla_gc_callback`) that runs on every collection, so during
    `fit` a Ctrl-C was often lost and training went on. Here the interrupt is
    raised as usual and also noted; one that was dropped is raised again at
    the end of the current batch (by a callback appended to `callbacks`), or
    as `fit` returns. A SIGINT handler set by the program, or `fit` outside
    the main thread, is left alone.
    """
    callbacks = list(callbacks or [])
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield callbacks
        return
    pending = []

    def note_and_raise(signal_number, frame):
        pending.append(signal_number)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note_and_raise)
    try:
        yield callbacks + [_DeliverLostInterrupt(pending)]
    except KeyboardInterrupt:
        pending.clear()
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def replica_position():
    """(index, count) of this replica among those that compute one update together.

    tensorflow under a `tf.distribute` strategy: the replica context's id (a
    tensor in the step) and `num_replicas_in_sync`. torch under
    `keras_lct.distribute.data_parallel` (torchrun): the process rank and
    world size. Otherwise, and on jax, whose `DataParallel` step is one
    program over global arrays: (0, 1).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return ops.cast(context.replica_id_in_sync_group, "int32"), context.num_replicas_in_sync
    processes = _torch_processes()
    if processes is not None:
        return processes.process_index, processes.process_count
    return 0, 1


def _torch_processes():
    """The `keras_lct.distribute.DataParallel` of torch ranks training one model, or None."""
    if keras.backend.backend() != "torch":
        return None
    from keras_lct import distribute  # here: distribute imports this module

    run = distribute.current()
    return run if run is not None and run.process_count > 1 else None


def under_tf_distribute_strategy(model):
    """Whether `model` was made in a `tf.distribute` strategy's scope (tensorflow)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return model.distribute_strategy is not tf.distribute.get_strategy() or tf.distribute.has_strategy()


def scaled_for_replica_sum(loss):
    """`loss` divided by the replica count where the replicas' gradients are summed (tensorflow)."""
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


@contextlib.contextmanager
def gradients_averaged_over_processes(model):
    """Context around `fit` for torch in a process group: one model trained by all ranks.

    Broadcasts rank 0's variables (weights, EMA and schedule state), then
    averages every gradient over the processes (`torch.distributed.all_reduce`)
    as soon as backward has produced it, before the optimizer reads it: every
    rank applies the same update. A no-op outside a process group and on
    other backends, whose engines do this themselves.
    """
    processes = _torch_processes()
    if processes is None:
        yield
        return
    world_size = processes.process_count
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for variable in model.variables:
            dist.broadcast(_in_memory_order(variable.value), src=0)

    def average(parameter):
        dist.all_reduce(_in_memory_order(parameter.grad))
        parameter.grad.div_(world_size)

    hooks = [variable.value.register_post_accumulate_grad_hook(average) for variable in model.trainable_variables]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def memory_order(tensor):
    """The dimensions of a torch tensor, from the slowest to the fastest varying in memory."""
    return tuple(sorted(range(tensor.dim()), key=lambda dim: -tensor.stride(dim)))


def _in_memory_order(tensor):
    """A dense torch tensor as a contiguous view (NCCL's collectives take only contiguous tensors)."""
    return tensor.permute(memory_order(tensor))


def check_sample_shape(batch, sample_shape, message):
    """`batch`, checked to hold samples of `sample_shape` when the step runs; raises `message` if not.

    For a batch traced with unknown sample dimensions (tensorflow reading a
    PyDataset whose first batches differ in shape): the returned batch
    depends on the check, so the error names the batch's shape before any
    layer sees it. Elsewhere the shapes are known when the step is traced
    and checked then; the batch is returned as it is.
    """
    if keras.backend.backend() != "tensorflow":
        return batch
    import tensorflow as tf

    check = tf.debugging.assert_equal(tf.shape(batch)[1:], tf.constant(sample_shape), message=message.replace(
        f"{tuple(batch.shape[1:])} (batch shape {tuple(batch.shape)})", "(given below)"))
    with tf.control_dependencies([check]):
        return tf.identity(batch)


def keep_compiled_steps(folder):
    """On jax, makes `folder` jax's persistent compilation cache unless one is configured; returns the cache.

    A resumed run then loads its compiled steps instead of compiling them again: less time, and
    less peak memory (docs/benchmarks.md "Memory"). None on the other backends.
    """
    if keras.backend.backend() != "jax":
        return None
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", folder)
    return jax.config.jax_compilation_cache_dir


def _switched_on():
    return getattr(_STATE, "enabled", True)


def fast_paths_enabled():
    """Whether the torch fast paths are active (torch backend, not switched off)."""
    return _switched_on() and keras.backend.backend() == "torch"


@contextlib.contextmanager
def use_fast_paths(enabled=True):
    """Context that turns the backend fast paths on or off (for tests, debugging).

    Example:
    ```python
    with keras_lct.backend_ops.use_fast_paths(False):
        loss = model.compute_loss(x)        # the plain keras.ops code
    ```
    """
    previous = getattr(_STATE, "enabled", True)
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = previous


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
    class Conv2D(backend_ops.DirectNestedCall, keras.layers.Conv2D):
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


@functools.cache
def _dtype_name(dtype):
    return keras.backend.standardize_dtype(dtype)


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
            or _dtype_name(value.dtype) != input_dtype
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
    heads, d) in the dtype of `value`; or None."""
    if not fast_paths_enabled():
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


@functools.cache
def keep_large_allocations_on_the_heap():
    """Undoes tensorflow's malloc setting for generator datasets, once per process.

    On the tensorflow backend under glibc (Linux), starts one empty generator
    dataset, which is when tensorflow applies its setting (once per process),
    then sets malloc's mmap and trim thresholds to the values glibc itself
    settles at under large allocations (32 and 64 MiB). Elsewhere it does
    nothing. `import keras_lct` calls it.

    Returns:
        True when the thresholds were set, False when nothing was done.
    """
    if keras.backend.backend() != "tensorflow" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    import tensorflow as tf

    empty = tf.data.Dataset.from_generator(lambda: iter(()), output_signature=tf.TensorSpec((), tf.int32))
    for _ in empty:
        pass
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
