"""Every denoiser preset of keras-lct by one name: the ADM UNets and the DiTs.

`network_from_preset(name, data_shape)` builds either family for data of a given shape, which
is what the recipes' `--network` and `ConsistencyModel(network="<name>")` take.
"""

from keras_lct.models.dit import DIT_PRESETS
from keras_lct.models.dit import DiT
from keras_lct.models.unet import UNET_PRESETS
from keras_lct.models.unet import UNet

NETWORK_PRESETS = {**{name: UNet for name in UNET_PRESETS}, **{name: DiT for name in DIT_PRESETS}}


def network_from_preset(name, data_shape=None, **overrides):
    """The UNet or DiT preset `name`, for samples of `data_shape` `(H, W, C)`, with any argument overridden.

    Args:
        name: a key of `NETWORK_PRESETS` (`UNET_PRESETS` or `DIT_PRESETS`).
        data_shape: the shape of one sample `(height, width, channels)`; the network takes and
            returns it. None keeps the preset's (32x32x4 latents for the paper's and the
            authors' presets).
        **overrides: the family's arguments, e.g. `norm`, `num_classes`, `label_dropout`.

    Returns:
        an unbuilt `UNet` or `DiT`.

    Example:
    >>> dit = network_from_preset("DiT-B/2", (32, 32, 4), num_classes=1000, label_dropout=0.1)
    """
    if name not in NETWORK_PRESETS:
        raise ValueError(f"Unknown network preset {name!r}. Available: {', '.join(NETWORK_PRESETS)}.")
    family = NETWORK_PRESETS[name]
    if data_shape is not None:
        height, width, channels = _image_shape(data_shape, name)
        size = dict(img_resolution=height) if family is UNet else dict(input_size=height)
        overrides = dict(size, in_channels=channels, out_channels=channels, **overrides)
    return family.from_preset(name, **overrides)


def _image_shape(data_shape, name):
    data_shape = tuple(data_shape)
    if len(data_shape) != 3 or data_shape[0] != data_shape[1]:
        raise ValueError(
            f"The network preset {name!r} takes square images or latents (height, width, channels); the data "
            f"has samples of shape {data_shape}."
        )
    return data_shape
