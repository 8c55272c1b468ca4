"""The building blocks the UNet and the VAE share: initialization, Conv2D, Dense, resampling, attention.

Initialization follows the authors' network (NVlabs EDM's DhariwalUNet),
which is also torch's default for the VAE's layers: weights and biases
uniform in +-1/sqrt(fan_in) (kaiming-uniform scaled by sqrt(1/3)), and zeros
for the layers that end a residual branch (`zero=True`).

`Conv2D`, `Dense`, `Dropout` and `Resample2D` compute what Keras' layers
compute, with the torch fast paths of `keras_lct.backend.fast_paths`;
`dot_product_attention` is the one attention of keras-lct (the UNet's
`AttentionBlock` and the VAE's `VAEAttention` call it).
"""

import math

import keras
from keras import ops

from keras_lct.backend import fast_paths


def fan_in_initializer(fan_in, zero=False):
    """Uniform in +-1/sqrt(fan_in) (EDM's kaiming_uniform with weight sqrt(1/3)), or zeros.

    Args:
        fan_in: inputs per output unit (for a convolution: in_channels x kernel area).
        zero: zeros instead (the layers that end a residual branch).

    Returns:
        a Keras initializer or `"zeros"`.

    Example:
    >>> init = fan_in_initializer(64 * 9)  # a 3x3 convolution of 64 channels
    """
    if zero:
        return "zeros"
    limit = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="keras_lct")
class Conv2D(fast_paths.DirectNestedCall, keras.layers.Conv2D):
    """`keras.layers.Conv2D` that convolves channels_last data on torch without copies.

    Keras' torch convolution copies each channels_last input to NCHW and its
    output back; this layer hands torch a permuted view instead (an NCHW
    tensor in channels_last memory, which oneDNN convolves natively) and fuses
    the bias; its kernel is stored in the memory order torch convolves with
    (same shape and values; `fast_paths.store_for_convolution`). Same
    arguments, weights and results as `keras.layers.Conv2D`; other backends,
    channels_first data and strided 'same' convolutions run Keras' own code.
    See `keras_lct.backend.fast_paths`.

    Example:
    >>> conv = Conv2D(64, 3, padding="same")
    >>> y = conv(np.zeros((2, 32, 32, 4)))
    """

    def build(self, input_shape):
        super().build(input_shape)
        fast_paths.store_for_convolution(self.kernel)

    def call(self, inputs):
        if self.data_format == "channels_last" and self.groups == 1:
            outputs = fast_paths.conv2d(
                inputs,
                self.kernel,
                self.bias if self.use_bias else None,
                self.strides,
                self.padding,
                self.dilation_rate,
            )
            if outputs is not None:
                return outputs if self.activation is None else self.activation(outputs)
        return super().call(inputs)


def conv2d(filters, kernel_size, fan_in, zero=False, name=None, dtype=None, strides=1, padding="same"):
    """A biased `Conv2D` ('same'-padded by default) with the authors' initialization.

    Args:
        filters: output channels.
        kernel_size: an int or (kh, kw).
        fan_in: for `fan_in_initializer` (in_channels x kh x kw).
        zero: zero-initialize kernel and bias.
        name: the layer's name.
        dtype: the layer's dtype or dtype policy.
        strides: the convolution's strides.
        padding: `"same"` or `"valid"`.

    Example:
    >>> conv = conv2d(128, 3, fan_in=64 * 9, name="conv0")
    """
    return Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        kernel_initializer=fan_in_initializer(fan_in, zero),
        bias_initializer=fan_in_initializer(fan_in, zero),
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="keras_lct")
class Dense(fast_paths.DirectNestedCall, keras.layers.Dense):
    """`keras.layers.Dense`, as one fused kernel on torch, called without Keras' per-call work from within a block.

    Same arguments, weights and results as `keras.layers.Dense`. On torch
    the product and the bias are one `addmm` (`keras_lct.backend.fast_paths.dense`);
    see also `keras_lct.backend.fast_paths.DirectNestedCall`.
    """

    def call(self, inputs, training=None):
        if self.quantization_mode is None and not self.lora_enabled:
            outputs = fast_paths.dense(inputs, self.kernel, self.bias)
            if outputs is not None:
                return outputs if self.activation is None else self.activation(outputs)
        return super().call(inputs, training=training)


@keras.saving.register_keras_serializable(package="keras_lct")
class Dropout(fast_paths.DirectNestedCall, keras.layers.Dropout):
    """`keras.layers.Dropout`, called without Keras' per-call work from within a block on torch.

    Same arguments and results as `keras.layers.Dropout`; see
    `keras_lct.backend.fast_paths.DirectNestedCall`.
    """


def dense(units, fan_in, name=None, dtype=None):
    """A biased `Dense` layer with the authors' initialization (weights and bias from `fan_in`).

    Args:
        units: output width.
        fan_in: for `fan_in_initializer` (the input width).
        name: the layer's name.
        dtype: the layer's dtype or dtype policy.

    Example:
    >>> affine = dense(256, fan_in=128, name="affine")
    """
    return Dense(
        units,
        kernel_initializer=fan_in_initializer(fan_in),
        bias_initializer=fan_in_initializer(fan_in),
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="keras_lct")
class Resample2D(fast_paths.DirectNestedCall, keras.layers.Layer):
    """Fixed [1, 1]-filter resampling: 2x2 average pooling or nearest x2 upsampling.

    Args:
        mode: `"down"` (halves H and W) or `"up"` (doubles them).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a channels_last tensor `(batch, H, W, C)`.

    Example:
    >>> Resample2D("down")(np.zeros((1, 8, 8, 3))).shape
    (1, 4, 4, 3)

    Reference: ADM's resampling (paper section 5.1, the UNet of Dhariwal & Nichol).
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("up", "down"):
            raise ValueError(f"`mode` must be 'up' or 'down'; received {mode!r}.")
        self.mode = mode

    def call(self, inputs):
        fast = fast_paths.resample_2x(inputs, self.mode)
        if fast is not None:
            return fast
        if self.mode == "down":
            return ops.average_pool(inputs, pool_size=2, strides=2, padding="valid")
        return ops.repeat(ops.repeat(inputs, 2, axis=1), 2, axis=2)

    def compute_output_shape(self, input_shape):
        return resampled_shape(input_shape, self.mode)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


def resampled_shape(shape, mode):
    """The `(batch, H, W, C)` shape after a 2x resampling: H and W halved (`"down"`) or doubled (`"up"`).

    Example:
    >>> resampled_shape((None, 8, 8, 3), "down")
    (None, 4, 4, 3)
    """
    batch, height, width, channels = shape
    scale = (lambda size: size // 2) if mode == "down" else (lambda size: size * 2)
    return (batch, scale(height) if height else None, scale(width) if width else None, channels)


def dot_product_attention(query, key, value):
    """`softmax(q k^T / sqrt(d)) v` per head, in float32: the attention of keras-lct's layers.

    The logits, the softmax and the weighted sum of the values are computed
    in float32 whatever the inputs' dtype (under `mixed_bfloat16` too); the
    result comes back in the dtype of `value`. On torch the fused kernel of
    `keras_lct.backend.fast_paths.dot_product_attention` computes it; on the
    other backends, and under `keras_lct.backend.use_fast_paths(False)`,
    the `keras.ops` code here, which is the reference.

    Args:
        query: `(batch, query_tokens, heads, d)`.
        key: `(batch, tokens, heads, d)`.
        value: `(batch, tokens, heads, d)`.

    Returns:
        `(batch, query_tokens, heads, d)`, in the dtype of `value`.

    Example:
    >>> q = k = v = np.random.normal(size=(2, 64, 2, 32)).astype("float32")
    >>> dot_product_attention(q, k, v).shape
    (2, 64, 2, 32)

    Reference: ADM's self-attention (paper section 5.1); diffusers'
    `Attention` of the VAE's mid block (LDM `AttnBlock`), single-headed.
    """
    attended = fast_paths.dot_product_attention(query, key, value)
    if attended is not None:
        return attended
    dtype = keras.backend.standardize_dtype(value.dtype)
    query, key, value = (ops.cast(tensor, "float32") for tensor in (query, key, value))
    logits = ops.einsum("bqhc,bkhc->bhqk", query, key)
    weights = ops.softmax(logits / math.sqrt(query.shape[-1]), axis=-1)
    return ops.cast(ops.einsum("bhqk,bkhc->bqhc", weights, value), dtype)
