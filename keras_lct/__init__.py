"""keras-lct: latent consistency training (Dao et al., ICLR 2025) for Keras 3.

Importing the package registers every serializable class, so `.keras` files
saved with keras-lct load with `keras.models.load_model` after `import keras_lct`.
"""

__version__ = "0.1.0"

from keras_lct import analysis
from keras_lct import backend
from keras_lct import callbacks
from keras_lct import coupling
from keras_lct import data
from keras_lct import layers
from keras_lct import losses
from keras_lct import metrics
from keras_lct import models
from keras_lct import objectives
from keras_lct import optimizers
from keras_lct import saving
from keras_lct import schedules
from keras_lct import vae
