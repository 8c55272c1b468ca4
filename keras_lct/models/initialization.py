"""Starting a consistency model from a trained diffusion model (ECT's initialization).

`ConsistencyModel.initialize_from(diffusion)` and `ConsistencyModel.from_diffusion(diffusion)`
copy the weights of a model trained with `objective="edm"` into a consistency model's network
of the same architecture: its EMA weights by default, into both the online weights and every
EMA, as ECT's training loop does. What does not fit is refused before anything changes: the
data shape, the network's class and settings, the class labels, or a variable's shape.

Reference: Geng et al. 2025, "Consistency Models Made Easy", section 4; `docs/objectives.md`
"From a diffusion model: ECT".
"""

import os

from keras import ops

from keras_lct import saving
from keras_lct.objectives import EDMDiffusion

# Network settings a consistency model may set apart from its diffusion model's: they do not
# change the weights (ECT tunes with more dropout than EDM trains with); `from_diffusion`'s
# `network_settings` takes the trained ones.
TRAINING_SETTINGS = ("dropout", "label_dropout")
FREE_NETWORK_SETTINGS = ("name", "trainable", "dtype") + TRAINING_SETTINGS


def load_diffusion(diffusion):
    """`diffusion` itself, or the model saved at that path; an error unless it is a trained EDM diffusion model."""
    if isinstance(diffusion, (str, os.PathLike)):
        path = os.fspath(diffusion)
        if not os.path.isfile(path):
            raise ValueError(f"No diffusion model at {path!r}: pass the `.keras` file of a model trained with objective='edm'.")
        diffusion = saving.load_model(path, compile=False)
    objective = getattr(diffusion, "objective", None)  # a ConsistencyModel's
    if not isinstance(objective, EDMDiffusion):
        objective = getattr(objective, "name", None)
        raise ValueError(
            "Initialize from a diffusion model: a ConsistencyModel trained with objective='edm'; received "
            + (f"a model with the {objective!r} objective." if objective else f"{type(diffusion).__name__}.")
            + " To go on training a consistency model, load it and call `fit` again."
        )
    if not diffusion.built:
        raise ValueError("The diffusion model is not built: train it (or build it for its data) before starting from it.")
    return diffusion


def differences(diffusion, model):
    """What keeps `model` from taking `diffusion`'s weights: a list of sentences, empty if nothing."""
    found = []
    if tuple(model.data_shape) != tuple(diffusion.data_shape):
        found.append(f"data of shape {tuple(model.data_shape)}, the diffusion model's {tuple(diffusion.data_shape)}")
    if model.sigma_data != diffusion.sigma_data:
        found.append(f"sigma_data {model.sigma_data}, the diffusion model's {diffusion.sigma_data} (its preconditioning)")
    source, target = diffusion.network, model.network
    if type(source) is not type(target):
        found.append(f"a {type(target).__name__} network, the diffusion model's a {type(source).__name__}")
        return found
    if model.num_classes != diffusion.num_classes:
        found.append(f"{model.num_classes} classes, the diffusion model's {diffusion.num_classes}")
    source_config, target_config = source.get_config(), target.get_config()
    for key in sorted(set(source_config) | set(target_config)):
        if key in FREE_NETWORK_SETTINGS or key == "num_classes":
            continue
        if source_config.get(key) != target_config.get(key):
            found.append(f"network setting {key}={target_config.get(key)!r}, the diffusion model's {source_config.get(key)!r}")
    if not found:
        source_shapes = [tuple(variable.shape) for variable in source.weights]
        target_shapes = [tuple(variable.shape) for variable in target.weights]
        if source_shapes != target_shapes:
            found.append(f"{len(target_shapes)} network variables, the diffusion model's {len(source_shapes)}, or shapes that differ")
    return found


def initialize_from(model, diffusion, ema=True):
    """Copies `diffusion`'s network weights into `model`.

    `ema`: True takes the diffusion model's first EMA (its online weights if
    it keeps none), a decay that EMA, False its online weights.

    `model` is built for the diffusion model's data if it is not built yet.
    The weights go into the network and into every EMA of `model`; its step
    counter and schedules start at 0.
    """
    diffusion = load_diffusion(diffusion)
    if not model.built:
        model.build((None,) + tuple(diffusion.data_shape))
    found = differences(diffusion, model)
    if found:
        raise ValueError(
            "This consistency model cannot start from the diffusion model: it has "
            + "; ".join(found)
            + ". Build its network with the diffusion model's architecture and data (or use "
            "`ConsistencyModel.from_diffusion(diffusion)`, which copies it)."
        )
    if ema is False or (ema is True and not diffusion.ema.decays):
        sources = diffusion.network.trainable_variables
    else:
        sources = diffusion.ema.averages[diffusion.ema.index(None if ema is True else ema)]
    trainable = dict(zip(map(id, diffusion.network.trainable_variables), sources))
    for target, source in zip(model.network.weights, diffusion.network.weights):
        target.assign(ops.copy(trainable.get(id(source), source).value))
    for averages in model.ema.averages:
        for average, variable in zip(averages, model.ema.variables):
            average.assign(ops.copy(variable.value))
    return model
