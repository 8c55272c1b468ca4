"""Generated stand-ins of the two evaluation weight files (random weights, same formats), for tests."""

import contextlib

import torch

from keras_lct.metrics.feature_networks import _import_torch_fidelity_inception

# Default initialization shrinks the signal ~6x per conv layer (fan-in 1/3 variance, ReLU);
# this gain keeps the pool3 features of the random network near unit scale instead of ~1e-8.
_CONV_GAIN = 6.0**0.5


def write_random_inception_weights(path, seed=0):
    """Saves the state dict of torch-fidelity's Inception with random weights, like pt_inception-*.pth."""
    inception_module = _import_torch_fidelity_inception()
    network_class = inception_module.FeatureExtractorInceptionV3
    torch.manual_seed(seed)
    with contextlib.ExitStack() as patches:
        # The constructor downloads and loads weights when given no file: build the layers only.
        patches.enter_context(_replaced(inception_module, "load_state_dict_from_url", lambda *args, **kwargs: {}))
        patches.enter_context(_replaced(network_class, "load_state_dict", lambda self, state_dict, *args, **kwargs: None))
        network = network_class("inception-v3-compat", ["2048"])
    state_dict = network.state_dict()
    for name, tensor in state_dict.items():
        if name.endswith("conv.weight"):
            tensor.mul_(_CONV_GAIN)
    torch.save(state_dict, path)
    return path


class TinyVGG16(torch.nn.Module):
    """The call contract of NVIDIA's vgg16.pt: uint8 NCHW RGB in, (n, features) out with return_features."""

    def __init__(self, num_features=16, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.nn.Parameter(torch.randn(3 * 4 * 4, num_features, generator=generator))

    def forward(self, x, return_features: bool = False):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("expected uint8 images (n, 3, height, width)")
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, (4, 4))
        features = pooled.flatten(1) @ self.projection
        if return_features:
            return features
        return features.sum(dim=1, keepdim=True)


def write_tiny_vgg16(path, num_features=16, seed=0):
    """Saves a scripted `TinyVGG16` with torch.jit.save, like vgg16.pt."""
    module = TinyVGG16(num_features, seed).eval()
    torch.jit.save(torch.jit.script(module), path)
    return module


@contextlib.contextmanager
def _replaced(owner, name, value):
    had_own, original = name in vars(owner), vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
