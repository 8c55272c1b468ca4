"""Evaluation metrics of the paper's table 1: FID and improved precision / recall.

- `keras_lct.metrics.frechet`: `feature_statistics`, `frechet_distance`,
  `frechet_distance_from_statistics` (pytorch-fid's formula) and the `.npz`
  statistics files (`save_statistics`, `load_statistics`);
- `keras_lct.metrics.improved_precision_recall`: `precision_recall`
  (Kynkäänniemi et al. 2019, k = 3), batched for 50k x 50k feature sets;
- `keras_lct.metrics.feature_networks`: the feature networks, from local
  files: `InceptionFeatures` (pytorch-fid Inception, FID) and `VGG16Features`
  (NVIDIA's VGG16, precision / recall).

The math is NumPy / SciPy; the networks run on PyTorch whatever the Keras
backend. `recipes/evaluate.py` runs the whole protocol on a trained model.

Reference: `docs/reference.md` "Evaluation"; docs/metrics.md.
"""

from keras_lct.metrics.feature_networks import INCEPTION_WEIGHTS_FILE
from keras_lct.metrics.feature_networks import INCEPTION_WEIGHTS_URL
from keras_lct.metrics.feature_networks import VGG16_WEIGHTS_FILE
from keras_lct.metrics.feature_networks import VGG16_WEIGHTS_URL
from keras_lct.metrics.feature_networks import InceptionFeatures
from keras_lct.metrics.feature_networks import VGG16Features
from keras_lct.metrics.frechet import feature_statistics
from keras_lct.metrics.frechet import frechet_distance
from keras_lct.metrics.frechet import frechet_distance_from_statistics
from keras_lct.metrics.frechet import load_statistics
from keras_lct.metrics.frechet import save_statistics
from keras_lct.metrics.improved_precision_recall import precision_recall
