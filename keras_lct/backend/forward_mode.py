"""Forward-mode differentiation (a JVP) through keras-lct's networks, on every backend.

`jvp(function, primals, tangents)` is `keras.ops.linalg.jvp` (`jax.jvp`,
`torch.func.jvp`, tensorflow's `tf.autodiff.ForwardAccumulator`) with what
each backend needs around it, for a training step that differentiates the
outputs and holds the tangents fixed (MeanFlow's target, `u - (t - r) du/dt`
under stop-gradient):

- the fast paths without a forward-mode rule step aside while `function`
  runs (`keras_lct.backend.fast_paths.forward_mode()`): on torch, the fused
  attention (`F.scaled_dot_product_attention`: its flash and memory-efficient
  kernels define no forward-mode derivative; torch 2.13 raises
  NotImplementedError for `_scaled_dot_product_flash_attention_for_cpu`),
  replaced by the plain `keras.ops` attention. The other torch fast paths
  (the convolution on channels_last views, `addmm`, `F.layer_norm`, the
  resampling) and tensorflow's NsLN with its hand-written gradient are
  differentiated in forward mode as they are; jax has no fast path.
- torch with `jit_compile`: the network's compiled caller
  (`keras_lct.backend.compiled.network_caller`) runs a call inside the JVP
  eagerly (dynamo cannot trace a compiled function within `torch.func.jvp`).
- eager tensorflow: a `GradientTape` around the JVP loses its record of the
  operations run under the accumulator once the accumulator is freed (Keras'
  `jvp` frees it on return): the weights' gradients then come back None
  (tensorflow 2.21; inside `tf.function` they are whole). The outputs pass
  through an identity whose gradient function holds the accumulator, so that
  it lives as long as the tape's record of the outputs: until the tape's
  gradient (with the JVP's intermediate tangents, one more set of
  activations).
- the primals and tangents become tensors of the primals' dtype (tensorflow
  watches only the tensors the function receives, jax refuses tangents of
  another dtype), and an output that does not depend on the primals gets a
  zero tangent on every backend.

The outputs carry the plain call's gradient with respect to the network's
weights (torch: `backward`; tensorflow: a `GradientTape` around the call; jax:
`jax.grad` of a stateless call); the tangents come back under stop-gradient,
on every backend. It runs eagerly and inside a compiled step (jax's jit,
tf.function with or without XLA); tests/test_jvp.py checks all of it.
"""

import keras
from keras import ops
from keras import tree

from keras_lct.backend import fast_paths


def jvp(function, primals, tangents):
    """`function(*primals)` and its directional derivative along `tangents`, the latter held fixed.

    Args:
        function: a callable of `len(primals)` tensors, returning a tensor or
            a nested structure of float tensors (e.g. a network's call).
        primals: a tuple of float tensors, the point.
        tangents: a tuple like `primals`, the direction (cast to the
            primals' dtypes).

    Returns:
        `(outputs, output_tangents)`: `function(*primals)`, differentiable
        like a plain call, and the JVP `d function(primals + s tangents) / ds`
        at s = 0 under stop-gradient, in the same structure.

    Example:
    ```python
    def average_velocity(z, t, r):
        return network([z, t, t - r])

    # u and du/dt along (dz/dt, dt/dt, dr/dt) = (v, 1, 0): MeanFlow's target.
    u, du_dt = jvp(average_velocity, (z, t, r), (v, ops.ones_like(t), ops.zeros_like(r)))
    ```
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise ValueError(
            f"`jvp` takes one tangent per primal; received {len(primals)} primals and {len(tangents)} tangents. "
            "Pass a tangent (e.g. zeros) for every input of the function."
        )
    primals = tuple(ops.convert_to_tensor(primal) for primal in primals)
    tangents = tuple(ops.cast(tangent, primal.dtype) for tangent, primal in zip(tangents, primals))
    with fast_paths.forward_mode():
        if keras.backend.backend() == "tensorflow":
            outputs, output_tangents = _tensorflow_jvp(function, primals, tangents)
        else:
            outputs, output_tangents = keras.ops.linalg.jvp(function, primals, tangents)
    output_tangents = tree.map_structure(
        lambda output, tangent: ops.zeros_like(output) if tangent is None else ops.stop_gradient(tangent),
        outputs,
        output_tangents,
    )
    return outputs, output_tangents


def _tensorflow_jvp(function, primals, tangents):
    """`keras.ops.linalg.jvp` on tensorflow, its accumulator kept for an eager tape (see the module)."""
    import tensorflow as tf

    accumulator = tf.autodiff.ForwardAccumulator(primals, tangents)
    with accumulator:
        outputs = function(*primals)
    output_tangents = tree.map_structure(accumulator.jvp, outputs)
    if tf.executing_eagerly():

        @tf.custom_gradient
        def holding_the_accumulator(output):
            def gradient(upstream):
                return upstream

            gradient.accumulator = accumulator  # lives as long as the tape's record of this identity
            return tf.identity(output), gradient

        outputs = tree.map_structure(holding_the_accumulator, outputs)
    return outputs, output_tangents
