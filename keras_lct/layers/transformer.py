"""The diffusion transformer's (DiT's) layers: patch embedding, the adaLN-Zero block, the final layer.

Channels_last throughout: images `(batch, H, W, C)`, tokens `(batch, tokens, hidden)`
in row-major patch order. Initialization as in DiT: xavier-uniform weights and
zero biases for every linear layer (the patch projection too, as a linear
layer on the flattened patch), zeros for the adaLN modulations and the final
projection, so that a fresh block is the identity and a fresh network outputs
zeros. The attention is `keras_lct.layers.core.dot_product_attention`.
"""

import math

import keras
from keras import ops

from keras_lct.backend import fast_paths
from keras_lct.layers.core import Conv2D
from keras_lct.layers.core import Dense
from keras_lct.layers.core import dot_product_attention
from keras_lct.layers.embedding import sincos_position_embedding_2d

QK_NORMS = ("layer", "nsln")


def xavier_uniform(fan_in, fan_out):
    """Uniform in +-sqrt(6 / (fan_in + fan_out)) (torch's `xavier_uniform_`, Keras' GlorotUniform of a Dense kernel).

    For a kernel whose Keras fans differ from the linear map it computes
    (the patch projection: fan_in = patch area x channels, fan_out = hidden).
    """
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit)


def modulate(x, shift, scale):
    """`x (1 + scale) + shift` per sample, for tokens `(batch, tokens, d)` and shift, scale `(batch, d)`."""
    return x * (1.0 + ops.expand_dims(scale, 1)) + ops.expand_dims(shift, 1)


def _dense(units, zero=False, name=None, dtype=None):
    """A biased Dense layer with DiT's initialization: xavier-uniform and zero bias, or zeros."""
    return Dense(units, kernel_initializer="zeros" if zero else "glorot_uniform", name=name, dtype=dtype)


def _plain_layer_norm(epsilon, name, dtype):
    """LayerNorm over the last axis without scale or offset (torch `elementwise_affine=False`)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, center=False, scale=False, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_lct")
class PatchEmbedding(fast_paths.DirectNestedCall, keras.layers.Layer):
    """Non-overlapping patches to tokens, plus a fixed 2-D sine-cosine position embedding.

    A `patch_size` x `patch_size` convolution of stride `patch_size` (a
    linear map of each flattened patch, xavier-uniform on its
    `patch_size^2 C -> hidden_size` fans, zero bias), flattened row-major to
    `(batch, H W / patch_size^2, hidden_size)`, plus
    `keras_lct.layers.embedding.sincos_position_embedding_2d` of the patch
    grid, held as a non-trainable weight.

    Args:
        patch_size: the side of a patch; must divide H and W.
        hidden_size: token width; divisible by 4.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: `(batch, H, W, C)`.

    Example:
    >>> PatchEmbedding(2, 64)(np.zeros((3, 8, 8, 4))).shape
    (3, 16, 64)

    Reference: DiT's `PatchEmbed` and `pos_embed` (timm, MAE);
    `docs/reference.md` "DiT".
    """

    def __init__(self, patch_size, hidden_size, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"`patch_size` must be an integer >= 1; received {patch_size!r}.")
        if not isinstance(hidden_size, int) or hidden_size < 4 or hidden_size % 4:
            raise ValueError(f"`hidden_size` must be a positive multiple of 4; received {hidden_size!r}.")
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.projection = Conv2D(
            hidden_size, patch_size, strides=patch_size, padding="valid", name="projection", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        _, height, width, channels = input_shape
        if None in (height, width) or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"PatchEmbedding(patch_size={self.patch_size}) needs a known height and width divisible by "
                f"{self.patch_size}; received input shape {tuple(input_shape)}."
            )
        self.grid = (height // self.patch_size, width // self.patch_size)
        # The fans of the linear map on a flattened patch, which Keras' GlorotUniform would take as p^2 C and p^2 hidden.
        self.projection.kernel_initializer = xavier_uniform(self.patch_size**2 * channels, self.hidden_size)
        self.projection.build(input_shape)
        table = sincos_position_embedding_2d(self.hidden_size, *self.grid)
        self.position_embedding = self.add_weight(
            shape=table.shape,
            initializer=keras.initializers.Constant(table),
            trainable=False,
            name="position_embedding",
        )

    def call(self, inputs):
        patches = self.projection(inputs)
        tokens = ops.reshape(patches, (-1, self.grid[0] * self.grid[1], self.hidden_size))
        return tokens + ops.cast(self.position_embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (batch, (height // self.patch_size) * (width // self.patch_size), self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size, "hidden_size": self.hidden_size})
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class DiTBlock(fast_paths.DirectNestedCall, keras.layers.Layer):
    """A transformer block with adaLN-Zero conditioning.

    `shift1, scale1, gate1, shift2, scale2, gate2 = Dense(SiLU(c))` (zero
    init); `x = x + gate1 attention(modulate(norm1(x), shift1, scale1))`;
    `x = x + gate2 MLP(modulate(norm2(x), shift2, scale2))`. The norms are
    LayerNorms without scale or offset; the attention is multi-head
    self-attention with a biased qkv projection and an output projection,
    optionally normalizing each head's queries and keys (`qk_norm`); the MLP
    is Dense -> GELU (tanh approximation) -> Dense.

    Args:
        hidden_size: token width.
        num_heads: attention heads; must divide `hidden_size`.
        mlp_ratio: the MLP's hidden width over `hidden_size` (4).
        epsilon: the block norms' epsilon (1e-6 in Meta's DiT, 1e-5 in the
            authors' `master`).
        qk_norm: `None` (no normalization of queries and keys), `"layer"`
            (a LayerNorm with scale and offset over each head's features,
            timm's `qk_norm=True`) or `"nsln"` (the same without scale:
            the authors' NonScalingLayerNorm, whose scale is frozen at 1);
            epsilon 1e-5 (torch's default) either way.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        x: tokens `(batch, tokens, hidden_size)`.
        conditioning: `(batch, hidden_size)`, the sum of the noise-level
            and class embeddings.

    Example:
    >>> block = DiTBlock(64, num_heads=4)
    >>> block(np.zeros((3, 16, 64)), np.zeros((3, 64))).shape
    (3, 16, 64)

    Reference: DiT (Peebles & Xie, 2023), section 3.2, adaLN-Zero;
    `docs/reference.md` "DiT".
    """

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, epsilon=1e-6, qk_norm=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_heads, int) or num_heads < 1 or hidden_size % num_heads:
            raise ValueError(
                f"`num_heads` must be an integer >= 1 that divides hidden_size={hidden_size}; received {num_heads!r}."
            )
        if qk_norm not in (None,) + QK_NORMS:
            raise ValueError(f"`qk_norm` must be None, 'layer' or 'nsln'; received {qk_norm!r}.")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.epsilon = epsilon
        self.qk_norm = qk_norm
        self.mlp_hidden_size = int(hidden_size * mlp_ratio)

        policy = self.dtype_policy
        self.norm1 = _plain_layer_norm(epsilon, "norm1", policy)
        self.qkv = _dense(3 * hidden_size, name="qkv", dtype=policy)
        if qk_norm:
            self.query_norm, self.key_norm = (
                keras.layers.LayerNormalization(epsilon=1e-5, scale=qk_norm == "layer", name=name, dtype=policy)
                for name in ("query_norm", "key_norm")
            )
        self.proj = _dense(hidden_size, name="proj", dtype=policy)
        self.norm2 = _plain_layer_norm(epsilon, "norm2", policy)
        self.fc1 = _dense(self.mlp_hidden_size, name="fc1", dtype=policy)
        self.fc2 = _dense(hidden_size, name="fc2", dtype=policy)
        self.modulation = _dense(6 * hidden_size, zero=True, name="modulation", dtype=policy)

    def build(self, x_shape, conditioning_shape):
        if x_shape[-1] != self.hidden_size:
            raise ValueError(f"DiTBlock(hidden_size={self.hidden_size}) received tokens of width {x_shape[-1]}.")
        head_shape = tuple(x_shape[:-1]) + (self.num_heads, self.hidden_size // self.num_heads)
        self.norm1.build(x_shape)
        self.qkv.build(x_shape)
        if self.qk_norm:
            self.query_norm.build(head_shape)
            self.key_norm.build(head_shape)
        self.proj.build(x_shape)
        self.norm2.build(x_shape)
        self.fc1.build(x_shape)
        self.fc2.build(tuple(x_shape[:-1]) + (self.mlp_hidden_size,))
        self.modulation.build(conditioning_shape)

    def attention(self, x):
        """Multi-head self-attention of tokens `(batch, tokens, hidden_size)`."""
        batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
        qkv = ops.reshape(self.qkv(x), (batch, tokens, 3, self.num_heads, self.hidden_size // self.num_heads))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.qk_norm:
            query, key = self.query_norm(query), self.key_norm(key)
        attended = dot_product_attention(query, key, value)
        return self.proj(ops.reshape(attended, (batch, tokens, self.hidden_size)))

    def call(self, x, conditioning):
        shift1, scale1, gate1, shift2, scale2, gate2 = ops.split(self.modulation(ops.silu(conditioning)), 6, axis=-1)
        x = x + ops.expand_dims(gate1, 1) * self.attention(modulate(self.norm1(x), shift1, scale1))
        hidden = keras.activations.gelu(self.fc1(modulate(self.norm2(x), shift2, scale2)), approximate=True)
        return x + ops.expand_dims(gate2, 1) * self.fc2(hidden)

    def compute_output_shape(self, x_shape, conditioning_shape):
        return tuple(x_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "epsilon": self.epsilon,
                "qk_norm": self.qk_norm,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class DiTFinalLayer(fast_paths.DirectNestedCall, keras.layers.Layer):
    """DiT's output layer: `Dense(modulate(norm(x), shift, scale))` with `shift, scale = Dense(SiLU(c))`.

    Both Dense layers start at zero (a fresh DiT outputs zeros). Each token
    becomes its patch's `patch_size^2 out_channels` values, in the order
    (patch row, patch column, channel) that `unpatchify` reads.

    Args:
        hidden_size: token width.
        patch_size: the side of a patch.
        out_channels: channels of the output image.
        epsilon: the norm's epsilon (a LayerNorm without scale or offset).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        x: tokens `(batch, tokens, hidden_size)`.
        conditioning: `(batch, hidden_size)`.

    Example:
    >>> final = DiTFinalLayer(64, patch_size=2, out_channels=4)
    >>> final(np.zeros((3, 16, 64)), np.zeros((3, 64))).shape
    (3, 16, 16)

    Reference: DiT's `FinalLayer`; `docs/reference.md` "DiT".
    """

    def __init__(self, hidden_size, patch_size, out_channels, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.epsilon = epsilon
        policy = self.dtype_policy
        self.norm = _plain_layer_norm(epsilon, "norm", policy)
        self.modulation = _dense(2 * hidden_size, zero=True, name="modulation", dtype=policy)
        self.linear = _dense(patch_size**2 * out_channels, zero=True, name="linear", dtype=policy)

    def build(self, x_shape, conditioning_shape):
        self.norm.build(x_shape)
        self.modulation.build(conditioning_shape)
        self.linear.build(x_shape)

    def call(self, x, conditioning):
        shift, scale = ops.split(self.modulation(ops.silu(conditioning)), 2, axis=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def compute_output_shape(self, x_shape, conditioning_shape):
        return tuple(x_shape[:-1]) + (self.patch_size**2 * self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "patch_size": self.patch_size,
                "out_channels": self.out_channels,
                "epsilon": self.epsilon,
            }
        )
        return config


def unpatchify(tokens, grid_height, grid_width, patch_size, channels):
    """Tokens `(batch, grid_height grid_width, patch_size^2 channels)` back to an image `(batch, H, W, channels)`.

    The inverse of `PatchEmbedding`'s patch order: token `i grid_width + j`
    holds the patch of rows `i p .. i p + p - 1` and columns `j p .. j p + p - 1`,
    its values in the order (row in patch, column in patch, channel).

    Example:
    >>> unpatchify(np.zeros((3, 16, 16)), 4, 4, 2, 4).shape
    (3, 8, 8, 4)
    """
    patches = ops.reshape(tokens, (-1, grid_height, grid_width, patch_size, patch_size, channels))
    patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5))
    return ops.reshape(patches, (-1, grid_height * patch_size, grid_width * patch_size, channels))
