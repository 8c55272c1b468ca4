"""Embeddings of the conditioning: the noise level (sinusoidal, random Fourier), the class label, the patch position."""

import math

import keras
import numpy as np
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


NULL_CLASS_KINDS = ("learned", "zero")


@keras.saving.register_keras_serializable(package="keras_lct")
class ClassEmbedding(fast_paths.DirectNestedCall, keras.layers.Layer):
    """A learned vector per class label, with an optional null class (label `num_classes`).

    Labels 0..num_classes-1 look up rows of a trainable table. The null class
    `num_classes` ("no label", which classifier-free guidance trains on and
    samples with) is one of:

    - `None`: no null class; the table has `num_classes` rows.
    - `"learned"`: a row of its own, trained like the others (DiT's
      `LabelEmbedder` with dropout > 0: `num_classes + 1` rows).
    - `"zero"`: embeds to zeros, adding nothing (NVlabs EDM's `map_label`, a
      bias-free linear layer on the one-hot label, whose null class is the
      all-zero one-hot vector: `num_classes` rows).

    Labels outside 0..num_classes (or `num_classes` without a null class)
    are not checked inside a compiled step; check them before, e.g. with the
    ConsistencyModel's data checks.

    Args:
        num_classes: the number of classes K (>= 1).
        output_dim: width of the embedding.
        null_class: `None`, `"learned"` or `"zero"` (see above).
        embeddings_initializer: the table's initializer (DiT: normal with
            standard deviation 0.02; EDM: 1).
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: int labels of shape `(batch,)`.

    Example:
    >>> embedding = ClassEmbedding(10, 64, null_class="learned")
    >>> embedding(np.array([3, 10])).shape  # class 3 and the null class
    (2, 64)

    Reference: `docs/reference.md` "Class labels" (DiT's LabelEmbedder,
    EDM's DhariwalUNet `map_label`).
    """

    def __init__(self, num_classes, output_dim, null_class=None, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an integer >= 1; received {num_classes!r}.")
        if null_class not in (None,) + NULL_CLASS_KINDS:
            raise ValueError(f"`null_class` must be None, 'learned' or 'zero'; received {null_class!r}.")
        self.num_classes = num_classes
        self.output_dim = output_dim
        self.null_class = null_class
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=0.02)
        )

    def build(self, input_shape):
        rows = self.num_classes + (self.null_class == "learned")
        self.embeddings = self.add_weight(
            shape=(rows, self.output_dim), initializer=self.embeddings_initializer, name="embeddings"
        )

    def call(self, inputs):
        labels = ops.cast(inputs, "int32")
        if self.null_class != "zero":
            return ops.cast(ops.take(self.embeddings, labels, axis=0), self.compute_dtype)
        known = labels < self.num_classes  # the null class looks up row 0, then counts zero
        embedded = ops.cast(ops.take(self.embeddings, ops.where(known, labels, 0), axis=0), self.compute_dtype)
        return embedded * ops.cast(ops.expand_dims(known, -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "output_dim": self.output_dim,
                "null_class": self.null_class,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            }
        )
        return config


def check_class_arguments(num_classes, label_dropout, network):
    """A denoiser's `(num_classes, label_dropout)`, checked, as int and float.

    The network contract of keras-lct (`docs/dit.md`, "Class labels"):
    `num_classes=0` is unconditional; label `num_classes` is the null class,
    which a network has when `label_dropout > 0`.

    Raises:
        ValueError: `num_classes` not an integer >= 0; `label_dropout` not in
            [0, 1); `label_dropout > 0` on an unconditional network.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
        raise ValueError(
            f"{network}: `num_classes` must be an integer >= 0 (0: unconditional); received {num_classes!r}."
        )
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)) or not 0 <= label_dropout < 1:
        raise ValueError(f"{network}: `label_dropout` must be a number in [0, 1); received {label_dropout!r}.")
    if label_dropout and not num_classes:
        raise ValueError(
            f"{network}: `label_dropout={label_dropout}` drops class labels, but the network is unconditional "
            "(num_classes=0). Set `num_classes` to the number of classes, or leave `label_dropout` at 0."
        )
    return int(num_classes), float(label_dropout)


def _input_names(num_classes, interval_embedding):
    """A denoiser's inputs by name, in order: x, noise_labels, then intervals and class_labels when it takes them."""
    return ["x", "noise_labels"] + ["intervals"] * bool(interval_embedding) + ["class_labels"] * bool(num_classes)


def _input_list(names):
    return f"[{', '.join(names)}]"


def check_conditional_inputs(inputs, num_classes, label_dropout, network, interval_embedding=False):
    """Raises a ValueError unless a denoiser with these classes takes `inputs` (tensors, or their shapes in `build`).

    An unconditional network (`num_classes=0`) takes `[x, noise_labels]`; a
    class-conditional one `[x, noise_labels, class_labels]`, or
    `[x, noise_labels]` for the null class `num_classes` when it has one
    (`label_dropout > 0`). A network built with `interval_embedding=True`
    takes the intervals h = t - r of MeanFlow's average velocity after the
    noise labels: `[x, noise_labels, intervals]`, or
    `[x, noise_labels, intervals, class_labels]`. The message names the
    call to make.
    """
    names = _input_names(num_classes, interval_embedding)
    expected = _input_list(names)
    required = len(_input_names(0, interval_embedding))
    if not isinstance(inputs, (list, tuple)) or len(inputs) not in (required, required + 1):
        count = len(inputs) if isinstance(inputs, (list, tuple)) else "1 (not a list)"
        if num_classes and label_dropout:
            expected += f" or {_input_list(names[:-1])} (the null class)"
        if interval_embedding and count == required - 1:
            advice = (
                "It was built with `interval_embedding=True`: pass the intervals h = t - r, shape (batch,), "
                "after the noise labels, or build it with `interval_embedding=False`."
            )
        elif not interval_embedding and count == required + 2:
            advice = "Only a network built with `interval_embedding=True` takes intervals."
        else:
            advice = "Call it on a list of these tensors."
        raise ValueError(f"{network} takes the inputs {expected}; received {count} inputs. {advice}")
    if len(inputs) == required + 1 and not num_classes:
        also = "" if interval_embedding else ", or with `interval_embedding=True` to take intervals"
        raise ValueError(
            f"{network} is unconditional (num_classes=0) but received class labels: call it on "
            f"{_input_list(names)}, or build it with `num_classes=K` to condition on labels{also}."
        )
    if len(inputs) == required and num_classes and not label_dropout:
        raise ValueError(
            f"{network} is class-conditional ({num_classes} classes) and has no null class (label_dropout=0): "
            f"call it on {expected}, or build it with `label_dropout > 0` to give it a null class."
        )


def split_conditional_inputs(inputs, num_classes, label_dropout, network, interval_embedding=False):
    """`(x, noise_labels, intervals, class_labels)` of a denoiser's inputs, checked by `check_conditional_inputs`.

    `intervals` are the intervals given, None for a network built without
    `interval_embedding`. `class_labels` are the labels given, the null
    class `num_classes` for every sample when a conditional network got
    none, and None for an unconditional network.
    """
    check_conditional_inputs(inputs, num_classes, label_dropout, network, interval_embedding)
    given = dict(zip(_input_names(num_classes, interval_embedding), inputs))  # no class_labels: the null class
    x, class_labels = given["x"], given.get("class_labels")
    if class_labels is None and num_classes:
        class_labels = ops.full((ops.shape(x)[0],), num_classes, dtype="int32")
    return x, given["noise_labels"], given.get("intervals"), class_labels


def sincos_position_embedding_2d(output_dim, grid_height, grid_width):
    """The fixed 2-D sine-cosine embedding of a grid of patches, `(grid_height * grid_width, output_dim)` float32.

    Patches in row-major order (token `i * grid_width + j` is row i, column
    j). The first half of each vector encodes the column j, the second half
    the row i, each as `[sin(p w_0), ..., sin(p w_{n-1}), cos(p w_0), ...]`
    with n = output_dim / 4 and w_k = 10000^(-k / n); computed in float64,
    then rounded (MAE's `get_2d_sincos_pos_embed`, which DiT uses).

    Example:
    >>> sincos_position_embedding_2d(64, 4, 4).shape
    (16, 64)

    Reference: `docs/reference.md` "DiT" (position embedding).
    """
    if output_dim % 4:
        raise ValueError(f"A 2-D sine-cosine embedding needs a width divisible by 4; received {output_dim}.")
    frequencies = 1.0 / 10000 ** (np.arange(output_dim // 4, dtype=np.float64) / (output_dim // 4))
    rows, columns = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")

    def encode(positions):
        angles = np.outer(positions.reshape(-1).astype(np.float64), frequencies)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(columns), encode(rows)], axis=1).astype(np.float32)
