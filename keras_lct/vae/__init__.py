"""The Stable Diffusion KL-f8 VAE (diffusers' `AutoencoderKL`) in Keras, and its weight loading.

Reference: paper section 5.1 (latent space of Stable Diffusion's VAE,
stabilityai/sd-vae-ft-ema); Rombach et al. 2022 (LDM).
"""

from keras_lct.vae.autoencoder import VAE_PRESETS
from keras_lct.vae.autoencoder import AutoencoderKL
from keras_lct.vae.autoencoder import VAEAttention
from keras_lct.vae.autoencoder import VAEDecoder
from keras_lct.vae.autoencoder import VAEEncoder
from keras_lct.vae.autoencoder import VAEGroupNorm
from keras_lct.vae.autoencoder import VAELevel
from keras_lct.vae.autoencoder import VAEMidBlock
from keras_lct.vae.autoencoder import VAEResample
from keras_lct.vae.autoencoder import VAEResnetBlock
from keras_lct.vae.training import AutoencoderTrainer
from keras_lct.vae.weights import config_from_diffusers
from keras_lct.vae.weights import load_autoencoder
from keras_lct.vae.weights import read_state_dict
from keras_lct.vae.weights import set_diffusers_weights
