"""The Stable Diffusion KL-f8 autoencoder (diffusers' `AutoencoderKL`) as a channels_last Keras model.

Structure, names and epsilons are those of diffusers' `AutoencoderKL` (the
CompVis/LDM "first stage model" of Stable Diffusion): every layer here has a
counterpart there, named in `keras_lct.vae.weights`. Initialization equals
torch's defaults (weights and biases uniform in +-1/sqrt(fan_in), norms at
gamma 1, beta 0), so a fresh model is a fresh diffusers model in distribution.

Reference: Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models" (CVPR 2022), appendix; the paper's latent space (section 5.1).
"""

import hashlib
import json

import keras
import numpy as np
from keras import ops

from keras_lct._validation import check_int
from keras_lct._validation import check_positive
from keras_lct.layers.core import Resample2D
from keras_lct.layers.core import conv2d
from keras_lct.layers.core import dense
from keras_lct.layers.core import dot_product_attention
from keras_lct.layers.core import resampled_shape

EPSILON = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)

_SD = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)
_TINY = dict(_SD, layers_per_block=1, norm_num_groups=8, sample_size=64)
VAE_PRESETS = {
    # stabilityai/sd-vae-ft-ema and sd-vae-ft-mse: the SD 1.x/2.x KL-f8 VAE, decoders fine-tuned.
    "sd-vae-ft-ema": _SD,
    "sd-vae-ft-mse": _SD,
    # Random-weight CPU stand-ins: f8 (64x64 images -> 8x8x4) and f4 (64x64 -> 16x16x4).
    "tiny": dict(_TINY, block_out_channels=(32, 64, 64, 64)),
    "tiny-f4": dict(_TINY, block_out_channels=(32, 64, 64)),
}

# The arguments that decide what a latent means (the fingerprint's config part).
ARCHITECTURE_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "scaling_factor",
)


def group_norm(groups, name):
    """diffusers' GroupNorm(groups, eps=1e-6), computed in float32."""
    return VAEGroupNorm(groups, epsilon=EPSILON, name=name, dtype="float32")


def _same_shape(shape, channels):
    return tuple(shape[:-1]) + (channels,)


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEGroupNorm(keras.layers.Layer):
    """GroupNorm whose statistics stay float32-accurate on large feature maps.

    `(x - mean) / sqrt(var + epsilon) * gamma + beta` per group of
    `C / groups` channels over H and W. The mean and the (two-pass) variance
    are means of per-row means: one reduction over a 256x256 map's group,
    as in `keras.layers.GroupNormalization`, loses ~1e-4 relative on
    TensorFlow's CPU kernels, which the decoder accumulates.

    Args:
        groups: number of groups; must divide the channels.
        epsilon: added to the variance.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, C)`.

    Example:
    >>> y = VAEGroupNorm(8)(np.random.normal(size=(1, 16, 16, 32)))

    Reference: torch `GroupNorm`, as in diffusers' `ResnetBlock2D`.
    """

    def __init__(self, groups, epsilon=EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if len(input_shape) != 4 or channels is None or channels % self.groups:
            raise ValueError(
                f"VAEGroupNorm(groups={self.groups}) needs (batch, H, W, C) with C divisible by groups; "
                f"received {tuple(input_shape)}."
            )
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma", dtype=self.variable_dtype)
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta", dtype=self.variable_dtype)

    def call(self, inputs):
        batch, height, width, channels = (ops.shape(inputs)[axis] for axis in range(4))
        grouped = ops.reshape(ops.cast(inputs, "float32"), (batch, height, width, self.groups, -1))
        centered = grouped - _group_mean(grouped)
        normalized = centered * ops.rsqrt(_group_mean(ops.square(centered)) + self.epsilon)
        normalized = ops.reshape(normalized, (batch, height, width, channels))
        return ops.cast(normalized * ops.cast(self.gamma, "float32") + ops.cast(self.beta, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "epsilon": self.epsilon})
        return config


def _group_mean(grouped):
    """The mean over (H, W, channels in group) of `(batch, H, W, groups, C / groups)`, row by row first."""
    return ops.mean(ops.mean(grouped, axis=(2, 4), keepdims=True), axis=1, keepdims=True)


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEResnetBlock(keras.layers.Layer):
    """diffusers' `ResnetBlock2D` without time embedding.

    `h = conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`, returned as
    `shortcut(x) + h`, where `shortcut` is a 1x1 convolution when the
    channels change and the identity otherwise. Convolutions are 3x3, norms
    GroupNorm with epsilon 1e-6.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm_num_groups: groups of both GroupNorms.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, in_channels)`.

    Example:
    >>> y = VAEResnetBlock(32, 64, norm_num_groups=8)(np.zeros((1, 16, 16, 32)))

    Reference: diffusers `ResnetBlock2D` (LDM `ResnetBlock`).
    """

    def __init__(self, in_channels, out_channels, norm_num_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm_num_groups = norm_num_groups
        policy = self.dtype_policy
        self.norm1 = group_norm(norm_num_groups, "norm1")
        self.conv1 = conv2d(out_channels, 3, in_channels * 9, name="conv1", dtype=policy)
        self.norm2 = group_norm(norm_num_groups, "norm2")
        self.conv2 = conv2d(out_channels, 3, out_channels * 9, name="conv2", dtype=policy)
        self.conv_shortcut = (
            conv2d(out_channels, 1, in_channels, name="conv_shortcut", dtype=policy)
            if in_channels != out_channels
            else None
        )

    def build(self, input_shape):
        if input_shape[-1] != self.in_channels:
            raise ValueError(f"VAEResnetBlock(in_channels={self.in_channels}) received {input_shape[-1]} channels.")
        output_shape = _same_shape(input_shape, self.out_channels)
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        self.norm2.build(output_shape)
        self.conv2.build(output_shape)
        if self.conv_shortcut is not None:
            self.conv_shortcut.build(input_shape)

    def call(self, inputs):
        h = self.conv1(ops.silu(self.norm1(inputs)))
        h = self.conv2(ops.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(inputs) if self.conv_shortcut is not None else inputs
        return ops.cast(shortcut, h.dtype) + h

    def compute_output_shape(self, input_shape):
        return _same_shape(input_shape, self.out_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"in_channels": self.in_channels, "out_channels": self.out_channels, "norm_num_groups": self.norm_num_groups}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEAttention(keras.layers.Layer):
    """Single-head self-attention over the pixels, with a residual connection.

    `x + to_out(softmax(q k^T / sqrt(C)) v)` with `q, k, v` biased Dense
    projections (over channels) of `GroupNorm(x)`; the attention is
    `keras_lct.layers.core.dot_product_attention` (one head of C channels,
    in float32 under any dtype policy).

    Args:
        channels: C, the input and output channels.
        norm_num_groups: groups of the GroupNorm.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, channels)`.

    Example:
    >>> y = VAEAttention(64, norm_num_groups=8)(np.zeros((1, 8, 8, 64)))

    Reference: diffusers `Attention` in `UNetMidBlock2D` (LDM `AttnBlock`).
    """

    def __init__(self, channels, norm_num_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm_num_groups = norm_num_groups
        policy = self.dtype_policy
        self.group_norm = group_norm(norm_num_groups, "group_norm")
        self.to_q = dense(channels, channels, name="to_q", dtype=policy)
        self.to_k = dense(channels, channels, name="to_k", dtype=policy)
        self.to_v = dense(channels, channels, name="to_v", dtype=policy)
        self.to_out = dense(channels, channels, name="to_out", dtype=policy)

    def build(self, input_shape):
        if input_shape[-1] != self.channels:
            raise ValueError(f"VAEAttention(channels={self.channels}) received {input_shape[-1]} channels.")
        self.group_norm.build(input_shape)
        for projection in (self.to_q, self.to_k, self.to_v, self.to_out):
            projection.build(input_shape)

    def call(self, inputs):
        batch, height, width = ops.shape(inputs)[0], ops.shape(inputs)[1], ops.shape(inputs)[2]
        tokens = ops.reshape(self.group_norm(inputs), (batch, height * width, 1, self.channels))
        query, key, value = (projection(tokens) for projection in (self.to_q, self.to_k, self.to_v))
        attended = ops.reshape(dot_product_attention(query, key, value), (batch, height, width, self.channels))
        return self.to_out(attended) + ops.cast(inputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "norm_num_groups": self.norm_num_groups})
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEResample(keras.layers.Layer):
    """diffusers' `Downsample2D` / `Upsample2D` with their convolutions.

    `"down"`: zero-pad one row at the bottom and one column at the right,
    then a 3x3 stride-2 convolution without padding. `"up"`: nearest x2
    upsampling, then a 3x3 convolution.

    Args:
        channels: input and output channels.
        mode: `"down"` (halves H and W) or `"up"` (doubles them).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, channels)`; H and W even for `"down"`.

    Example:
    >>> VAEResample(8, "down")(np.zeros((1, 16, 16, 8))).shape
    (1, 8, 8, 8)

    Reference: diffusers `Downsample2D(padding=0)`, `Upsample2D(use_conv=True)`.
    """

    def __init__(self, channels, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("up", "down"):
            raise ValueError(f"`mode` must be 'up' or 'down'; received {mode!r}.")
        self.channels = channels
        self.mode = mode
        policy = self.dtype_policy
        if mode == "down":
            self.conv = conv2d(channels, 3, channels * 9, name="conv", dtype=policy, strides=2, padding="valid")
            self.upsample = None
        else:
            self.conv = conv2d(channels, 3, channels * 9, name="conv", dtype=policy)
            self.upsample = Resample2D("up", name="upsample", dtype=policy)

    def build(self, input_shape):
        if input_shape[-1] != self.channels:
            raise ValueError(f"VAEResample(channels={self.channels}) received {input_shape[-1]} channels.")
        if self.upsample is not None:
            self.upsample.build(input_shape)
            input_shape = self.upsample.compute_output_shape(input_shape)
        self.conv.build(input_shape)

    def call(self, inputs):
        if self.mode == "down":
            return self.conv(ops.pad(inputs, ((0, 0), (0, 1), (0, 1), (0, 0))))
        return self.conv(self.upsample(inputs))

    def compute_output_shape(self, input_shape):
        return resampled_shape(input_shape, self.mode)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class VAELevel(keras.layers.Layer):
    """One resolution level: residual blocks, then an optional resampling.

    The encoder's `DownEncoderBlock2D` (`resample="down"` on all levels but
    the last) and the decoder's `UpDecoderBlock2D` (`resample="up"`).

    Args:
        in_channels: input channels (of the first block).
        out_channels: output channels of every block.
        num_blocks: number of `VAEResnetBlock`s.
        norm_num_groups: GroupNorm groups.
        resample: `None`, `"down"` or `"up"`, applied after the blocks.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, in_channels)`.

    Example:
    >>> level = VAELevel(32, 64, num_blocks=2, norm_num_groups=8, resample="down")
    >>> level(np.zeros((1, 16, 16, 32))).shape
    (1, 8, 8, 64)

    Reference: diffusers `DownEncoderBlock2D`, `UpDecoderBlock2D`.
    """

    def __init__(self, in_channels, out_channels, num_blocks, norm_num_groups=32, resample=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.norm_num_groups = norm_num_groups
        self.resample = resample
        policy = self.dtype_policy
        self.resnets = [
            VAEResnetBlock(
                in_channels if index == 0 else out_channels, out_channels, norm_num_groups, name=f"resnet_{index}", dtype=policy
            )
            for index in range(num_blocks)
        ]
        self.resampler = VAEResample(out_channels, resample, name=f"{resample}sample", dtype=policy) if resample else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        for resnet in self.resnets:
            resnet.build(shape)
            shape = resnet.compute_output_shape(shape)
        if self.resampler is not None:
            self.resampler.build(shape)

    def call(self, inputs):
        x = inputs
        for resnet in self.resnets:
            x = resnet(x)
        return self.resampler(x) if self.resampler is not None else x

    def compute_output_shape(self, input_shape):
        shape = _same_shape(input_shape, self.out_channels)
        return self.resampler.compute_output_shape(shape) if self.resampler is not None else shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "num_blocks": self.num_blocks,
                "norm_num_groups": self.norm_num_groups,
                "resample": self.resample,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEMidBlock(keras.layers.Layer):
    """Residual block, self-attention, residual block, all at `channels`.

    Args:
        channels: input and output channels.
        norm_num_groups: GroupNorm groups.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, channels)`.

    Example:
    >>> y = VAEMidBlock(64, norm_num_groups=8)(np.zeros((1, 8, 8, 64)))

    Reference: diffusers `UNetMidBlock2D` (LDM `mid.block_1`, `mid.attn_1`, `mid.block_2`).
    """

    def __init__(self, channels, norm_num_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm_num_groups = norm_num_groups
        policy = self.dtype_policy
        self.resnet_1 = VAEResnetBlock(channels, channels, norm_num_groups, name="resnet_1", dtype=policy)
        self.attention = VAEAttention(channels, norm_num_groups, name="attention", dtype=policy)
        self.resnet_2 = VAEResnetBlock(channels, channels, norm_num_groups, name="resnet_2", dtype=policy)

    def build(self, input_shape):
        for layer in (self.resnet_1, self.attention, self.resnet_2):
            layer.build(input_shape)

    def call(self, inputs):
        return self.resnet_2(self.attention(self.resnet_1(inputs)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "norm_num_groups": self.norm_num_groups})
        return config


class _Coder(keras.layers.Layer):
    """What the encoder and decoder share: arguments, levels, output head, shapes, config."""

    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups=32, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block_out_channels = tuple(block_out_channels)
        self.layers_per_block = layers_per_block
        self.norm_num_groups = norm_num_groups

    def _levels(self, widths, num_blocks, resample):
        """One `VAELevel` per width, resampling on all but the last."""
        return [
            VAELevel(
                widths[max(index - 1, 0)],
                width,
                num_blocks,
                self.norm_num_groups,
                resample=resample if index < len(widths) - 1 else None,
                name=f"{resample}_{index}",
                dtype=self.dtype_policy,
            )
            for index, width in enumerate(widths)
        ]

    def _head(self, channels):
        self.norm_out = group_norm(self.norm_num_groups, "norm_out")
        self.conv_out = conv2d(self.out_channels, 3, channels * 9, name="conv_out", dtype=self.dtype_policy)

    def _build_head(self, shape):
        self.norm_out.build(shape)
        self.conv_out.build(shape)

    def _apply_head(self, x):
        return self.conv_out(ops.silu(self.norm_out(x)))

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for level in self.levels:
            shape = level.compute_output_shape(shape)
        return _same_shape(shape, self.out_channels)

    def _check_input(self, input_shape):
        if input_shape[-1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}(in_channels={self.in_channels}) received {input_shape[-1]} channels.")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "block_out_channels": list(self.block_out_channels),
                "layers_per_block": self.layers_per_block,
                "norm_num_groups": self.norm_num_groups,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEEncoder(_Coder):
    """Images to the posterior's moments: `2 * latent_channels` maps at 1/f resolution.

    `conv_in` (3x3) -> one `VAELevel` per entry of `block_out_channels`
    (`layers_per_block` blocks each, downsampling on all but the last) ->
    `VAEMidBlock` -> GroupNorm -> SiLU -> `conv_out` (3x3).

    Args:
        in_channels: image channels.
        out_channels: output channels (2 x latent channels: mean and log-variance).
        block_out_channels: channels per level.
        layers_per_block: residual blocks per level.
        norm_num_groups: GroupNorm groups.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, in_channels)`, H and W divisible by 2^(levels - 1).

    Example:
    >>> encoder = VAEEncoder(3, 8, (32, 64), layers_per_block=1, norm_num_groups=8)
    >>> encoder(np.zeros((1, 16, 16, 3))).shape
    (1, 8, 8, 8)

    Reference: diffusers `Encoder` (double_z=True).
    """

    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups=32, **kwargs):
        super().__init__(in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups, **kwargs)
        policy = self.dtype_policy
        channels = self.block_out_channels
        self.conv_in = conv2d(channels[0], 3, in_channels * 9, name="conv_in", dtype=policy)
        self.levels = self._levels(channels, layers_per_block, "down")
        self.mid = VAEMidBlock(channels[-1], norm_num_groups, name="mid", dtype=policy)
        self._head(channels[-1])

    def build(self, input_shape):
        self._check_input(input_shape)
        self.conv_in.build(input_shape)
        shape = self.conv_in.compute_output_shape(input_shape)
        for level in self.levels:
            level.build(shape)
            shape = level.compute_output_shape(shape)
        self.mid.build(shape)
        self._build_head(shape)

    def call(self, inputs):
        x = self.conv_in(inputs)
        for level in self.levels:
            x = level(x)
        return self._apply_head(self.mid(x))


@keras.saving.register_keras_serializable(package="keras_lct")
class VAEDecoder(_Coder):
    """Latents to images: the encoder's mirror, `layers_per_block + 1` blocks per level.

    `conv_in` (3x3) -> `VAEMidBlock` -> one `VAELevel` per entry of
    `block_out_channels`, reversed (upsampling on all but the last) ->
    GroupNorm -> SiLU -> `conv_out` (3x3).

    Args:
        in_channels: latent channels.
        out_channels: image channels.
        block_out_channels: channels per level, in the encoder's order.
        layers_per_block: the encoder's residual blocks per level (the
            decoder has one more).
        norm_num_groups: GroupNorm groups.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, h, w, in_channels)`.

    Example:
    >>> decoder = VAEDecoder(4, 3, (32, 64), layers_per_block=1, norm_num_groups=8)
    >>> decoder(np.zeros((1, 8, 8, 4))).shape
    (1, 16, 16, 3)

    Reference: diffusers `Decoder` (norm_type="group").
    """

    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups=32, **kwargs):
        super().__init__(in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups, **kwargs)
        policy = self.dtype_policy
        channels = self.block_out_channels[::-1]
        self.conv_in = conv2d(channels[0], 3, in_channels * 9, name="conv_in", dtype=policy)
        self.mid = VAEMidBlock(channels[0], norm_num_groups, name="mid", dtype=policy)
        self.levels = self._levels(channels, layers_per_block + 1, "up")
        self._head(channels[-1])

    def build(self, input_shape):
        self._check_input(input_shape)
        self.conv_in.build(input_shape)
        shape = self.conv_in.compute_output_shape(input_shape)
        self.mid.build(shape)
        for level in self.levels:
            level.build(shape)
            shape = level.compute_output_shape(shape)
        self._build_head(shape)

    def call(self, inputs):
        x = self.mid(self.conv_in(inputs))
        for level in self.levels:
            x = level(x)
        return self._apply_head(x)


@keras.saving.register_keras_serializable(package="keras_lct")
class AutoencoderKL(keras.Model):
    """The Stable Diffusion KL autoencoder: images in [-1, 1] <-> latents at 1/f resolution.

    `encode` maps images to the diagonal Gaussian posterior's `(mean,
    logvar)` (`quant_conv` (1x1) after the encoder; logvar clipped to [-30,
    20]); `decode` maps latents back to images (`post_quant_conv` (1x1),
    then the decoder). f = 2^(len(block_out_channels) - 1) = 8 for SD.
    Latents for a diffusion model are `scaling_factor * sample`; `decode`
    takes unscaled latents (divide by `scaling_factor` first), as diffusers.
    Calling the model runs `decode(encode(images)[0])`, the deterministic
    reconstruction. Layers, names and numerics equal diffusers'
    `AutoencoderKL`; `keras_lct.vae.load_autoencoder` loads its weights.

    Args:
        in_channels: image channels.
        out_channels: reconstructed image channels.
        block_out_channels: channels per level of the encoder (reversed in
            the decoder); each must be divisible by `norm_num_groups`.
        layers_per_block: residual blocks per encoder level (decoder: + 1).
        latent_channels: L, the channels of a latent.
        norm_num_groups: GroupNorm groups everywhere.
        sample_size: the image size the weights were trained at (metadata,
            as diffusers'; any size divisible by f works).
        scaling_factor: the latents' scale for a diffusion model (0.18215).
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Call arguments:
        images: `(batch, H, W, in_channels)` in [-1, 1], H and W divisible by f.

    Example:
    ```python
    vae = AutoencoderKL.from_preset("tiny")                     # random weights
    vae = keras_lct.vae.load_autoencoder("sd-vae-ft-ema/")      # a diffusers folder
    mean, logvar = vae.encode(images)                           # (b, H/8, W/8, 4) each
    latents = vae.scaling_factor * vae.sample_posterior(mean, logvar, noise)
    images = vae.decode(latents / vae.scaling_factor)
    ```

    Reference: Rombach et al. 2022 (LDM), the KL-regularized autoencoder;
    diffusers `AutoencoderKL`.
    """

    def __init__(
        self,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        self.block_out_channels = tuple(check_int("block_out_channels", width, 1) for width in block_out_channels)
        self.layers_per_block = check_int("layers_per_block", layers_per_block, 1)
        self.latent_channels = check_int("latent_channels", latent_channels, 1)
        self.norm_num_groups = check_int("norm_num_groups", norm_num_groups, 1)
        self.sample_size = check_int("sample_size", sample_size, 1)
        self.scaling_factor = check_positive("scaling_factor", scaling_factor)
        if not self.block_out_channels or any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(
                f"Every entry of block_out_channels={self.block_out_channels} must be divisible by "
                f"norm_num_groups={self.norm_num_groups} (GroupNorm), and there must be at least one."
            )

        policy = self.dtype_policy
        coder = dict(
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            dtype=policy,
        )
        moments = 2 * self.latent_channels
        self.encoder = VAEEncoder(self.in_channels, moments, name="encoder", **coder)
        self.quant_conv = conv2d(moments, 1, moments, name="quant_conv", dtype=policy)
        self.post_quant_conv = conv2d(self.latent_channels, 1, self.latent_channels, name="post_quant_conv", dtype=policy)
        self.decoder = VAEDecoder(self.latent_channels, self.out_channels, name="decoder", **coder)
        # Weights do not depend on the image size: built now, so that saving and fingerprints always see them.
        self.build((None, None, None, self.in_channels))

    @classmethod
    def from_preset(cls, preset, **overrides):
        """An AutoencoderKL of `VAE_PRESETS[preset]` (random weights), any argument overridden.

        Example:
        >>> vae = AutoencoderKL.from_preset("tiny")
        """
        if preset not in VAE_PRESETS:
            raise ValueError(f"Unknown VAE preset {preset!r}. Available: {', '.join(VAE_PRESETS)}.")
        return cls(**dict(VAE_PRESETS[preset], **overrides))

    @property
    def downsampling_factor(self):
        """f: image size / latent size (8 for Stable Diffusion's VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def latent_shape(self, image_size):
        """`(h, w, latent_channels)` of the latents of images of size `image_size` (an int or (H, W))."""
        height, width = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
        self._check_image_size(height, width)
        return (height // self.downsampling_factor, width // self.downsampling_factor, self.latent_channels)

    def build(self, input_shape):
        self._check_shape("images", input_shape, self.in_channels)
        self.encoder.build(input_shape)
        moments_shape = self.encoder.compute_output_shape(input_shape)
        self.quant_conv.build(moments_shape)
        latent_shape = _same_shape(moments_shape, self.latent_channels)
        self.post_quant_conv.build(latent_shape)
        self.decoder.build(latent_shape)

    def encode(self, images):
        """`(mean, logvar)` of the posterior, each `(batch, H/f, W/f, latent_channels)`.

        Args:
            images: `(batch, H, W, in_channels)` in [-1, 1], NumPy or tensor.

        Returns:
            two tensors of the backend.
        """
        shape = self._check_shape("images", _shape_of(images), self.in_channels)
        self._check_image_size(shape[1], shape[2])
        moments = self.quant_conv(self.encoder(images))
        mean, logvar = ops.split(moments, 2, axis=-1)
        return mean, ops.clip(logvar, *LOGVAR_RANGE)

    def decode(self, latents):
        """Images (not clipped; nominally in [-1, 1]) from unscaled latents `(batch, h, w, latent_channels)`."""
        self._check_shape("latents", _shape_of(latents), self.latent_channels)
        return self.decoder(self.post_quant_conv(latents))

    def sample_posterior(self, mean, logvar, noise):
        """A posterior sample `mean + exp(logvar / 2) * noise`, with the caller's standard-normal `noise`."""
        return mean + ops.exp(0.5 * logvar) * ops.cast(noise, mean.dtype)

    def call(self, images):
        mean, _ = self.encode(images)
        return self.decode(mean)

    def compute_output_shape(self, input_shape):
        return _same_shape(input_shape, self.out_channels)

    def fingerprint(self):
        """A hex sha256 of the architecture and every weight: equal iff latents are interchangeable.

        Hashes the JSON of `ARCHITECTURE_FIELDS` (sorted keys), then every
        weight in the model's order as float32 little-endian bytes, so it is
        the same on every backend and after a `.keras` round trip. Store it
        with cached latents and compare before reusing them.
        """
        config = {field: getattr(self, field) for field in ARCHITECTURE_FIELDS}
        config["block_out_channels"] = list(config["block_out_channels"])
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8"))
        for weight in self.weights:
            digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight), dtype="<f4").tobytes())
        return digest.hexdigest()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "block_out_channels": list(self.block_out_channels),
                "layers_per_block": self.layers_per_block,
                "latent_channels": self.latent_channels,
                "norm_num_groups": self.norm_num_groups,
                "sample_size": self.sample_size,
                "scaling_factor": self.scaling_factor,
            }
        )
        return config

    def _check_shape(self, name, shape, channels):
        if len(shape) != 4:
            raise ValueError(
                f"AutoencoderKL takes {name} of shape (batch, height, width, {channels}), channels_last; "
                f"received rank {len(shape)}, shape {tuple(shape)}."
            )
        if shape[-1] is not None and shape[-1] != channels:
            raise ValueError(
                f"AutoencoderKL takes {name} with {channels} channels, channels_last (batch, height, width, {channels}); "
                f"received shape {tuple(shape)}."
            )
        return tuple(shape)

    def _check_image_size(self, height, width):
        factor = self.downsampling_factor
        if any(size is not None and size % factor for size in (height, width)):
            raise ValueError(
                f"Image height and width must be divisible by the downsampling factor {factor} "
                f"(block_out_channels={self.block_out_channels}); received {height}x{width}."
            )


def _shape_of(array):
    return tuple(array.shape) if hasattr(array, "shape") else np.shape(array)
