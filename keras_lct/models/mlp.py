"""A small MLP denoiser for vector data (toy distributions, tests, demos)."""

import keras
from keras import ops

from keras_lct.layers.embedding import ClassEmbedding
from keras_lct.layers.embedding import check_class_arguments
from keras_lct.layers.embedding import split_conditional_inputs


@keras.saving.register_keras_serializable(package="keras_lct")
class MLPDenoiser(keras.Model):
    """A residual MLP F(x, c_noise) for data shaped (batch, dim).

    The noise label c_noise = 250 ln(sigma) is scaled to ln(sigma), mapped by
    a SiLU MLP to an embedding and added to every hidden layer; with
    `num_classes`, a learned embedding of the class label (initialized
    N(0, 1), as large as the noise embedding, so that a short run learns
    the classes apart) is added to it. With `interval_embedding=True` a second
    time input, the interval h = t - r of MeanFlow's average velocity
    u(z, t, r), goes unscaled through an MLP of its own, added too.

    Args:
        data_dim: the number of features of one sample.
        width: hidden width.
        depth: number of hidden residual layers.
        num_classes: classes of the labels (0: unconditional).
        label_dropout: the share of training labels the ConsistencyModel
            replaces by the null class `num_classes` (> 0 gives the null
            class its own embedding).
        interval_embedding: take the interval h = t - r as a second time
            input (layers `interval_embedding_0`, `interval_embedding_1`,
            shaped as `embedding_0`, `embedding_1`). False: no such layers.
        **kwargs: passed to `keras.Model`.

    Call arguments:
        inputs: `[x, noise_labels]`, x of shape (batch, data_dim) and
            noise_labels of shape (batch,); with `num_classes`,
            `[x, noise_labels, class_labels]` (int, (batch,)). With
            `interval_embedding=True` the intervals, shape (batch,), follow
            the noise labels: `[x, noise_labels, intervals]` or
            `[x, noise_labels, intervals, class_labels]`.
        training: unused; kept for a uniform network signature.

    Example:
    ```python
    model = ConsistencyModel(MLPDenoiser(2))
    ```

    Reference: the denoiser F of paper eq. 2, for vector data; the interval
    input: MeanFlow (Geng et al., 2025), `docs/reference.md` "MeanFlow".
    """

    def __init__(
        self, data_dim, width=128, depth=3, num_classes=0, label_dropout=0.0, interval_embedding=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.data_dim = data_dim
        self.width = width
        self.depth = depth
        self.num_classes, self.label_dropout = check_class_arguments(num_classes, label_dropout, "MLPDenoiser")
        self.interval_embedding = bool(interval_embedding)
        self.class_embedding = (
            ClassEmbedding(
                self.num_classes, width, null_class="learned" if self.label_dropout else None,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0), name="class_embedding",
            )
            if self.num_classes
            else None
        )
        self.input_projection = keras.layers.Dense(width, name="input_projection")
        self.embedding_layers = self._time_embedding_layers("embedding")
        self.interval_layers = self._time_embedding_layers("interval_embedding") if self.interval_embedding else []
        self.hidden_layers = [keras.layers.Dense(width, name=f"hidden_{index}") for index in range(depth)]
        self.output_projection = keras.layers.Dense(data_dim, kernel_initializer="zeros", name="output_projection")

    def build(self, input_shape):
        x_shape = input_shape[0]
        if x_shape[-1] != self.data_dim:
            raise ValueError(f"MLPDenoiser(data_dim={self.data_dim}) received samples of shape {tuple(x_shape[1:])}.")
        self.input_projection.build(x_shape)
        for layers in (self.embedding_layers, self.interval_layers):
            for layer, input_width in zip(layers, (1, self.width)):
                layer.build((None, input_width))
        for layer in self.hidden_layers:
            layer.build((None, self.width))
        self.output_projection.build((None, self.width))
        if self.class_embedding is not None:
            self.class_embedding.build((None,))

    def call(self, inputs, training=None):
        x, noise_labels, intervals, class_labels = split_conditional_inputs(
            inputs, self.num_classes, self.label_dropout, "MLPDenoiser", self.interval_embedding
        )
        embedding = self._embed_time(noise_labels / 250.0, self.embedding_layers)
        if self.interval_embedding:
            embedding = embedding + self._embed_time(intervals, self.interval_layers)
        if self.class_embedding is not None:
            embedding = embedding + self.class_embedding(class_labels)
        hidden = self.input_projection(x)
        for layer in self.hidden_layers:
            hidden = hidden + layer(ops.silu(hidden + embedding))
        return self.output_projection(ops.silu(hidden))

    def _time_embedding_layers(self, prefix):
        return [
            keras.layers.Dense(self.width, activation="silu", name=f"{prefix}_0"),
            keras.layers.Dense(self.width, name=f"{prefix}_1"),
        ]

    @staticmethod
    def _embed_time(values, layers):
        """A `(batch,)` time input through one of the embedding MLPs, `(batch, width)`."""
        embedding = ops.reshape(values, (-1, 1))
        for layer in layers:
            embedding = layer(embedding)
        return embedding

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "data_dim": self.data_dim,
                "width": self.width,
                "depth": self.depth,
                "num_classes": self.num_classes,
                "label_dropout": self.label_dropout,
                "interval_embedding": self.interval_embedding,
            }
        )
        return config
