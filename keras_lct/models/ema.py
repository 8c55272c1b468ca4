"""Exponential moving averages of a network's weights, the weights a ConsistencyModel samples with.

Reference: docs/reference.md "Training setup" (the EMA decay 0.99993).
"""

import contextlib

from keras import ops

from keras_lct.backend import fast_paths
from keras_lct.models.schedule_state import model_state_variable


class WeightAverages:
    """One average per decay of every trainable variable, kept as variables of their model.

    `average <- decay average + (1 - decay) variable` once per optimizer step,
    folding in the weights after the optimizer's update (`ConsistencyModel.train_step`).

    Args:
        model: the model the averages are saved with (`model.add_weight`).
        variables: the variables averaged (the network's trainable variables).
        decays: one decay in [0, 1) per average kept.

    Example:
    ```python
    with model.ema.weights_in_network(0.99993):
        images = model.network([x, c_noise])
    ```
    """

    def __init__(self, model, variables, decays):
        self.variables = list(variables)
        self.decays = tuple(decays)
        self.averages = [
            [
                model_state_variable(
                    model, f"ema_{_decay_label(decay)}_{index}", variable.dtype, _copy_of(variable),
                    shape=variable.shape,
                )
                for index, variable in enumerate(self.variables)
            ]
            for decay in self.decays
        ]
        for averages in self.averages:
            fast_paths.share_memory_layout(averages, self.variables)

    def update(self, update_complete=None):
        """Folds the current weights into every average.

        Under gradient accumulation pass `update_complete` (a boolean
        tensor): the averages then move once the update's last micro-batch
        has been applied (a decay of 1 at the others).
        """
        for decay, averages in zip(self.decays, self.averages):
            if update_complete is not None:
                decay = ops.where(update_complete, decay, 1.0)
            if fast_paths.exponential_moving_average(averages, self.variables, decay):
                continue
            for average, variable in zip(averages, self.variables):
                average.assign(decay * average + (1.0 - decay) * ops.stop_gradient(ops.convert_to_tensor(variable)))

    def index(self, decay=None):
        """The position of `decay` among the decays (None: the first)."""
        if not self.decays:
            raise ValueError("This model keeps no EMA weights (`ema_decays=()`); sample with `ema=False`.")
        if decay is None:
            return 0
        if decay not in self.decays:
            raise ValueError(f"No EMA with decay {decay!r}; the model keeps {list(self.decays)}.")
        return self.decays.index(decay)

    @contextlib.contextmanager
    def weights_in_network(self, decay=None):
        """Context in which the averaged variables hold the average of `decay` (None: the first)."""
        averages = self.averages[self.index(decay)]
        # Copies, not shared buffers: JAX donates every variable to the step.
        online = [ops.copy(variable.value) for variable in self.variables]
        for variable, average in zip(self.variables, averages):
            variable.assign(ops.copy(average.value))
        try:
            yield
        finally:
            for variable, value in zip(self.variables, online):
                variable.assign(value)


def check_decay(decay):
    """`decay` as a float, or an error unless it is a number in [0, 1)."""
    if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"Every EMA decay must be a number in [0, 1); received {decay!r} in `ema_decays`.")
    return float(decay)


def _copy_of(variable):
    """An initializer giving `variable`'s value when it runs.

    Built inside Keras' symbolic build (jax `fit` on an unbuilt model) the
    variables are initialized later, in the order they were made: the network's
    first, so an average still starts from the weights they got.
    """
    return lambda shape, dtype: ops.copy(variable.value)


def _decay_label(decay):
    return f"{decay:.10f}".rstrip("0").replace(".", "p")
