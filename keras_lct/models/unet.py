"""The ADM UNet ("DhariwalUNet" of NVlabs EDM) as a channels_last Keras model.

Reference: paper section 5.1 (the OpenAI UNet of Dhariwal & Nichol as the
denoiser F), section 4.6 / table 2d (the norm), `docs/reference.md` "Network".
"""

import keras
from keras import ops

from keras_lct.layers.core import conv2d
from keras_lct.layers.core import dense
from keras_lct.layers.embedding import ClassEmbedding
from keras_lct.layers.embedding import PositionalEmbedding
from keras_lct.layers.embedding import check_class_arguments
from keras_lct.layers.embedding import check_conditional_inputs
from keras_lct.layers.embedding import split_conditional_inputs
from keras_lct.layers.normalization import normalization
from keras_lct.layers.normalization import normalization_name
from keras_lct.layers.unet_blocks import UNetBlock

# The authors' network at these arguments; all on 32x32x4 latents, 4 channels out.
_LATENT_32 = dict(img_resolution=32, in_channels=4, out_channels=4, channel_mult_emb=4, dropout=0.0)
UNET_PRESETS = {
    "celeba256": dict(_LATENT_32, model_channels=128, channel_mult=(1, 2, 3, 4), num_blocks=4, attn_resolutions=(16, 8)),
    "small": dict(_LATENT_32, model_channels=64, channel_mult=(1, 2, 3, 4), num_blocks=2, attn_resolutions=(16, 8)),
    "tiny": dict(_LATENT_32, model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8,)),
    # The recipes' --smoke network: the fewest blocks of the family (attention only in the lowest level's in0).
    "smoke": dict(_LATENT_32, model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=()),
}


@keras.saving.register_keras_serializable(package="keras_lct")
class UNet(keras.Model):
    """The ADM UNet denoiser F(x, c_noise) of latent consistency training, or F(x, c_noise, y).

    Noise labels go through a sinusoidal embedding and a 2-layer SiLU MLP
    (width `model_channels * channel_mult_emb`); with `num_classes > 0`, a
    class embedding (EDM's `map_label`: a bias-free linear layer on the
    one-hot label) is added before the MLP's last SiLU, and so is, with
    `interval_embedding=True`, a second such MLP of the interval h = t - r
    (MeanFlow's u(z, t, r)). The encoder starts with a
    3x3 convolution, then per level a downsampling block (after level 0)
    and `num_blocks` blocks; the decoder starts with two blocks at the
    lowest level (the first with attention) or an upsampling block, then
    `num_blocks + 1` blocks on the concatenation with the encoder's skips;
    the output is `conv(SiLU(norm(x)))` with a zero-initialized convolution.
    Blocks at resolutions in `attn_resolutions` add self-attention. Every
    norm of the network is the one named by `norm`.

    Args:
        img_resolution: H = W of the input (must be divisible by
            2^(len(channel_mult) - 1)).
        in_channels: input channels.
        out_channels: output channels.
        model_channels: base width.
        channel_mult: width multipliers per level.
        channel_mult_emb: embedding width multiplier.
        num_blocks: blocks per level.
        attn_resolutions: resolutions with self-attention.
        dropout: dropout rate in the blocks.
        norm: `"nsln"` (the paper's), `"group"`, `"instance"`, `"layer"` or
            `"rms"` (table 2d).
        channels_per_head: attention head width (64).
        num_classes: classes of the labels; 0 for an unconditional network.
        label_dropout: the share of training labels the ConsistencyModel
            replaces by the null class `num_classes`; > 0 lets the network
            take the null class, whose embedding is zero (EDM's all-zero
            one-hot label). The network itself never drops labels.
        interval_embedding: take a second time input, the interval
            h = t - r of MeanFlow's average velocity u(z, t, r): the same
            sinusoidal embedding, its own 2-layer MLP (`map_interval_layer0`,
            `map_interval_layer1`, initialized as `map_layer0`, `map_layer1`),
            added to the noise embedding. False: no such layers.
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Call arguments:
        inputs: `[x, noise_labels]`, x of shape
            `(batch, img_resolution, img_resolution, in_channels)` and
            noise_labels of shape `(batch,)`; for a class-conditional network
            `[x, noise_labels, class_labels]`, int labels of shape `(batch,)`
            (label `num_classes`: no label), or `[x, noise_labels]` for the
            null class when it has one (`label_dropout > 0`). With
            `interval_embedding=True` the intervals, shape `(batch,)`, follow
            the noise labels: `[x, noise_labels, intervals]` or
            `[x, noise_labels, intervals, class_labels]`.
        training: enables dropout.

    Example:
    ```python
    unet = UNet.from_preset("celeba256")                 # NsLN, 158.36M parameters
    baseline = UNet.from_preset("celeba256", norm="group")
    out = unet([x, noise_labels])
    ```

    Reference: paper section 5.1 and table 2d; `docs/reference.md` "Network".
    The interval embedding: MeanFlow (Geng et al., 2025), `docs/reference.md`
    "MeanFlow".
    """

    def __init__(
        self,
        img_resolution=32,
        in_channels=4,
        out_channels=4,
        model_channels=128,
        channel_mult=(1, 2, 3, 4),
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=(16, 8),
        dropout=0.0,
        norm="nsln",
        channels_per_head=64,
        num_classes=0,
        label_dropout=0.0,
        interval_embedding=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.channel_mult = tuple(channel_mult)
        self.channel_mult_emb = channel_mult_emb
        self.num_blocks = num_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.dropout = dropout
        self.norm = normalization_name(norm)
        self.channels_per_head = channels_per_head
        self.num_classes, self.label_dropout = check_class_arguments(num_classes, label_dropout, "UNet")
        self.interval_embedding = bool(interval_embedding)
        self._check_arguments()

        policy = self.dtype_policy
        emb_channels = model_channels * channel_mult_emb
        block = dict(
            emb_channels=emb_channels, channels_per_head=channels_per_head, dropout=dropout, norm=norm, dtype=policy
        )
        self.map_noise = PositionalEmbedding(model_channels, name="map_noise", dtype=policy)
        self.map_layer0 = dense(emb_channels, model_channels, name="map_layer0", dtype=policy)
        self.map_layer1 = dense(emb_channels, emb_channels, name="map_layer1", dtype=policy)
        self.map_interval_layer0, self.map_interval_layer1 = (
            (
                dense(emb_channels, model_channels, name="map_interval_layer0", dtype=policy),
                dense(emb_channels, emb_channels, name="map_interval_layer1", dtype=policy),
            )
            if self.interval_embedding
            else (None, None)
        )
        self.map_label = (
            ClassEmbedding(
                self.num_classes,
                emb_channels,
                null_class="zero" if self.label_dropout else None,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0),
                name="map_label",
                dtype=policy,
            )
            if self.num_classes
            else None
        )

        self.encoder = []
        channels = in_channels
        for level, mult in enumerate(self.channel_mult):
            resolution = img_resolution >> level
            if level == 0:
                self.encoder.append(conv2d(model_channels * mult, 3, channels * 9, name=f"enc_{resolution}x{resolution}_conv", dtype=policy))
                channels = model_channels * mult
            else:
                self.encoder.append(UNetBlock(channels, channels, down=True, name=f"enc_{resolution}x{resolution}_down", **block))
            for index in range(num_blocks):
                attention = resolution in self.attn_resolutions
                self.encoder.append(
                    UNetBlock(channels, model_channels * mult, attention=attention, name=f"enc_{resolution}x{resolution}_block{index}", **block)
                )
                channels = model_channels * mult
        skip_channels = [self._channels_after(layer) for layer in self.encoder]

        self.decoder = []
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            resolution = img_resolution >> level
            if level == len(self.channel_mult) - 1:
                self.decoder.append(UNetBlock(channels, channels, attention=True, name=f"dec_{resolution}x{resolution}_in0", **block))
                self.decoder.append(UNetBlock(channels, channels, name=f"dec_{resolution}x{resolution}_in1", **block))
            else:
                self.decoder.append(UNetBlock(channels, channels, up=True, name=f"dec_{resolution}x{resolution}_up", **block))
            for index in range(num_blocks + 1):
                attention = resolution in self.attn_resolutions
                self.decoder.append(
                    UNetBlock(
                        channels + skip_channels.pop(),
                        model_channels * mult,
                        attention=attention,
                        name=f"dec_{resolution}x{resolution}_block{index}",
                        **block,
                    )
                )
                channels = model_channels * mult
        self.out_norm = normalization(norm, channels, name="out_norm", dtype=policy)
        self.out_conv = conv2d(out_channels, 3, channels * 9, zero=True, name="out_conv", dtype=policy)

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A UNet of `UNET_PRESETS[preset]`, with any argument overridden.

        Example:
        >>> unet = UNet.from_preset("tiny", norm="group")
        """
        if preset not in UNET_PRESETS:
            raise ValueError(f"Unknown UNet preset {preset!r}. Available: {', '.join(UNET_PRESETS)}.")
        return cls(**dict(UNET_PRESETS[preset], **overrides))

    def _check_arguments(self):
        levels = len(self.channel_mult)
        if self.img_resolution % (2 ** (levels - 1)):
            raise ValueError(
                f"img_resolution={self.img_resolution} is not divisible by the downsampling factor "
                f"{2 ** (levels - 1)} of {levels} levels (channel_mult={self.channel_mult})."
            )
        pyramid = [self.img_resolution >> level for level in range(levels)]
        for resolution in self.attn_resolutions:
            if resolution not in pyramid:
                raise ValueError(
                    f"Attention resolution {resolution} is not in the UNet's pyramid {pyramid}; "
                    "choose attn_resolutions among those."
                )
        attended = [self.model_channels * self.channel_mult[-1]] + [
            self.model_channels * mult
            for level, mult in enumerate(self.channel_mult)
            if self.img_resolution >> level in self.attn_resolutions
        ]
        for channels in attended:
            if channels % self.channels_per_head or channels < self.channels_per_head:
                raise ValueError(
                    f"Attention at {channels} channels: channels must be a positive multiple of "
                    f"channels_per_head={self.channels_per_head} (heads = channels / channels_per_head)."
                )

    def _channels_after(self, layer):
        return layer.out_channels if isinstance(layer, UNetBlock) else layer.filters

    def build(self, input_shape):
        check_conditional_inputs(
            input_shape, self.num_classes, self.label_dropout, "This UNet", self.interval_embedding
        )
        x_shape = input_shape[0]
        expected = (self.img_resolution, self.img_resolution, self.in_channels)
        if tuple(x_shape[1:]) != expected:
            raise ValueError(f"This UNet takes inputs of shape {expected}; received {tuple(x_shape[1:])}.")
        emb_shape = (None, self.model_channels * self.channel_mult_emb)
        self.map_noise.build((None,))
        self.map_layer0.build((None, self.model_channels))
        self.map_layer1.build(emb_shape)
        if self.interval_embedding:
            self.map_interval_layer0.build((None, self.model_channels))
            self.map_interval_layer1.build(emb_shape)
        if self.map_label is not None:
            self.map_label.build((None,))
        shape, skips = tuple(x_shape), []
        for layer in self.encoder:
            if isinstance(layer, UNetBlock):
                layer.build(shape, emb_shape)
                shape = layer.compute_output_shape(shape, emb_shape)
            else:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
            skips.append(shape)
        for layer in self.decoder:
            if shape[-1] != layer.in_channels:
                shape = shape[:-1] + (shape[-1] + skips.pop()[-1],)
            layer.build(shape, emb_shape)
            shape = layer.compute_output_shape(shape, emb_shape)
        self.out_norm.build(shape)
        self.out_conv.build(shape)

    def call(self, inputs, training=None):
        x, noise_labels, intervals, class_labels = split_conditional_inputs(
            inputs, self.num_classes, self.label_dropout, "This UNet", self.interval_embedding
        )
        emb = self._map_time(noise_labels, self.map_layer0, self.map_layer1)
        if self.interval_embedding:
            emb = emb + self._map_time(intervals, self.map_interval_layer0, self.map_interval_layer1)
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        emb = ops.silu(emb)
        skips = []
        for layer in self.encoder:
            x = layer(x, emb, training=training) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer in self.decoder:
            if x.shape[-1] != layer.in_channels:
                x = ops.concatenate([x, ops.cast(skips.pop(), x.dtype)], axis=-1)
            x = layer(x, emb, training=training)
        return self.out_conv(ops.silu(self.out_norm(x)))

    def _map_time(self, values, first_layer, second_layer):
        """`second_layer(SiLU(first_layer(map_noise(values))))`: EDM's mapping of a `(batch,)` time input."""
        return second_layer(ops.silu(first_layer(self.map_noise(ops.reshape(values, (-1,))))))

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0]
        return tuple(x_shape[:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "img_resolution": self.img_resolution,
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "model_channels": self.model_channels,
                "channel_mult": list(self.channel_mult),
                "channel_mult_emb": self.channel_mult_emb,
                "num_blocks": self.num_blocks,
                "attn_resolutions": list(self.attn_resolutions),
                "dropout": self.dropout,
                "norm": self.norm,
                "channels_per_head": self.channels_per_head,
                "num_classes": self.num_classes,
                "label_dropout": self.label_dropout,
                "interval_embedding": self.interval_embedding,
            }
        )
        return config
