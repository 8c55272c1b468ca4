"""Training a (small) AutoencoderKL on the user's own images."""

import keras
from keras import ops

from keras_lct._validation import check_positive
from keras_lct._validation import MAX_SEED
from keras_lct._validation import check_seed
from keras_lct.vae.autoencoder import AutoencoderKL


@keras.saving.register_keras_serializable(package="keras_lct")
class AutoencoderTrainer(keras.Model):
    """Trains an `AutoencoderKL` with a reconstruction loss and a KL penalty.

    The step encodes a batch, draws one posterior sample
    `mean + exp(logvar / 2) * noise`, decodes it, and minimizes
    `mean |decoded - images|^2 + kl_weight * KL(posterior || N(0, I))`, the
    KL summed over latent elements and averaged over the batch. Stable
    Diffusion's VAE was trained with a perceptual and an adversarial term
    besides; this plain objective is for small data sets (the quickstart's
    digits), where the reconstructions it gives are already sharp. A small
    `kl_weight` keeps the latents informative and, as Stable Diffusion's,
    unbounded: normalize them before consistency training
    (`keras_lct.data.normalize_latents`).

    Args:
        autoencoder: the `keras_lct.vae.AutoencoderKL` to train (its weights
            are updated in place).
        kl_weight: weight of the KL term (1e-6 as LDM's KL-f8 models).
        seed: seed of the posterior noise (an int).
        **kwargs: passed to `keras.Model`.

    Call arguments:
        images: `(batch, H, W, in_channels)` in [-1, 1].
        training: unused; the posterior is always sampled.

    Example:
    ```python
    vae = keras_lct.vae.AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(32, 64),
                                      layers_per_block=1, norm_num_groups=8)
    trainer = keras_lct.vae.AutoencoderTrainer(vae)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(images, batch_size=64, epochs=20)
    latents = vae.scaling_factor * vae.encode(images)[0]
    ```

    Reference: Rombach et al. 2022 (LDM), appendix G (KL-regularized
    autoencoder); paper section 5.1 trains in such a latent space.
    """

    def __init__(self, autoencoder, kl_weight=1e-6, seed=0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(autoencoder, AutoencoderKL):
            raise ValueError(f"`autoencoder` must be a keras_lct.vae.AutoencoderKL; received {autoencoder!r}.")
        self.autoencoder = autoencoder
        self.kl_weight = check_positive("kl_weight", kl_weight, allow_zero=True)
        self.seed = check_seed("seed", seed, maximum=MAX_SEED)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl")

    def build(self, input_shape):
        if not self.autoencoder.built:
            self.autoencoder.build(input_shape)

    def call(self, images, training=False):
        mean, logvar = self.autoencoder.encode(images)
        noise = keras.random.normal(ops.shape(mean), seed=self.seed_generator, dtype=mean.dtype)
        decoded = self.autoencoder.decode(self.autoencoder.sample_posterior(mean, logvar, noise))
        return decoded, mean, logvar

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        decoded, mean, logvar = y_pred
        images = ops.cast(x, decoded.dtype)
        reconstruction = ops.mean(ops.square(decoded - images))
        kl_per_element = 0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar)
        kl = ops.mean(ops.sum(ops.reshape(kl_per_element, (ops.shape(mean)[0], -1)), axis=-1))
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        return reconstruction + self.kl_weight * kl

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "autoencoder": keras.saving.serialize_keras_object(self.autoencoder),
                "kl_weight": self.kl_weight,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["autoencoder"] = keras.saving.deserialize_keras_object(config["autoencoder"])
        return cls(**config)
