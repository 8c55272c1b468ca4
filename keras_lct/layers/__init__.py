"""Layers of the latent consistency UNet, usable in any Keras model.

Reference: paper section 4.6 (NsLN, table 2d) and section 5.1 (the ADM UNet).
"""

from keras_lct.layers.embedding import FourierEmbedding
from keras_lct.layers.embedding import PositionalEmbedding
from keras_lct.layers.normalization import NORMALIZATIONS
from keras_lct.layers.normalization import NonScalingLayerNormalization
from keras_lct.layers.normalization import normalization
from keras_lct.layers.normalization import normalization_name
from keras_lct.layers.unet_blocks import AttentionBlock
from keras_lct.layers.unet_blocks import Conv2D
from keras_lct.layers.unet_blocks import Resample2D
from keras_lct.layers.unet_blocks import UNetBlock
