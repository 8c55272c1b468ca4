"""The diffusion transformer (DiT) denoiser, unconditional or class-conditional, as a channels_last Keras model.

Reference: DiT (Peebles & Xie, 2023) as the authors' code runs it
(`models/network_dit.py`); `docs/reference.md` "DiT"; `docs/dit.md`.
"""

import keras
from keras import ops

from keras_lct.layers.core import Dense
from keras_lct.layers.embedding import ClassEmbedding
from keras_lct.layers.embedding import PositionalEmbedding
from keras_lct.layers.embedding import check_class_arguments
from keras_lct.layers.embedding import check_conditional_inputs
from keras_lct.layers.embedding import split_conditional_inputs
from keras_lct.layers.normalization import normalization_name
from keras_lct.layers.transformer import DiTBlock
from keras_lct.layers.transformer import DiTFinalLayer
from keras_lct.layers.transformer import PatchEmbedding
from keras_lct.layers.transformer import unpatchify

# The authors' DiT configurations, by the authors' names (depth, width, heads, patch), on 32x32x4 latents
# (256px images, VAE f=8).
_LATENT_32 = dict(input_size=32, in_channels=4)
DIT_PRESETS = {
    "DiT-S/2": dict(_LATENT_32, depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "DiT-S/4": dict(_LATENT_32, depth=12, hidden_size=384, num_heads=6, patch_size=4),
    "DiT-B/2": dict(_LATENT_32, depth=12, hidden_size=768, num_heads=12, patch_size=2),
    "DiT-B/4": dict(_LATENT_32, depth=12, hidden_size=768, num_heads=12, patch_size=4),
    "DiT-L/2": dict(_LATENT_32, depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "DiT-XL/2": dict(_LATENT_32, depth=28, hidden_size=1152, num_heads=16, patch_size=2),
    # The quickstart's 4x4x4 digit latents: one token per latent pixel, narrow and shallow for a CPU.
    "DiT-digits": dict(input_size=4, in_channels=4, depth=4, hidden_size=64, num_heads=4, patch_size=1),
    # The recipes' --smoke runs: 128px images through the tiny VAE (f=8) give 16x16x4 latents.
    "DiT-smoke": dict(input_size=16, in_channels=4, depth=2, hidden_size=64, num_heads=4, patch_size=2),
}
DIT_NORMS = ("layer", "nsln")
# The width of the noise level's sinusoidal features (DiT's `frequency_embedding_size`).
FREQUENCY_CHANNELS = 256


@keras.saving.register_keras_serializable(package="keras_lct")
class DiT(keras.Model):
    """The diffusion transformer denoiser F(x, c_noise) or, class-conditional, F(x, c_noise, y).

    x is cut into `patch_size` x `patch_size` patches, each a token (plus a
    fixed 2-D sine-cosine position embedding); the noise label goes through
    a 256-channel sinusoidal embedding and a Dense-SiLU-Dense MLP, to which
    a class embedding is added when `num_classes > 0`, and with
    `interval_embedding=True` a second such MLP of the interval h = t - r
    (MeanFlow's u(z, t, r), F(x, c_noise, h[, y])); `depth` adaLN-Zero
    transformer blocks and a final modulated linear layer map the tokens
    back to patches of `out_channels`. Initialized as DiT (xavier-uniform
    linear layers with zero biases, normal(0.02) timestep MLP and class
    table, zero modulations and output): a fresh DiT outputs zeros.

    `norm` picks one of the authors' two DiTs: `"layer"`, Meta's DiT (their
    branch `ssl_ot`): LayerNorms without scale or offset, epsilon 1e-6, no
    normalization of queries and keys; `"nsln"`, the DiT of their `master`
    with `--no-scale`: the same block norms at epsilon 1e-5, and queries and
    keys normalized per head by a LayerNorm without scale (NsLN; its offset
    is trained). The block norms have no parameters in either, so NsLN can
    only act on the queries and keys.

    Args:
        input_size: H = W of the input.
        patch_size: the side of a patch; must divide `input_size`.
        in_channels: input channels.
        out_channels: output channels (`None`: `in_channels`).
        hidden_size: token width (divisible by 4 and by `num_heads`).
        depth: the number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: the blocks' MLP width over `hidden_size`.
        norm: `"layer"` (Meta's DiT) or `"nsln"` (the authors' `master`,
            `--no-scale`), see above.
        qk_norm: normalize each head's queries and keys with `norm`'s
            LayerNorm (scale and offset for `"layer"`, offset only for
            `"nsln"`); `None`: as `norm`'s reference (False for `"layer"`,
            True for `"nsln"`).
        epsilon: the block and final norms' epsilon; `None`: as `norm`'s
            reference (1e-6 for `"layer"`, 1e-5 for `"nsln"`).
        num_classes: classes of the labels; 0 for an unconditional network
            (no class embedding at all).
        label_dropout: the share of training labels the ConsistencyModel
            replaces by the null class `num_classes`; > 0 gives the null
            class a learned embedding of its own (the network itself never
            drops labels).
        interval_embedding: take a second time input, the interval
            h = t - r of MeanFlow's average velocity u(z, t, r): the same
            256-channel sinusoid, its own Dense-SiLU-Dense MLP
            (`interval_dense0`, `interval_dense1`, initialized as the
            timestep MLP), added to the conditioning. False: no such layers.
        **kwargs: passed to `keras.Model` (e.g. `name`, `dtype`).

    Call arguments:
        inputs: `[x, noise_labels]`, x of shape
            `(batch, input_size, input_size, in_channels)` and noise_labels
            (c_noise) of shape `(batch,)`; for a class-conditional network
            `[x, noise_labels, class_labels]`, int labels of shape `(batch,)`
            (label `num_classes`: no label), or `[x, noise_labels]` for the
            null class when it has one (`label_dropout > 0`). With
            `interval_embedding=True` the intervals, shape `(batch,)`, follow
            the noise labels: `[x, noise_labels, intervals]` or
            `[x, noise_labels, intervals, class_labels]`.
        training: unused (no dropout); kept for a uniform network signature.

    Example:
    ```python
    dit = DiT.from_preset("DiT-B/2")                                      # unconditional, 32x32x4
    imagenet = DiT.from_preset("DiT-XL/2", num_classes=1000, label_dropout=0.1)
    out = imagenet([x, noise_labels, class_labels])
    model = ConsistencyModel(DiT.from_preset("DiT-smoke"))                # a drop-in for the UNet
    meanflow = DiT.from_preset("DiT-B/4", interval_embedding=True)
    u = meanflow([z, t, t - r])
    ```

    Reference: DiT (Peebles & Xie, 2023); the authors' `models/network_dit.py`
    (`docs/reference.md` "DiT"); `docs/dit.md`. The interval embedding:
    MeanFlow (Geng et al., 2025), `docs/reference.md` "MeanFlow".
    """

    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        out_channels=None,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        norm="layer",
        qk_norm=None,
        epsilon=None,
        num_classes=0,
        label_dropout=0.0,
        interval_embedding=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm = normalization_name(norm)
        self.qk_norm = self.norm == "nsln" if qk_norm is None else bool(qk_norm)
        self.epsilon = (1e-6 if self.norm == "layer" else 1e-5) if epsilon is None else epsilon
        self.num_classes, self.label_dropout = check_class_arguments(num_classes, label_dropout, "DiT")
        self.interval_embedding = bool(interval_embedding)
        self._check_arguments()

        policy = self.dtype_policy
        timestep_initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.patch_embedding = PatchEmbedding(patch_size, hidden_size, name="patch_embedding", dtype=policy)
        self.timestep_frequencies = PositionalEmbedding(FREQUENCY_CHANNELS, name="timestep_frequencies", dtype=policy)
        self.timestep_dense0, self.timestep_dense1 = (
            Dense(hidden_size, kernel_initializer=timestep_initializer, name=f"timestep_dense{index}", dtype=policy)
            for index in (0, 1)
        )
        self.interval_dense0, self.interval_dense1 = (
            [
                Dense(hidden_size, kernel_initializer=timestep_initializer, name=f"interval_dense{index}", dtype=policy)
                for index in (0, 1)
            ]
            if self.interval_embedding
            else (None, None)
        )
        self.class_embedding = (
            ClassEmbedding(
                self.num_classes,
                hidden_size,
                null_class="learned" if self.label_dropout else None,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="class_embedding",
                dtype=policy,
            )
            if self.num_classes
            else None
        )
        qk_norm_kind = self.norm if self.qk_norm else None
        self.blocks = [
            DiTBlock(hidden_size, num_heads, mlp_ratio, self.epsilon, qk_norm_kind, name=f"block{index}", dtype=policy)
            for index in range(depth)
        ]
        self.final_layer = DiTFinalLayer(
            hidden_size, patch_size, self.out_channels, self.epsilon, name="final_layer", dtype=policy
        )

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A DiT of `DIT_PRESETS[preset]`, with any argument overridden.

        Example:
        >>> dit = DiT.from_preset("DiT-S/2", input_size=64, num_classes=10, label_dropout=0.1)
        """
        if preset not in DIT_PRESETS:
            raise ValueError(f"Unknown DiT preset {preset!r}. Available: {', '.join(DIT_PRESETS)}.")
        return cls(**dict(DIT_PRESETS[preset], **overrides))

    def _check_arguments(self):
        if self.norm not in DIT_NORMS:
            raise ValueError(
                f"A DiT's `norm` is 'layer' (Meta's DiT) or 'nsln' (the authors' NsLN DiT); received {self.norm!r}."
            )
        for name in ("input_size", "patch_size", "in_channels", "out_channels", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiT: `{name}` must be an integer >= 1; received {value!r}.")
        if self.input_size % self.patch_size:
            raise ValueError(
                f"DiT: patch_size={self.patch_size} does not divide input_size={self.input_size}; "
                "choose a patch size that divides the input's side."
            )
        if self.hidden_size % 4 or self.hidden_size % self.num_heads:
            raise ValueError(
                f"DiT: hidden_size={self.hidden_size} must be divisible by 4 (the 2-D position embedding) and by "
                f"num_heads={self.num_heads}."
            )

    @property
    def grid_size(self):
        """Patches per side: `input_size / patch_size`."""
        return self.input_size // self.patch_size

    def build(self, input_shape):
        check_conditional_inputs(
            input_shape, self.num_classes, self.label_dropout, "This DiT", self.interval_embedding
        )
        x_shape = tuple(input_shape[0])
        expected = (self.input_size, self.input_size, self.in_channels)
        if x_shape[1:] != expected:
            raise ValueError(f"This DiT takes inputs of shape {expected}; received {x_shape[1:]}.")
        tokens_shape = (None, self.grid_size**2, self.hidden_size)
        conditioning_shape = (None, self.hidden_size)
        self.patch_embedding.build(x_shape)
        self.timestep_frequencies.build((None,))
        self.timestep_dense0.build((None, FREQUENCY_CHANNELS))
        self.timestep_dense1.build(conditioning_shape)
        if self.interval_embedding:
            self.interval_dense0.build((None, FREQUENCY_CHANNELS))
            self.interval_dense1.build(conditioning_shape)
        if self.class_embedding is not None:
            self.class_embedding.build((None,))
        for block in self.blocks:
            block.build(tokens_shape, conditioning_shape)
        self.final_layer.build(tokens_shape, conditioning_shape)

    def call(self, inputs, training=None):
        x, noise_labels, intervals, class_labels = split_conditional_inputs(
            inputs, self.num_classes, self.label_dropout, "This DiT", self.interval_embedding
        )
        conditioning = self._embed_time(noise_labels, self.timestep_dense0, self.timestep_dense1)
        if self.interval_embedding:
            conditioning = conditioning + self._embed_time(intervals, self.interval_dense0, self.interval_dense1)
        if self.class_embedding is not None:
            conditioning = conditioning + self.class_embedding(class_labels)
        tokens = self.patch_embedding(x)
        for block in self.blocks:
            tokens = block(tokens, conditioning)
        patches = self.final_layer(tokens, conditioning)
        return unpatchify(patches, self.grid_size, self.grid_size, self.patch_size, self.out_channels)

    def _embed_time(self, values, first_dense, second_dense):
        """`second_dense(SiLU(first_dense(sinusoid(values))))`: DiT's TimestepEmbedder of a `(batch,)` time input."""
        frequencies = self.timestep_frequencies(ops.reshape(values, (-1,)))
        return second_dense(ops.silu(first_dense(frequencies)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.out_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_size": self.input_size,
                "patch_size": self.patch_size,
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "hidden_size": self.hidden_size,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "norm": self.norm,
                "qk_norm": self.qk_norm,
                "epsilon": self.epsilon,
                "num_classes": self.num_classes,
                "label_dropout": self.label_dropout,
                "interval_embedding": self.interval_embedding,
            }
        )
        return config
