"""Non-scaling LayerNorm and a factory for the normalizations of table 2d (and its non-scaling variants)."""

import keras
from keras import ops

from keras_lct.backend import fast_paths


@keras.saving.register_keras_serializable(package="keras_lct")
class NonScalingLayerNormalization(fast_paths.DirectNestedCall, keras.layers.Layer):
    """Non-scaling LayerNorm (NsLN): LayerNorm over every feature axis, no scale.

    `NsLN(x) = (x - mean(x)) / sqrt(var(x) + eps) + beta`, with the mean and
    variance taken per sample over all non-batch axes (H, W, C for images)
    and a trainable offset `beta` of the per-sample feature shape. There is no
    scale at all (LayerNorm's gamma fixed to 1): a shared scale amplifies
    impulsive outliers across all features, which NsLN avoids. Like Keras'
    own normalizations, it computes in float32 whatever the compute dtype
    (`beta` is never autocast) and returns the compute dtype.

    Args:
        epsilon: added to the variance (1e-5).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor `(batch, ...)` of rank >= 2.

    Example:
    >>> layer = NonScalingLayerNormalization()
    >>> y = layer(np.random.normal(size=(2, 8, 8, 16)))

    Reference: paper section 4.6, eq. 12 and table 2d.
    """

    def __init__(self, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) < 2 or any(dim is None for dim in input_shape[1:]):
            raise ValueError(
                "NonScalingLayerNormalization needs a known per-sample shape; received "
                f"input shape {tuple(input_shape)}."
            )
        self.beta = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="zeros", name="beta", dtype=self.variable_dtype, autocast=False
        )

    def call(self, inputs):
        fused = fast_paths.layer_normalization(inputs, self.beta, self.epsilon)
        if fused is not None:
            return ops.cast(fused, self.compute_dtype)
        x = ops.cast(inputs, "float32")
        axes = tuple(range(1, len(x.shape)))
        mean, variance = ops.moments(x, axes=axes, keepdims=True)
        normalized = (x - mean) * ops.rsqrt(variance + self.epsilon)
        return ops.cast(normalized + ops.cast(self.beta, "float32"), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config


NORMALIZATIONS = ("group", "instance", "layer", "rms", "nsln", "nsgn", "nsin")
_ALIASES = {
    "gn": "group",
    "in": "instance",
    "ln": "layer",
    "rmsnorm": "rms",
    "non_scaling_layer": "nsln",
    "non_scaling_group": "nsgn",
    "non_scaling_instance": "nsin",
}


def normalization_name(name):
    """The canonical name of a normalization (`"GN"` -> `"group"`, ...).

    Raises:
        ValueError: for a name that is none of `NORMALIZATIONS` or their
            abbreviations in the paper's table 2d.
    """
    canonical = _ALIASES.get(str(name).lower(), str(name).lower()) if isinstance(name, str) else None
    if canonical not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalization {name!r}. Accepted: {', '.join(NORMALIZATIONS)} "
            "(case-insensitive; also the paper's GN, IN, LN, RMS, NsLN and NsGN, NsIN)."
        )
    return canonical


def normalization(kind, channels, epsilon=1e-5, **kwargs):
    """A normalization layer for channels_last feature maps, chosen by name.

    | name | normalizes over | affine parameters |
    |---|---|---|
    | `"group"` | groups of min(32, C // 4) channels, and H, W | per channel (gamma, beta) |
    | `"instance"` | each channel over H, W | per channel (gamma, beta) |
    | `"layer"` | all of H, W, C | per element (gamma, beta) |
    | `"rms"` | all of H, W, C (root mean square, no centering) | per element (gamma) |
    | `"nsln"` | all of H, W, C | per element (beta only) |
    | `"nsgn"` | as `"group"` | per channel (beta only) |
    | `"nsin"` | as `"instance"` | per channel (beta only) |

    `"nsgn"` and `"nsin"` are the non-scaling GroupNorm and InstanceNorm
    the paper proposes as future work (section 6): GroupNorm without its
    scale, as NsLN is LayerNorm without its scale.

    Layer-type norms (`layer`, `rms`, `nsln`) hold per-element parameters, so
    they are tied to the feature-map size they are built for, as in the
    authors' network (torch `LayerNorm([C, H, W])`). All compute in float32 and
    return the layer's compute dtype.

    Args:
        kind: one of `NORMALIZATIONS` (case-insensitive) or GN/IN/LN/RMS/NsLN.
        channels: C, the number of channels of the input.
        epsilon: added to the variance (1e-5).
        **kwargs: passed to the layer (e.g. `name`).

    Returns:
        a Keras layer.

    Example:
    >>> norm = normalization("NsLN", channels=64)   # paper table 2d, best row

    Reference: paper section 4.6, table 2d, and section 6 (future work).
    """
    kind = normalization_name(kind)
    if kind in ("group", "nsgn"):
        groups = min(32, max(channels // 4, 1))
        return keras.layers.GroupNormalization(groups, epsilon=epsilon, scale=kind == "group", **kwargs)
    if kind in ("instance", "nsin"):
        return keras.layers.GroupNormalization(channels, epsilon=epsilon, scale=kind == "instance", **kwargs)
    if kind == "layer":
        return keras.layers.LayerNormalization(axis=(-3, -2, -1), epsilon=epsilon, **kwargs)
    if kind == "rms":
        return keras.layers.RMSNormalization(axis=(-3, -2, -1), epsilon=epsilon, **kwargs)
    return NonScalingLayerNormalization(epsilon=epsilon, **kwargs)
