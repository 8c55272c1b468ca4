"""AutoencoderTrainer: the loss against NumPy, and that fit trains the autoencoder."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct.vae import AutoencoderKL
from keras_lct.vae import AutoencoderTrainer


def small_autoencoder():
    return AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=2
    )


def test_loss_is_reconstruction_plus_weighted_kl():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    decoded = rng.uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    mean = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    logvar = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    trainer = AutoencoderTrainer(small_autoencoder(), kl_weight=0.01)
    loss = trainer.compute_loss(x=images, y_pred=(ops.convert_to_tensor(decoded), ops.convert_to_tensor(mean), ops.convert_to_tensor(logvar)))
    # KL(N(m, e^v) || N(0, 1)) per element = (m^2 + e^v - 1 - v) / 2, summed per sample.
    kl = np.mean([np.sum(0.5 * (m**2 + np.exp(v) - 1 - v)) for m, v in zip(mean.astype("float64"), logvar.astype("float64"))])
    expected = np.mean((decoded.astype("float64") - images) ** 2) + 0.01 * kl
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(trainer.kl_tracker.result()) == pytest.approx(kl, rel=1e-5)


@pytest.mark.compiled_step
def test_fit_lowers_the_reconstruction_error_of_the_wrapped_autoencoder():
    keras.utils.set_random_seed(0)
    grid = np.linspace(-1, 1, 8, dtype="float32")
    images = np.stack([np.sin(3 * phase + grid[:, None] * grid[None, :] * 3) for phase in np.linspace(0, 3, 32)])[..., None]
    autoencoder = small_autoencoder()

    def reconstruction_error():
        return float(np.mean((ops.convert_to_numpy(autoencoder(images)) - images) ** 2))

    before = reconstruction_error()
    trainer = AutoencoderTrainer(autoencoder, kl_weight=1e-6)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = trainer.fit(images, batch_size=16, epochs=25, verbose=0)
    assert set(history.history) >= {"loss", "reconstruction_loss", "kl"}
    assert reconstruction_error() < 0.5 * before


def test_config_round_trip_and_bad_arguments():
    trainer = AutoencoderTrainer(small_autoencoder(), kl_weight=0.5, seed=3)
    restored = AutoencoderTrainer.from_config(trainer.get_config())
    assert (restored.kl_weight, restored.seed) == (0.5, 3)
    assert restored.autoencoder.block_out_channels == (8, 16)
    with pytest.raises(ValueError, match="AutoencoderKL"):
        AutoencoderTrainer(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderTrainer(small_autoencoder(), kl_weight=-1.0)
