"""AdaptiveC("measured"): the TD spread statistic, its stage state, the schedule it gives, and fit."""

import math

import h5py
import keras
import numpy as np
import pytest
from keras import ops

from keras_lct import analysis
from keras_lct import callbacks
from keras_lct import schedules
from keras_lct.models.schedule_state import TD_STATISTICS
from keras_lct.models.schedule_state import ScheduleState
from test_consistency import LogRecorder
from test_consistency import mixture
from test_consistency import toy_model
from test_recipes import run_recipe

RNG = np.random.default_rng(29)


def numpy_log_rms_sum(student, target):
    """Sum over samples of ln sqrt(mean over the sample's elements of (student - target)^2)."""
    difference = (np.asarray(student, np.float64) - np.asarray(target, np.float64)).reshape(len(student), -1)
    return float(np.sum(np.log(np.maximum(np.sqrt(np.mean(difference**2, axis=1)), schedules.TD_RMS_FLOOR))))


def statistic(student, target):
    log_sum, count = schedules.td_log_spread_sum(student, target)
    return float(ops.convert_to_numpy(log_sum)), int(ops.convert_to_numpy(count))


def test_the_batch_statistic_is_the_sum_of_the_log_per_sample_rms_and_the_count():
    student = RNG.standard_normal((12, 4, 4, 2)).astype("float32") * RNG.uniform(0.01, 10.0, (12, 1, 1, 1)).astype("float32")
    target = RNG.standard_normal((12, 4, 4, 2)).astype("float32")
    target[3] = student[3]  # a zero TD: the floor keeps its logarithm finite
    log_sum, count = statistic(student, target)
    assert count == 12
    assert log_sum == pytest.approx(numpy_log_rms_sum(student, target), rel=1e-5)
    assert np.isfinite(log_sum)


def test_the_statistics_of_a_split_batch_add_up_to_the_whole_batchs():
    student, target = RNG.standard_normal((2, 10, 16)).astype("float32")
    whole = statistic(student, target)
    parts = [statistic(student[part], target[part]) for part in (slice(0, 3), slice(3, 10))]
    assert sum(count for _, count in parts) == whole[1]
    assert sum(log_sum for log_sum, _ in parts) == pytest.approx(whole[0], rel=1e-6)


STAGE_LENGTH = 10
TD_STD_PER_DOUBLING = 2.0**-0.8


def schedule_on(holder, c0):
    """A ScheduleState on a plain layer, with eq. 10's curriculum (K' = STAGE_LENGTH) and the measured c."""
    schedule = ScheduleState(holder, num_scales=11, c0=c0, max_num_scales=641, data_dim=64)
    schedule.add_td_statistics(holder)
    schedule.set_curriculum(total_steps=7 * STAGE_LENGTH)
    schedule.set_robustness_schedule(c0, constants="measured")
    return schedule


def synthetic_td(step, num_scales, batch=64, dim=64):
    """Gaussian TDs whose std falls by 2^-0.8 each time N doubles: (student, target) of one step."""
    doublings = round(math.log2((num_scales - 1) / 10))
    rng = np.random.default_rng(step)
    student = 0.3 * TD_STD_PER_DOUBLING**doublings * rng.standard_normal((batch, dim))
    return student.astype("float32"), np.zeros((batch, dim), "float32")


def test_a_synthetic_td_stream_with_a_known_variance_decay_gives_c0_times_the_std_ratio():
    c0 = 0.01
    whole = schedule_on(keras.layers.Layer(), c0)
    split = schedule_on(keras.layers.Layer(), c0)  # each step as two micro-batches
    last_c = {}
    for step in range(7 * STAGE_LENGTH):
        num_scales, c = whole.at(step)
        num_scales = int(ops.convert_to_numpy(num_scales))
        student, target = synthetic_td(step, num_scales)
        whole.record(num_scales, c, *schedules.td_log_spread_sum(student, target))
        _, split_c = split.at(step)
        for part, complete in ((slice(0, 24), False), (slice(24, None), True)):
            split.record(num_scales, split_c, *schedules.td_log_spread_sum(student[part], target[part]), update_complete=complete)
        c, split_c = float(ops.convert_to_numpy(c)), float(ops.convert_to_numpy(split_c))
        assert split_c == pytest.approx(c, rel=1e-5), step
        if num_scales == 11:
            assert c == pytest.approx(c0), step
        last_c[num_scales] = c
    for doublings, num_scales in enumerate((21, 41, 81, 161, 321, 641), start=1):
        # The stage's c after its first STAGE_LENGTH - 1 updates: 576 samples of 64 elements each, whose
        # mean ln r has a standard error of ~0.4% per stage; 2% is four of those on the ratio of two stages.
        assert last_c[num_scales] == pytest.approx(c0 * TD_STD_PER_DOUBLING**doublings, rel=0.02), num_scales
    for name in ("td_stage_log_spread", "td_first_log_spread", "td_last_log_spread"):
        np.testing.assert_allclose(float(getattr(split, name)), float(getattr(whole, name)), rtol=1e-5, err_msg=name)
    assert int(whole.td_completed_stages) == 6 and int(whole.td_stage_num_scales) == 641


def test_at_d_4096_with_the_papers_curriculum_the_prediction_lies_near_eq_11():
    result = analysis.measured_c_on_gaussian_data(4096, total_steps=7 * 10, batch_size=64, seed=0)
    assert [stage["num_scales"] for stage in result["stages"]] == [11, 21, 41, 81, 161, 321, 641]
    ratios = [stage["ratio"] for stage in result["stages"]]
    assert ratios[0] == pytest.approx(1.0)
    # Measured here (seeds 0-5, 640 samples a stage): slope -0.993 to -1.003, ratios rising from 1.2-1.3
    # at N = 21 to 2.2-2.4 at N = 641, within 6% of each other across seeds. The TD of the exact
    # consistency function falls as 1 / (N - 1), shallower than eq. 11's -1.18: bands with margin.
    assert -1.08 < result["slope"] < -0.92, result["slope"]
    assert all(0.9 < ratio < 2.7 for ratio in ratios), ratios


class StateRecorder(keras.callbacks.Callback):
    """The schedule's TD statistics after every batch (and before the first)."""

    def __init__(self, states):
        super().__init__()
        self.states = states

    def on_train_begin(self, logs=None):
        if not self.states:
            self.on_train_batch_end(None)

    def on_train_batch_end(self, batch, logs=None):
        schedule = self.model.schedule
        self.states.append({
            name: float(ops.convert_to_numpy(getattr(schedule, f"td_{name}")))
            for name in ("stage_num_scales", "stage_log_spread", "stage_samples", "first_log_spread", "completed_stages")
        })


@pytest.mark.compiled_step
def test_in_fit_every_step_logs_c0_times_the_spread_ratio_of_its_state():
    model = toy_model()
    c0 = schedules.ict_c0(2)
    total_steps = 14  # K' = 2: N = 11, 11, 21, 21, 41, 41, 81, ...
    states, logs = [], []
    for epochs in (1, 1):  # a second fit continues the statistics
        recorder = LogRecorder()
        model.fit(
            mixture(16 * 4, seed=len(logs)), batch_size=16, epochs=epochs, shuffle=False, verbose=0,
            callbacks=[callbacks.ExpCurriculum(total_steps), callbacks.AdaptiveC("measured"), StateRecorder(states), recorder],
        )
        logs += recorder.batches
    assert [int(log["num_scales"]) for log in logs] == [11, 11, 21, 21, 41, 41, 81, 81]
    for step, log in enumerate(logs):
        before, after = states[step], states[step + 1]
        if log["num_scales"] == 11:
            expected = c0
        else:
            # This stage's spread over its updates so far (at a stage's first update: the stage just closed).
            first = before["first_log_spread"] if before["completed_stages"] > 0 else before["stage_log_spread"]
            expected = c0 * math.exp(before["stage_log_spread"] - first)
        assert log["c"] == pytest.approx(expected, rel=1e-5), (step, log, before)
        assert after["stage_num_scales"] == log["num_scales"]
    assert logs[2]["c"] == pytest.approx(c0, rel=1e-5)  # stage 2's first update: the first stage's own spread
    assert all(log["c"] != pytest.approx(c0, rel=1e-3) for log in logs[3:]), logs
    assert states[-1]["completed_stages"] == 3 and states[-1]["stage_samples"] == 32


def test_unknown_c_schedules_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="'paper', 'authors_code', 'measured'.*'bogus'"):
        callbacks.AdaptiveC("bogus")
    with pytest.raises(ValueError, match="scale_with_dim"):
        callbacks.AdaptiveC("measured", scale_with_dim=True)
    model = toy_model()
    with pytest.raises(ValueError, match="'measured'"):
        model.set_robustness_schedule(constants="bogus")
    assert callbacks.AdaptiveC("measured").get_config() == {"constants": "measured", "c0": None, "scale_with_dim": False}


def test_weights_saved_before_the_td_statistics_existed_load(tmp_path):
    model = toy_model()
    model.fit(mixture(32), batch_size=16, epochs=1, verbose=0, callbacks=[callbacks.ExpCurriculum(14), callbacks.AdaptiveC()])
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "a") as weights:  # the file an older keras-lct wrote: no TD statistics
        own = weights["vars"]
        for index in range(len(own) - len(TD_STATISTICS), len(own)):
            del own[str(index)]
    restored = toy_model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(path)
    assert int(restored.training_step) == 2
    assert float(restored.schedule.robustness_c) == pytest.approx(float(model.schedule.robustness_c))
    assert int(restored.schedule.td_completed_stages) == 0 and int(restored.schedule.td_stage_samples) == 0


@pytest.mark.recipe_bookkeeping
def test_the_recipe_prints_the_schedule_and_writes_its_figure(tmp_path):
    result = run_recipe("measured_c.py", "--dims", "64", "--steps-per-stage", "2", "--batch-size", "8",
                        "--output", tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "log-log slope" in result.stdout and "641" in result.stdout
    assert (tmp_path / "measured_c.png").stat().st_size > 0
    assert (tmp_path / "measured_c.json").stat().st_size > 0


@pytest.mark.backend_neutral
def test_the_recipe_answers_help_and_refuses_bad_sizes():
    result = run_recipe("measured_c.py", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--dims", "--steps-per-stage", "--batch-size", "--seed", "--output"):
        assert option in result.stdout
    refused = run_recipe("measured_c.py", "--steps-per-stage", "0", timeout=120)
    assert refused.returncode == 2 and "must be an integer >= 1" in refused.stderr
