"""The discretization N and robustness scale c of a ConsistencyModel, kept as model state.

N (eq. 10's exponential curriculum) and c (iCT's c0, then eq. 11's adaptive
scale) are computed inside the compiled step from the model's step counter and
the variables here, which the callbacks `keras_lct.callbacks.ExpCurriculum`
and `keras_lct.callbacks.AdaptiveC` set before training. So the schedules need
no retracing, follow the optimizer's steps under gradient accumulation, and
resume with the model.

Reference: paper sections 4.1 (eq. 10) and 4.5 (eq. 11); docs/reference.md "Schedules".
"""

import keras
from keras import ops

from keras_lct import schedules
from keras_lct._validation import check_positive


class ScheduleState:
    """The schedule variables of one model, created on it with `model.add_weight`.

    Args:
        model: the `ConsistencyModel` the variables belong to (saved with it).
        num_scales: N while no curriculum is set.
        c0: c while no adaptive schedule is set, and the adaptive schedule's start.
        max_num_scales: the largest N any curriculum may reach.
        data_dim: the data dimension d (iCT's default c0 is 0.00054 sqrt(d)).

    Example:
    ```python
    model.schedule.set_curriculum(total_steps=10_000)
    model.schedule.set_robustness_schedule(constants="paper")
    num_scales, c = model.schedule.at(model.training_step)
    ```
    """

    def __init__(self, model, num_scales, c0, max_num_scales, data_dim):
        self.max_num_scales = max_num_scales
        self.data_dim = data_dim
        slope, intercept = schedules.ADAPTIVE_C_CONSTANTS["paper"]
        state = {
            "num_scales": ("int32", num_scales),
            "robustness_c": ("float32", c0),
            # Curriculum (eq. 10): stage length K' (0: N fixed) and s0, s1.
            "curriculum_stage_length": ("int32", 0),
            "curriculum_s0": ("int32", schedules.CURRICULUM_S0),
            "curriculum_s1": ("int32", schedules.CURRICULUM_S1),
            # Robustness scale: c0 and eq. 11's constants (adaptive when enabled).
            "c0": ("float32", c0),
            "adaptive_c_enabled": ("int32", 0),
            "adaptive_c_slope": ("float32", slope),
            "adaptive_c_intercept": ("float32", intercept),
        }
        for name, (dtype, value) in state.items():
            setattr(self, name, model_state_variable(model, name, dtype, value))

    def set_curriculum(self, total_steps=None, s0=schedules.CURRICULUM_S0, s1=schedules.CURRICULUM_S1):
        """Sets eq. 10's curriculum for N; `total_steps=None` freezes N.

        Args:
            total_steps: K, the planned number of training steps, or None to
                keep N at its current value.
            s0, s1: the initial and final number of intervals.
        """
        if total_steps is None:
            self.curriculum_stage_length.assign(0)
            return
        stage_length = schedules.curriculum_stage_length(total_steps, s0, s1)
        if s1 + 1 > self.max_num_scales:
            raise ValueError(
                f"`s1` + 1 = {s1 + 1} exceeds the model's `max_num_scales` "
                f"({self.max_num_scales}); build the model with a larger max_num_scales."
            )
        self.curriculum_stage_length.assign(stage_length)
        self.curriculum_s0.assign(s0)
        self.curriculum_s1.assign(s1)

    def set_robustness_schedule(self, c0=None, constants="paper"):
        """Sets c: `c0` until N > s0 + 1, then eq. 11 with `constants`.

        Args:
            c0: the initial scale; None for iCT's 0.00054 sqrt(d).
            constants: `"paper"`, `"authors_code"`, a (slope, intercept) pair,
                or None to keep c = c0 throughout (iCT).
        """
        c0 = schedules.ict_c0(self.data_dim) if c0 is None else check_positive("c0", c0)
        self.c0.assign(c0)
        self.robustness_c.assign(c0)
        if constants is None:
            self.adaptive_c_enabled.assign(0)
            return
        slope, intercept = schedules.adaptive_c_constants(constants)
        self.adaptive_c_slope.assign(float(slope))
        self.adaptive_c_intercept.assign(float(intercept))
        self.adaptive_c_enabled.assign(1)

    def at(self, step):
        """N and c at optimizer step `step` (a tensor: this runs inside the step)."""
        stage_length = ops.convert_to_tensor(self.curriculum_stage_length)
        s0 = ops.convert_to_tensor(self.curriculum_s0)
        curriculum_n = schedules.curriculum_num_scales(step, stage_length, s0, self.curriculum_s1.value)
        num_scales = ops.where(stage_length > 0, curriculum_n, self.num_scales.value)
        num_scales = ops.minimum(num_scales, self.max_num_scales)
        c0 = ops.convert_to_tensor(self.c0)
        adaptive = schedules.robustness_c(
            num_scales, c0, s0, (self.adaptive_c_slope.value, self.adaptive_c_intercept.value)
        )
        robustness_c = ops.where(self.adaptive_c_enabled.value > 0, adaptive, c0)
        return num_scales, robustness_c

    def record(self, num_scales, robustness_c):
        """Keeps the step's N and c, for the logs and callbacks between steps."""
        self.num_scales.assign(num_scales)
        self.robustness_c.assign(robustness_c)


def model_state_variable(model, name, dtype, value, shape=()):
    """A non-trainable variable of `model`, the same on every replica, initialized to `value`.

    `value` is a number, an array, or an initializer (a callable of shape and dtype).
    """
    return model.add_weight(
        shape=shape,
        dtype=dtype,
        initializer=value if callable(value) else keras.initializers.Constant(value),
        trainable=False,
        aggregation="only_first_replica",
        name=name,
    )
