"""The two feature networks of the paper's evaluation, run by PyTorch from local weight files.

- `InceptionFeatures`: the pytorch-fid Inception (pool3, 2048-d) for FID,
  through torch-fidelity's `FeatureExtractorInceptionV3` (TF1-style bilinear
  resize to 299, the TF graph's normalization), bit-compatible with pytorch-fid.
- `VGG16Features`: NVIDIA's VGG16 of the StyleGAN2-ADA metrics (TorchScript,
  4096-d) for precision and recall. torch-fidelity's own `prc` metric uses
  torchvision's VGG16 instead, a different feature space, so its recall does
  not compare with the paper's.

Both take NumPy images (uint8 NHWC, or floats in [-1, 1]) and return NumPy
features, on CUDA when available, whatever the Keras backend: torch is only
the runtime of these networks. Nothing is downloaded; a missing file says
where to get it.

Reference: `docs/reference.md` "Evaluation"; pytorch-fid
(github.com/mseitzer/pytorch-fid); stylegan2-ada-pytorch `metrics/`.
"""

import importlib
import importlib.util
import os
import sys
import warnings

import numpy as np

from keras_lct._validation import check_int
from keras_lct.data.images import images_to_uint8

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
VGG16_WEIGHTS_FILE = "vgg16.pt"
VGG16_WEIGHTS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"

INCEPTION_HELP = (
    "FID uses the pytorch-fid Inception network (pool3 features, 2048-d), whose weights are the PyTorch "
    f"state dict {INCEPTION_WEIGHTS_FILE}. Nothing is downloaded at run time: download it from "
    f"{INCEPTION_WEIGHTS_URL} and pass its path."
)
VGG16_HELP = (
    "Precision and recall use NVIDIA's VGG16 feature network of the StyleGAN2-ADA metrics, the TorchScript "
    f"file {VGG16_WEIGHTS_FILE}. Nothing is downloaded at run time: download it from {VGG16_WEIGHTS_URL} and "
    "pass its path."
)


class _TorchFeatureNetwork:
    """Batching, image conversion and device placement shared by the two networks."""

    _help = ""  # where to get the right file, for error messages

    def __init__(self, device):
        self._torch = _import_torch()
        if device is None:
            device = "cuda" if self._torch.cuda.is_available() else "cpu"
        self.device = self._torch.device(device)

    def __call__(self, images, batch_size=64):
        images = _as_uint8_rgb(images)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        features = []
        with self._torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = self._torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
                batch = batch.to(self.device).permute(0, 3, 1, 2)
                output = self._features(batch)
                if output.ndim != 2 or output.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"{type(self).__name__}'s network returned an output of shape {tuple(output.shape)} for "
                        f"{batch.shape[0]} images; expected (images, features). {self._help}"
                    )
                features.append(output.to(self._torch.float32).cpu().numpy())
        return np.concatenate(features)

    def _features(self, batch):
        raise NotImplementedError


class InceptionFeatures(_TorchFeatureNetwork):
    """The pytorch-fid Inception network's pool3 features (2048-d): FID's feature space.

    torch-fidelity's `FeatureExtractorInceptionV3` ("inception-v3-compat")
    loaded from the local `pt_inception-2015-12-05-6726825d.pth`: images are
    resized to 299x299 with TF1's bilinear resize and normalized as in the TF
    graph, so the features (and FIDs) equal pytorch-fid's and the TF
    reference's. Keras' `InceptionV3` is a different network and gives FIDs
    that do not compare.

    torch-fidelity is needed (`pip install torch-fidelity`, or the `fid`
    extra). Its package imports torchvision for other networks; where
    torchvision is missing or does not fit the installed torch, the Inception
    module, which needs only torch, is loaded on its own.

    Args:
        weights_path: the local `pt_inception-2015-12-05-6726825d.pth`
            (from https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth).
        device: a torch device; default CUDA if available, else the CPU.

    Call arguments:
        images: NumPy array `(n, height, width, channels)`, uint8 in
            [0, 255] or floats in [-1, 1] (rounded to uint8 first); 1 or 3
            channels; any size (resized to 299).
        batch_size: images per network call.
        Returns float32 features `(n, 2048)`.

    Raises:
        FileNotFoundError: no file at `weights_path` (the message says where
            to download it).
        ValueError: a file that is not these weights.
        ImportError: torch or torch-fidelity is not installed.

    Example:
    ```python
    inception = InceptionFeatures("weights/pt_inception-2015-12-05-6726825d.pth")
    mu, sigma = feature_statistics(inception(images_uint8, batch_size=100))
    ```

    Reference: `docs/reference.md` "Evaluation"; Heusel et al. 2017.
    """

    _help = INCEPTION_HELP

    def __init__(self, weights_path, device=None):
        self.weights_path = _check_file(weights_path, "Inception weights file", INCEPTION_HELP)
        super().__init__(device)
        inception_module = _import_torch_fidelity_inception()
        try:
            network = inception_module.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=self.weights_path
            )
        except Exception as error:  # torch.load and load_state_dict raise many types for a wrong file.
            raise ValueError(
                f"{self.weights_path!r} does not hold the pytorch-fid Inception weights "
                f"({type(error).__name__}: {_first_lines(error)}). {INCEPTION_HELP}"
            ) from error
        self.network = network.to(self.device).eval()

    def _features(self, batch):
        return self.network(batch)[0]


class VGG16Features(_TorchFeatureNetwork):
    """NVIDIA's VGG16 features (4096-d, StyleGAN2-ADA metrics): the space of the paper's recall.

    `vgg16.pt` is a TorchScript module that resizes and normalizes uint8
    images itself; it is called as stylegan2-ada-pytorch's metrics call it,
    `network(images_uint8_nchw, return_features=True)`, with grayscale images
    repeated to 3 channels. torch-fidelity's `prc` metric uses torchvision's
    VGG16 instead: another feature space, whose recall does not compare with
    the paper's (`docs/reference.md` "Evaluation"). Needs only torch.

    Args:
        weights_path: the local `vgg16.pt` (from
            https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt).
        device: a torch device; default CUDA if available, else the CPU.

    Call arguments:
        images: NumPy array `(n, height, width, channels)`, uint8 in
            [0, 255] or floats in [-1, 1]; 1 or 3 channels.
        batch_size: images per network call.
        Returns float32 features `(n, 4096)` for NVIDIA's file.

    Raises:
        FileNotFoundError: no file at `weights_path` (the message says where
            to download it).
        ValueError: a file that is not a TorchScript module.
        ImportError: torch is not installed.

    Example:
    ```python
    vgg = VGG16Features("weights/vgg16.pt")
    scores = precision_recall(vgg(real_images), vgg(generated_images), k=3)
    ```

    Reference: Kynkäänniemi et al. 2019; `docs/reference.md` "Evaluation".
    """

    _help = VGG16_HELP

    def __init__(self, weights_path, device=None):
        self.weights_path = _check_file(weights_path, "VGG16 file", VGG16_HELP)
        super().__init__(device)
        try:
            with warnings.catch_warnings():
                # NVIDIA's file exists only as TorchScript, which torch deprecates in favour of torch.export.
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                network = self._torch.jit.load(self.weights_path, map_location=self.device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{self.weights_path!r} is not a TorchScript module ({_first_lines(error)}). {VGG16_HELP}"
            ) from error
        self.network = network.eval()

    def _features(self, batch):
        return self.network(batch, return_features=True)


def _check_file(path, what, help_text):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {what} at {path!r}. {help_text}")
    return path


def _first_lines(error, count=3):
    return " ".join(str(error).strip().splitlines()[:count])


def _as_uint8_rgb(images):
    """NHWC uint8 with 3 channels, from uint8 or [-1, 1] float images with 1 or 3 channels."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            "Images must be a non-empty NumPy array (n, height, width, channels) with 1 or 3 channels last; "
            f"received shape {images.shape}."
        )
    if np.issubdtype(images.dtype, np.floating):
        images = images_to_uint8(images)
    elif images.dtype != np.uint8:
        raise ValueError(f"Images must be uint8 in [0, 255] or floats in [-1, 1]; received dtype {images.dtype}.")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "The feature networks of FID and recall run on PyTorch (whatever the Keras backend): pip install torch."
        ) from error
    return torch


def _import_torch_fidelity_inception():
    """torch-fidelity's `feature_extractor_inceptionv3` module, with or without a working torchvision."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ImportError(
            "FID's Inception network comes from torch-fidelity: pip install torch-fidelity "
            "(or pip install 'keras-lct[fid]'; with --no-deps where torchvision cannot be installed)."
        )
    name = "torch_fidelity.feature_extractor_inceptionv3"
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError):
        # torch_fidelity/__init__.py imports torchvision for its other networks; a missing torchvision, or one
        # built for another torch ("operator torchvision::nms does not exist"), fails there. The Inception module
        # needs only torch: import it under an empty stand-in of the package (its __init__ not run), then take
        # the stand-in away so a later `import torch_fidelity` behaves as before.
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(importlib.util.find_spec("torch_fidelity"))
        try:
            return importlib.import_module(name)
        finally:
            del sys.modules["torch_fidelity"]
