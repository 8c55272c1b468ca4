"""`compile(jit_compile=...)` on torch: the network's calls compiled by `torch.compile`.

On jax and tensorflow `jit_compile=True` compiles the whole training step
with XLA. On torch, Keras' trainer would hand the whole step to
`torch.compile`; this step does not trace whole: its noise draws set a
`SeedGenerator`'s state, the optimizer reads scalars on the host, and
dynamo breaks the graph at each of them. What eager torch pays for here is
per-layer Python work and one kernel launch per op, and both live in the
network. So the model keeps the step eager and calls its network through
`torch.compile` (`network_caller`): one graph per kind of call (the
student's forward with its backward, compiled by AOTAutograd; the target's
no-gradient forward), each specialized to the batch's shape. The draws, the
loss, the optimizer and the EMA stay outside, as the eager step runs them.

A call inside a JVP (`keras_lct.backend.forward_mode.jvp`, torch.func.jvp)
runs eagerly: dynamo cannot trace a compiled function called from within
`torch.func.jvp`, gives up on it and marks its code to be skipped (the
compiled graph of the plain calls then goes unused too;
https://github.com/pytorch/pytorch/issues/128711). So the caller never hands
it such a call.

`jit_compile` may be a mode of `torch.compile` (`TORCH_COMPILE_MODES`):
`"reduce-overhead"` adds CUDA graphs on a GPU, `"max-autotune"` also
benchmarks kernel choices. On jax and tensorflow a mode means
`jit_compile=True`, so a compile config saved on torch loads everywhere.
"""

import weakref

import keras

from keras_lct._validation import check_choice
from keras_lct.backend import fast_paths

TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_CALLERS = weakref.WeakKeyDictionary()  # {network: {mode: its compiled caller}}


def jit_compile_setting(jit_compile):
    """The `jit_compile` that Keras' `compile` gets on this backend.

    Args:
        jit_compile: `"auto"`, a bool, or a `torch.compile` mode.

    Returns:
        `jit_compile` itself, except a mode on jax and tensorflow, which
        becomes True (XLA).
    """
    if isinstance(jit_compile, str) and jit_compile != "auto":
        check_choice("jit_compile", jit_compile, ("auto",) + TORCH_COMPILE_MODES)
        return jit_compile if keras.backend.backend() == "torch" else True
    return jit_compile


def network_caller(network, jit_compile):
    """What the training step calls `network` through, given the model's `jit_compile`.

    Args:
        network: the model's network (or its `DistributedDataParallel`
            wrapper), called as `network(inputs, training=training)`.
        jit_compile: the model's `jit_compile`: False, True or a
            `torch.compile` mode.

    Returns:
        `network` itself, except on torch with `jit_compile` on: a callable
        with the same signature that runs the call compiled by
        `torch.compile(mode=...)`, made once per network and mode, and
        eagerly inside a JVP (`fast_paths.in_forward_mode()`).
    """
    if not jit_compile or keras.backend.backend() != "torch":
        return network
    mode = None if jit_compile is True else jit_compile
    callers = _CALLERS.setdefault(network, {})
    if mode not in callers:
        import torch

        def call(inputs, training=False):
            return network(inputs, training=training)

        # Shapes are static in a training run; dynamic shapes trip inductor on the strides of
        # the convolutions' permuted views (fast_paths.conv2d), a stride mismatch of the kind of
        # https://github.com/pytorch/pytorch/issues/159462.
        compiled_call = torch.compile(call, mode=mode, dynamic=False)

        def compiled_outside_forward_mode(inputs, training=False):
            return (call if fast_paths.in_forward_mode() else compiled_call)(inputs, training=training)

        callers[mode] = compiled_outside_forward_mode
    return callers[mode]

