"""Models: the denoisers (the ADM UNet, the DiT) and the ConsistencyModel that trains them."""

from keras_lct.models.consistency import ConsistencyModel
from keras_lct.models.dit import DIT_PRESETS
from keras_lct.models.dit import DiT
from keras_lct.models.mlp import MLPDenoiser
from keras_lct.models.presets import NETWORK_PRESETS
from keras_lct.models.presets import network_from_preset
from keras_lct.models.unet import UNET_PRESETS
from keras_lct.models.unet import UNet
