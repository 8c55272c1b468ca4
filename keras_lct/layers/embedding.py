"""Embeddings of the noise level: sinusoidal positional and random Fourier."""

import math

import keras
from keras import ops

from keras_lct.backend import fast_paths


@keras.saving.register_keras_serializable(package="keras_lct")
class PositionalEmbedding(fast_paths.DirectNestedCall, keras.layers.Layer):
    """Sinusoidal embedding of a scalar per sample (the noise label c_noise).

    `[cos(x f_0), ..., cos(x f_{n-1}), sin(x f_0), ..., sin(x f_{n-1})]` with
    n = num_channels / 2 and f_j = (1 / max_positions)^(j / (n - 1)) if
    `endpoint` else (1 / max_positions)^(j / n), as in ADM / NVlabs EDM.

    Args:
        num_channels: output width (even).
        max_positions: the longest period (1e4).
        endpoint: whether the last frequency is exactly 1 / max_positions.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor `(batch,)` of noise labels.

    Example:
    >>> embedding = PositionalEmbedding(128)(np.array([250.0 * np.log(80.0)]))

    Reference: `docs/reference.md` "Network" (noise embedding); paper section 5.1.
    """

    def __init__(self, num_channels, max_positions=10000, endpoint=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_channels, int) or num_channels < 2 or num_channels % 2:
            raise ValueError(f"`num_channels` must be an even integer >= 2; received {num_channels!r}.")
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def call(self, inputs):
        half = self.num_channels // 2
        exponents = ops.arange(half, dtype="float32") / (half - (1 if self.endpoint else 0))
        frequencies = ops.power(1.0 / self.max_positions, exponents)
        angles = ops.expand_dims(ops.cast(inputs, "float32"), -1) * frequencies
        return ops.cast(ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.num_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_channels": self.num_channels, "max_positions": self.max_positions, "endpoint": self.endpoint}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_lct")
class FourierEmbedding(fast_paths.DirectNestedCall, keras.layers.Layer):
    """Random Fourier features of a scalar per sample (NCSN++ / iCT's embedding).

    `[cos(2 pi x f), sin(2 pi x f)]` with fixed frequencies f ~ N(0, scale^2),
    stored as a non-trainable weight so saved models keep them.

    Args:
        num_channels: output width (even).
        scale: standard deviation of the frequencies (iCT tunes it; 16 in EDM).
        seed: seed of the frequencies.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: a tensor `(batch,)` of noise labels.

    Example:
    >>> embedding = FourierEmbedding(128, scale=0.02)(np.array([0.5]))

    Reference: iCT's noise embedding, discussed in paper section 3.
    """

    def __init__(self, num_channels, scale=16.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_channels, int) or num_channels < 2 or num_channels % 2:
            raise ValueError(f"`num_channels` must be an even integer >= 2; received {num_channels!r}.")
        self.num_channels = num_channels
        self.scale = scale
        self.seed = seed

    def build(self, input_shape):
        self.frequencies = self.add_weight(
            shape=(self.num_channels // 2,),
            initializer=keras.initializers.RandomNormal(stddev=self.scale, seed=self.seed),
            trainable=False,
            name="frequencies",
        )

    def call(self, inputs):
        angles = ops.expand_dims(ops.cast(inputs, "float32"), -1) * (2.0 * math.pi * ops.cast(self.frequencies, "float32"))
        return ops.cast(ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.num_channels,)

    def get_config(self):
        config = super().get_config()
        config.update({"num_channels": self.num_channels, "scale": self.scale, "seed": self.seed})
        return config
