"""The ADM UNet's blocks: residual self-attention and the residual block.

Their convolutions, Dense layers, resampling and attention are the shared
ones of `keras_lct.layers.core` (the authors' initialization: uniform in
+-1/sqrt(fan_in), zeros for the layers that end a residual branch: a
block's second convolution, the attention output projection).
"""

import keras
from keras import ops

from keras_lct.backend import fast_paths
from keras_lct.layers.core import Dropout
from keras_lct.layers.core import Resample2D
from keras_lct.layers.core import conv2d
from keras_lct.layers.core import dense
from keras_lct.layers.core import dot_product_attention
from keras_lct.layers.normalization import normalization
from keras_lct.layers.normalization import normalization_name


@keras.saving.register_keras_serializable(package="keras_lct")
class AttentionBlock(fast_paths.DirectNestedCall, keras.layers.Layer):
    """Residual multi-head self-attention over the pixels of a feature map.

    `x + proj(softmax(q k^T / sqrt(C / heads)) v)` with q, k, v from a 1x1
    convolution of `norm(x)`; the attention is
    `keras_lct.layers.core.dot_product_attention` (in float32 under any
    dtype policy); `proj` starts at zero.

    Args:
        channels: C, the input and output channels.
        num_heads: number of heads; must divide C.
        norm: the normalization, see `keras_lct.layers.normalization`.
        epsilon: the normalization's epsilon.
        skip_scale: factor applied to the residual sum (1).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, C)`.

    Example:
    >>> y = AttentionBlock(128, num_heads=2)(np.zeros((1, 16, 16, 128)))

    Reference: ADM attention (paper section 5.1); NsLN inside (section 4.6).
    """

    def __init__(self, channels, num_heads=1, norm="nsln", epsilon=1e-5, skip_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_heads, int) or num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"`num_heads` must be an integer >= 1 that divides channels={channels}; received {num_heads!r}."
            )
        self.channels = channels
        self.num_heads = num_heads
        self.norm = normalization_name(norm)
        self.epsilon = epsilon
        self.skip_scale = skip_scale
        self.norm_layer = normalization(norm, channels, epsilon, name="norm", dtype=self.dtype_policy)
        self.qkv = conv2d(3 * channels, 1, channels, name="qkv", dtype=self.dtype_policy)
        self.proj = conv2d(channels, 1, channels, zero=True, name="proj", dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] != self.channels:
            raise ValueError(f"AttentionBlock(channels={self.channels}) received {input_shape[-1]} channels.")
        self.norm_layer.build(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def call(self, inputs):
        batch, height, width = ops.shape(inputs)[0], ops.shape(inputs)[1], ops.shape(inputs)[2]
        head_channels = self.channels // self.num_heads
        qkv = self.qkv(self.norm_layer(inputs))
        qkv = ops.reshape(qkv, (batch, height * width, self.num_heads, head_channels, 3))
        query, key, value = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        attended = ops.reshape(dot_product_attention(query, key, value), (batch, height, width, self.channels))
        outputs = self.proj(attended) + inputs
        return outputs if self.skip_scale == 1 else outputs * self.skip_scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "num_heads": self.num_heads,
                "norm": self.norm,
                "epsilon": self.epsilon,
                "skip_scale": self.skip_scale,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class UNetBlock(fast_paths.DirectNestedCall, keras.layers.Layer):
    """The ADM residual block with adaptive scale-shift, optional resampling and attention.

    `h = conv0(resample(SiLU(norm0(x))))`; `scale, shift = Dense(emb)`;
    `h = SiLU(shift + norm1(h) (scale + 1))`; `h = conv1(dropout(h))` (zero
    init); `x = (h + skip(resample(x))) skip_scale`, where `skip` is a 1x1
    convolution when the channels change and the identity otherwise; then
    an `AttentionBlock` if `attention`.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        emb_channels: width of the embedding input.
        up: nearest x2 upsampling inside the block.
        down: 2x2 average-pool downsampling inside the block.
        attention: append self-attention.
        channels_per_head: attention head width; must divide `out_channels`.
        dropout: dropout rate before the second convolution.
        skip_scale: factor on the residual sums (1).
        norm: the normalization of every norm in the block (see
            `keras_lct.layers.normalization`).
        epsilon: the normalizations' epsilon (1e-5).
        adaptive_scale: scale and shift from the embedding (True) or a shift
            added before `norm1` (False).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        x: `(batch, H, W, in_channels)`.
        emb: `(batch, emb_channels)`.
        training: enables dropout.

    Example:
    >>> block = UNetBlock(64, 128, emb_channels=256, down=True, attention=True)
    >>> y = block(np.zeros((2, 16, 16, 64)), np.zeros((2, 256)))  # (2, 8, 8, 128)

    Reference: ADM (paper section 5.1); norms per table 2d / section 4.6;
    `docs/reference.md` "Network structure".
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        emb_channels,
        up=False,
        down=False,
        attention=False,
        channels_per_head=64,
        dropout=0.0,
        skip_scale=1.0,
        norm="nsln",
        epsilon=1e-5,
        adaptive_scale=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if up and down:
            raise ValueError("A UNetBlock resamples `up` or `down`, not both.")
        if attention and (out_channels % channels_per_head or out_channels < channels_per_head):
            raise ValueError(
                f"Attention needs out_channels={out_channels} to be a positive multiple of "
                f"channels_per_head={channels_per_head}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.up = up
        self.down = down
        self.attention = attention
        self.channels_per_head = channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.norm = normalization_name(norm)
        self.epsilon = epsilon
        self.adaptive_scale = adaptive_scale

        policy = self.dtype_policy
        self.norm0 = normalization(norm, in_channels, epsilon, name="norm0", dtype=policy)
        self.resample = Resample2D("up" if up else "down", name="resample", dtype=policy) if up or down else None
        self.conv0 = conv2d(out_channels, 3, in_channels * 9, name="conv0", dtype=policy)
        self.affine = dense(out_channels * (2 if adaptive_scale else 1), emb_channels, name="affine", dtype=policy)
        self.norm1 = normalization(norm, out_channels, epsilon, name="norm1", dtype=policy)
        self.dropout_layer = Dropout(dropout, name="dropout", dtype=policy)
        self.conv1 = conv2d(out_channels, 3, out_channels * 9, zero=True, name="conv1", dtype=policy)
        self.skip = conv2d(out_channels, 1, in_channels, name="skip", dtype=policy) if out_channels != in_channels else None
        self.attention_block = (
            AttentionBlock(out_channels, out_channels // channels_per_head, norm, epsilon, skip_scale, name="attention", dtype=policy)
            if attention
            else None
        )

    def build(self, x_shape, emb_shape):
        if x_shape[-1] != self.in_channels:
            raise ValueError(f"UNetBlock(in_channels={self.in_channels}) received {x_shape[-1]} channels.")
        self.norm0.build(x_shape)
        if self.resample is not None:
            self.resample.build(x_shape)
        resampled = self.resample.compute_output_shape(x_shape) if self.resample else tuple(x_shape)
        self.conv0.build(resampled)
        output_shape = resampled[:-1] + (self.out_channels,)
        self.affine.build(emb_shape)
        self.norm1.build(output_shape)
        self.conv1.build(output_shape)
        if self.skip is not None:
            self.skip.build(resampled)
        if self.attention_block is not None:
            self.attention_block.build(output_shape)

    def call(self, x, emb, training=None):
        original = x
        h = ops.silu(self.norm0(x))
        if self.resample is not None:
            h = self.resample(h)
            original = self.resample(original)
        h = self.conv0(h)
        params = ops.expand_dims(ops.expand_dims(self.affine(emb), 1), 1)
        if self.adaptive_scale:
            scale, shift = ops.split(params, 2, axis=-1)
            h = ops.silu(shift + self.norm1(h) * (scale + 1.0))
        else:
            h = ops.silu(self.norm1(h + params))
        h = self.conv1(self.dropout_layer(h, training=training))
        skip = self.skip(original) if self.skip is not None else original
        x = h + ops.cast(skip, h.dtype)
        if self.skip_scale != 1:
            x = x * self.skip_scale
        if self.attention_block is not None:
            x = self.attention_block(x)
        return x

    def compute_output_shape(self, x_shape, emb_shape):
        resampled = self.resample.compute_output_shape(x_shape) if self.resample else tuple(x_shape)
        return tuple(resampled[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "emb_channels": self.emb_channels,
                "up": self.up,
                "down": self.down,
                "attention": self.attention,
                "channels_per_head": self.channels_per_head,
                "dropout": self.dropout,
                "skip_scale": self.skip_scale,
                "norm": self.norm,
                "epsilon": self.epsilon,
                "adaptive_scale": self.adaptive_scale,
            }
        )
        return config
