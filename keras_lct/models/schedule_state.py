"""The discretization N and robustness scale c of a ConsistencyModel, kept as model state.

N (eq. 10's exponential curriculum) and c (iCT's c0, then eq. 11's adaptive
scale, or the scale measured from the TD values) are computed inside the
compiled step from the model's step counter and the variables here, which the
callbacks `keras_lct.callbacks.ExpCurriculum` and `keras_lct.callbacks.AdaptiveC`
set before training. So the schedules need no retracing, follow the optimizer's
steps under gradient accumulation, and resume with the model.

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

    The TD spread statistics (`td_*`, the measured c's input) are kept by
    every training step whatever the c schedule, from the model's first step:
    per curriculum stage (a stage is a run of steps with one N), the mean of
    ln r_i over the samples of its completed updates (r_i the per-sample TD
    RMS, `schedules.td_log_spread_sum`), and the means of the first and the
    last completed stage. They are created by `add_td_statistics`, after the
    model's other state, so that a `.keras` file saved before they existed
    holds the model's other variables in their order.

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
        self._add_variables(model, state)

    def add_td_statistics(self, model):
        """Creates the TD spread statistics of the measured c (see the class docstring) on `model`."""
        self._add_variables(model, TD_STATISTICS)

    def _add_variables(self, model, state):
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
        """Sets c: `c0` until N > s0 + 1, then eq. 11 with `constants`; or the measured c.

        With `constants="measured"`, c = c0 during the first curriculum
        stage, then `schedules.measured_c`: c0 times the ratio of the
        current stage's TD spread to the first stage's. The TD statistics
        are not reset: they are the run's since its first step, so that a
        resumed `fit` continues the schedule.

        Args:
            c0: the initial scale; None for iCT's 0.00054 sqrt(d).
            constants: `"paper"`, `"authors_code"`, a (slope, intercept) pair,
                `"measured"`, or None to keep c = c0 throughout (iCT).
        """
        c0 = schedules.ict_c0(self.data_dim) if c0 is None else check_positive("c0", c0)
        self.c0.assign(c0)
        self.robustness_c.assign(c0)
        measured = check_robustness_constants(constants) == MEASURED
        self.adaptive_c_measured.assign(int(measured))
        if constants is None or measured:
            self.adaptive_c_enabled.assign(0)
            return
        slope, intercept = schedules.adaptive_c_constants(constants)
        self.adaptive_c_slope.assign(float(slope))
        self.adaptive_c_intercept.assign(float(intercept))
        self.adaptive_c_enabled.assign(1)

    def at(self, step):
        """N and c at optimizer step `step` (a tensor: this runs inside the step).

        The measured c reads the TD statistics of the updates before this
        one, so all micro-batches and replicas of an update get the same c.
        """
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
        measured = self._measured_c(c0, self._td_statistics_at(num_scales))
        robustness_c = ops.where(self.adaptive_c_measured.value > 0, measured, robustness_c)
        return num_scales, robustness_c

    def record(self, num_scales, robustness_c, td_log_spread_sum=0.0, td_samples=0, update_complete=True):
        """Keeps the step's N and c, and adds its TD statistic to the stage's.

        Args:
            num_scales, robustness_c: the step's N and c (from `at`).
            td_log_spread_sum, td_samples: `schedules.td_log_spread_sum` of
                the batch this call trains on, summed over the replicas of
                the update (`keras_lct.backend.distribute.sum_over_replicas`).
            update_complete: whether this is the update's last micro-batch
                (a bool tensor under gradient accumulation, else True): the
                update's statistic joins the stage's then.
        """
        self.num_scales.assign(num_scales)
        self.robustness_c.assign(robustness_c)
        statistics = self._td_statistics_at(num_scales)
        update_log_sum = self.td_update_log_sum.value + ops.cast(td_log_spread_sum, "float32")
        update_samples = self.td_update_samples.value + ops.cast(td_samples, "int32")
        samples = statistics["stage_samples"] + update_samples
        # A running mean rather than a running sum: float32 keeps its digits over millions of samples.
        folded = statistics["stage_log_spread"] + (
            update_log_sum - ops.cast(update_samples, "float32") * statistics["stage_log_spread"]
        ) / ops.cast(ops.maximum(samples, 1), "float32")
        if update_complete is True:
            statistics.update(stage_log_spread=folded, stage_samples=samples, update_log_sum=0.0, update_samples=0)
        else:
            statistics.update(
                stage_log_spread=ops.where(update_complete, folded, statistics["stage_log_spread"]),
                stage_samples=ops.where(update_complete, samples, statistics["stage_samples"]),
                update_log_sum=ops.where(update_complete, 0.0, update_log_sum),
                update_samples=ops.where(update_complete, 0, update_samples),
            )
        for name, value in statistics.items():
            getattr(self, f"td_{name}").assign(value)

    def _td_statistics_at(self, num_scales):
        """The TD statistics as a step at N = `num_scales` finds them: a stage of another N is closed.

        Returns a dict of tensors named as the `td_*` variables (without the prefix).
        """
        stage_num_scales = self.td_stage_num_scales.value
        stage_log_spread = self.td_stage_log_spread.value
        stage_samples = self.td_stage_samples.value
        completed_stages = self.td_completed_stages.value
        new_stage = ops.not_equal(stage_num_scales, num_scales)
        closes = ops.logical_and(new_stage, stage_samples > 0)
        return {
            "stage_num_scales": ops.cast(num_scales, "int32"),
            "stage_log_spread": ops.where(new_stage, 0.0, stage_log_spread),
            "stage_samples": ops.where(new_stage, 0, stage_samples),
            "update_log_sum": self.td_update_log_sum.value,
            "update_samples": self.td_update_samples.value,
            "first_log_spread": ops.where(
                ops.logical_and(closes, completed_stages == 0), stage_log_spread, self.td_first_log_spread.value
            ),
            "last_log_spread": ops.where(closes, stage_log_spread, self.td_last_log_spread.value),
            "completed_stages": completed_stages + ops.cast(closes, "int32"),
        }

    @staticmethod
    def _measured_c(c0, statistics):
        """c0 in the first stage; then c0 x the spread of this stage's completed updates (the last stage's
        before it has any) over the first stage's."""
        current = ops.where(
            statistics["stage_samples"] > 0, statistics["stage_log_spread"], statistics["last_log_spread"]
        )
        measured = schedules.measured_c(c0, statistics["first_log_spread"], current)
        return ops.where(statistics["completed_stages"] > 0, measured, c0)


MEASURED = "measured"

# The TD spread statistics of the measured c (`ScheduleState.add_td_statistics`): dtype, initial value.
TD_STATISTICS = {
    # N of the stage being measured (0: none yet), and its mean ln r_i over its completed updates.
    "td_stage_num_scales": ("int32", 0),
    "td_stage_log_spread": ("float32", 0.0),
    "td_stage_samples": ("int32", 0),
    # The update in progress (its micro-batches so far).
    "td_update_log_sum": ("float32", 0.0),
    "td_update_samples": ("int32", 0),
    # Mean ln r_i of the first and of the last completed stage, valid once completed_stages > 0.
    "td_first_log_spread": ("float32", 0.0),
    "td_last_log_spread": ("float32", 0.0),
    "td_completed_stages": ("int32", 0),
    # 1: c is the measured c (`AdaptiveC("measured")`).
    "adaptive_c_measured": ("int32", 0),
}


def check_robustness_constants(constants):
    """Returns `constants` if it names a c schedule: None, `"measured"`, or eq. 11's (see `schedules.adaptive_c_constants`).

    Raises:
        ValueError: naming the accepted choices.
    """
    if constants is None or constants == MEASURED:
        return constants
    if isinstance(constants, str) and constants not in schedules.ADAPTIVE_C_CONSTANTS:
        choices = ", ".join(repr(name) for name in (*schedules.ADAPTIVE_C_CONSTANTS, MEASURED))
        raise ValueError(
            f"`constants` must be one of {choices}, a (slope, intercept) pair of numbers, or None; "
            f"received {constants!r}."
        )
    schedules.adaptive_c_constants(constants)
    return constants


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
