"""Data: images in, latent caches, normalization, and the batches `fit` consumes.

- `keras_lct.data.images`: image sources (`ImageFolder`, `TFDSImages`), with
  center crop / resize / RGB conversion, a report of skipped files and, on
  request, class labels;
- `keras_lct.data.latents`: encoding to a memory-mapped latent cache with its
  statistics (`build_latent_cache`, `LatentCache`; `encode_latents` in memory) and the normalization
  `x = (z / s - mean) / std * 0.5` (`LatentNormalization`);
- `keras_lct.data.paired`: `NoisePairedDataset`, (x0, OT-paired noise) batches,
  or (x0, noise, labels) with the noise paired within each class;
- `keras_lct.data.checks`: the checks of what `fit` receives (`check_samples`,
  `checked_batches`).

Reference: paper sections 4.4 and 5.1; `docs/reference.md` "Latents".
"""

from keras_lct.data.images import IMAGE_EXTENSIONS
from keras_lct.data.images import ImageFolder
from keras_lct.data.images import ImageReport
from keras_lct.data.images import ImageSource
from keras_lct.data.images import SourceImage
from keras_lct.data.images import TFDSImages
from keras_lct.data.images import images_to_uint8
from keras_lct.data.images import images_to_unit_range
from keras_lct.data.images import prepare_image
from keras_lct.data.latents import LatentCache
from keras_lct.data.latents import LatentDecoder
from keras_lct.data.latents import LatentNormalization
from keras_lct.data.latents import NormalizedLatents
from keras_lct.data.latents import build_latent_cache
from keras_lct.data.latents import denormalize_latents
from keras_lct.data.latents import encode_latents
from keras_lct.data.latents import normalize_latents
from keras_lct.data.checks import check_samples
from keras_lct.data.checks import checked_batches
from keras_lct.data.paired import NoisePairedDataset
