"""RAdam, the optimizer of the authors' runs (Keras 3 ships none)."""

import math

import keras
from keras import ops

from keras_lct.backend import fast_paths


@keras.saving.register_keras_serializable(package="keras_lct")
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam (Liu et al., 2020) with PyTorch's semantics.

    Adam whose adaptive step is switched on only once the variance of the
    adaptive learning rate is tractable (rho_t > 5) and then rectified by
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t));
    before that it takes bias-corrected momentum steps. `weight_decay` is
    coupled (added to the gradient, like `torch.optim.RAdam`'s default) unless
    `decoupled_weight_decay=True` (AdamW-style, applied by Keras).

    Args:
        learning_rate: step size (1e-4 in the paper's runs).
        beta_1, beta_2: moment decays (0.9, 0.999).
        epsilon: added to the root of the second moment (1e-8).
        weight_decay: L2 factor (1e-4 in the paper's runs; 0 for none).
        decoupled_weight_decay: decay the weights directly instead.
        **kwargs: passed to `keras.optimizers.Optimizer` (e.g. `use_ema`,
            `clipnorm`, `gradient_accumulation_steps`).

    Example:
    ```python
    model.compile(optimizer=RAdam(1e-4, weight_decay=1e-4))
    ```

    Reference: `docs/reference.md` "Training setup" (RAdam, lr 1e-4, weight decay
    1e-4 coupled, betas (0.9, 0.999)).
    """

    def __init__(
        self,
        learning_rate=1e-4,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
        decoupled_weight_decay=False,
        name="radam",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay if decoupled_weight_decay and weight_decay else None,
            name=name,
            **kwargs,
        )
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.coupled_weight_decay = 0.0 if decoupled_weight_decay else float(weight_decay or 0.0)
        self.decoupled_weight_decay = decoupled_weight_decay
        self._step_factors_of_this_update = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(variables, ["momentum", "velocity"])
        fast_paths.share_memory_layout(self._momentums + self._velocities, list(variables) * 2)

    def _step_factors(self, learning_rate):
        """Scalars of step t = iterations + 1: `(lr / (1 - beta_1^t),
        sqrt(1 - beta_2^t) r_t, rho_t > 5)`, the momentum step size, the
        adaptive step's extra factor, and which branch RAdam takes."""
        step = ops.cast(self.iterations + 1, "float32")
        # 1 - beta^t through expm1: rho_t below cancels ~3 digits in float32.
        one_minus_beta_1_power = -ops.expm1(step * math.log(self.beta_1))
        one_minus_beta_2_power = -ops.expm1(step * math.log(self.beta_2))
        rho_infinity = 2.0 / (1.0 - self.beta_2) - 1.0
        rho = rho_infinity - 2.0 * step * (1.0 - one_minus_beta_2_power) / one_minus_beta_2_power
        safe_rho = ops.maximum(rho, 5.0 + 1e-3)
        rectification = ops.sqrt(
            (safe_rho - 4.0) * (safe_rho - 2.0) * rho_infinity / ((rho_infinity - 4.0) * (rho_infinity - 2.0) * safe_rho)
        )
        momentum_step = ops.cast(learning_rate, "float32") / one_minus_beta_1_power
        return momentum_step, ops.sqrt(one_minus_beta_2_power) * rectification, rho > 5.0

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # torch: all variables in a few multi-tensor kernels (keras_lct.backend.fast_paths).
        if fast_paths.fast_paths_enabled():
            indices = [self._get_variable_index(variable) for variable in trainable_variables]
            fast_paths.radam_update(
                trainable_variables,
                [self._momentums[index] for index in indices],
                [self._velocities[index] for index in indices],
                grads,
                self._step_factors(learning_rate),
                self.beta_1,
                self.beta_2,
                self.epsilon,
                self.coupled_weight_decay,
            )
            return
        # Keras calls update_step once per variable: the step's scalars are computed once for all of them.
        self._step_factors_of_this_update = {}
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_factors_of_this_update = None

    def _shared_step_factors(self, learning_rate):
        """`_step_factors`, once per learning-rate value of the update under way."""
        shared = self._step_factors_of_this_update
        if shared is None:
            return self._step_factors(learning_rate)
        if id(learning_rate) not in shared:  # one per device under a distribution strategy
            shared[id(learning_rate)] = (learning_rate, self._step_factors(learning_rate))
        return shared[id(learning_rate)][1]

    def update_step(self, gradient, variable, learning_rate):
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = gradient + self.coupled_weight_decay * variable
        momentum_step, adaptive_factor, adaptive = self._shared_step_factors(learning_rate)
        momentum = self._momentums[self._get_variable_index(variable)]
        velocity = self._velocities[self._get_variable_index(variable)]
        self.assign_add(momentum, ops.multiply(ops.subtract(gradient, momentum), 1 - self.beta_1))
        self.assign_add(velocity, ops.multiply(ops.subtract(ops.square(gradient), velocity), 1 - self.beta_2))

        momentum = ops.convert_to_tensor(momentum)
        adaptive_update = momentum * ops.cast(adaptive_factor, variable.dtype) / (ops.sqrt(velocity) + self.epsilon)
        self.assign_sub(variable, ops.cast(momentum_step, variable.dtype) * ops.where(adaptive, adaptive_update, momentum))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "weight_decay": self.coupled_weight_decay or config.get("weight_decay") or 0.0,
                "decoupled_weight_decay": self.decoupled_weight_decay,
            }
        )
        return config
