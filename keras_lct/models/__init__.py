"""Models: the ADM UNet denoiser and the ConsistencyModel that trains it."""

from keras_lct.models.consistency import ConsistencyModel
from keras_lct.models.mlp import MLPDenoiser
from keras_lct.models.unet import UNET_PRESETS
from keras_lct.models.unet import UNet
