"""Layers of the latent consistency denoisers (the UNet and the DiT), usable in any Keras model.

`keras_lct.layers.core` holds what the UNet and the VAE share (the authors'
initialization, `Conv2D`, `Dense`, `Dropout`, `Resample2D` and the one
`dot_product_attention`); `keras_lct.layers.unet_blocks` the UNet's blocks;
`keras_lct.layers.transformer` the DiT's; `keras_lct.layers.embedding` the
embeddings of the noise level, the class label and the patch position.

Reference: paper section 4.6 (NsLN, table 2d) and section 5.1 (the ADM UNet).
"""

from keras_lct.layers.core import Conv2D
from keras_lct.layers.core import Dense
from keras_lct.layers.core import Dropout
from keras_lct.layers.core import Resample2D
from keras_lct.layers.core import conv2d
from keras_lct.layers.core import dense
from keras_lct.layers.core import dot_product_attention
from keras_lct.layers.core import fan_in_initializer
from keras_lct.layers.core import resampled_shape
from keras_lct.layers.embedding import ClassEmbedding
from keras_lct.layers.embedding import FourierEmbedding
from keras_lct.layers.embedding import PositionalEmbedding
from keras_lct.layers.embedding import sincos_position_embedding_2d
from keras_lct.layers.normalization import NORMALIZATIONS
from keras_lct.layers.normalization import NonScalingLayerNormalization
from keras_lct.layers.normalization import normalization
from keras_lct.layers.normalization import normalization_name
from keras_lct.layers.unet_blocks import AttentionBlock
from keras_lct.layers.transformer import DiTBlock
from keras_lct.layers.transformer import DiTFinalLayer
from keras_lct.layers.transformer import PatchEmbedding
from keras_lct.layers.transformer import unpatchify
from keras_lct.layers.unet_blocks import UNetBlock
