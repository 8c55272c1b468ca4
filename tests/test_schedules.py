"""keras_lct.schedules against values computed here with numpy/scipy."""

import math

import keras
import numpy as np
import pytest
from keras import ops
from scipy import special
from scipy import stats

from keras_lct import schedules


def numpy_of(value):
    return ops.convert_to_numpy(value)


def reference_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    # Paper section 3 writes the grid increasing (t_1 = sigma_min); the library
    # indexes it decreasing (index 0 = sigma_max).
    i = np.arange(1, n + 1)
    increasing = (
        sigma_min ** (1 / rho)
        + (i - 1) / (n - 1) * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))
    ) ** rho
    return increasing[::-1]


@pytest.mark.parametrize("n", [2, 11, 21, 641])
def test_karras_grid_matches_paper_formula(n):
    sigmas = numpy_of(schedules.karras_sigmas(n))
    np.testing.assert_allclose(sigmas, reference_sigmas(n), rtol=2e-5)
    assert sigmas[0] == pytest.approx(80.0, rel=1e-6)
    assert sigmas[-1] == pytest.approx(0.002, rel=1e-5)
    assert np.all(np.diff(sigmas) < 0)


def test_karras_sigma_is_elementwise_in_index_and_num_scales():
    index = np.array([0, 5, 10, 440])
    n = np.array([11, 11, 21, 641])
    expected = [reference_sigmas(k)[i] for i, k in zip(index, n)]
    np.testing.assert_allclose(numpy_of(schedules.karras_sigma(index, n)), expected, rtol=2e-5)
    # The 2-step sampling level of docs/reference.md: grid level 440 of 641 ~ 0.369.
    assert expected[-1] == pytest.approx(0.369, abs=1e-3)


def reference_lognormal(n, p_mean=-1.1, p_std=2.0):
    log_sigmas = np.log(reference_sigmas(n))
    cdf = stats.norm.cdf(log_sigmas, loc=p_mean, scale=p_std)
    mass = cdf[:-1] - cdf[1:]
    return mass / mass.sum()


@pytest.mark.parametrize("n", [11, 81, 641])
def test_lognormal_probabilities_match_erf_formula_and_sum_to_one(n):
    probabilities = numpy_of(schedules.lognormal_index_probabilities(n))
    assert probabilities.shape == (n - 1,)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(probabilities, reference_lognormal(n), rtol=1e-3, atol=1e-7)
    # The erf form of docs/reference.md, independently.
    log_sigmas = np.log(reference_sigmas(n))
    erf = special.erf((log_sigmas - (-1.1)) / (math.sqrt(2) * 2.0))
    mass = erf[:-1] - erf[1:]
    np.testing.assert_allclose(probabilities, mass / mass.sum(), rtol=1e-3, atol=1e-7)


def test_lognormal_probabilities_padded_for_a_tensor_num_scales():
    padded = numpy_of(schedules.lognormal_index_probabilities(ops.convert_to_tensor(21), size=640))
    assert padded.shape == (640,)
    assert np.all(padded[20:] == 0)
    np.testing.assert_allclose(padded[:20], reference_lognormal(21), rtol=1e-3, atol=1e-7)


def test_inverse_cdf_draw_follows_the_probabilities():
    probabilities = reference_lognormal(11).astype("float32")
    uniform = np.random.default_rng(0).uniform(size=20000).astype("float32")
    index = numpy_of(schedules.sample_from_probabilities(probabilities, uniform))
    assert index.min() >= 0 and index.max() <= 9
    frequencies = np.bincount(index, minlength=10) / index.size
    np.testing.assert_allclose(frequencies, probabilities, atol=0.01)
    # Edges: u = 0 takes the first index with mass, u -> 1 the last.
    edges = numpy_of(schedules.sample_from_probabilities(probabilities, np.array([0.0, 0.9999999], "float32")))
    assert list(edges) == [0, 9]


def test_consistency_weight():
    t = np.array([80.0, 1.0, 0.01])
    t2 = np.array([60.0, 0.5, 0.002])
    np.testing.assert_allclose(numpy_of(schedules.consistency_weight(t, t2)), 1 / (t - t2), rtol=1e-6)


def reference_num_scales(k, total, s0=10, s1=640):
    stage_length = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / stage_length), s1) + 1


def test_curriculum_stage_length_for_the_paper_run():
    assert schedules.curriculum_stage_length(294_000) == 42_000


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 11),
        (41_999, 11),
        (42_000, 21),
        (83_999, 21),
        (84_000, 41),
        (126_000, 81),
        (168_000, 161),
        (210_000, 321),
        (251_999, 321),
        (252_000, 641),
        (293_999, 641),
        (10_000_000, 641),
    ],
)
def test_num_scales_at_stage_boundaries(step, expected):
    assert reference_num_scales(step, 294_000) == expected
    assert int(schedules.num_scales(step, 294_000)) == expected


def test_num_scales_on_an_integer_tensor_and_other_ends():
    steps = ops.convert_to_tensor(np.array([0, 99, 100, 250, 999], "int32"))
    got = numpy_of(schedules.num_scales(steps, 1000, s0=5, s1=100))
    expected = [reference_num_scales(int(k), 1000, 5, 100) for k in [0, 99, 100, 250, 999]]
    np.testing.assert_array_equal(got, expected)


def test_num_scales_short_runs_still_reach_s1():
    assert int(schedules.num_scales(6, 3)) == 641


def test_ict_c0():
    assert schedules.ict_c0(4096) == pytest.approx(0.00054 * 64)
    assert schedules.ict_c0(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))


@pytest.mark.parametrize("constants, slope, intercept", [("paper", -1.18, -0.72), ("authors_code", -1.15, -0.85), ((-1.0, 0.5), -1.0, 0.5)])
@pytest.mark.parametrize("n", [11, 21, 641])
def test_adaptive_c(constants, slope, intercept, n):
    expected = math.exp(slope * math.log(n - 1) + intercept)
    assert float(schedules.adaptive_c(n, constants)) == pytest.approx(expected, rel=1e-5)


def test_adaptive_c_reference_values():
    # The magnitudes of fig. 4 (left): c falls by two orders over the curriculum.
    assert float(schedules.adaptive_c(11)) == pytest.approx(0.03216, rel=1e-3)
    assert float(schedules.adaptive_c(641)) == pytest.approx(2.377e-4, rel=1e-3)
    assert float(schedules.adaptive_c(11, "authors_code")) == pytest.approx(0.03026, rel=1e-3)
    assert float(schedules.adaptive_c(641, "authors_code")) == pytest.approx(2.534e-4, rel=1e-3)


@pytest.mark.parametrize("dim", [64, 4096, 3 * 64 * 64])
@pytest.mark.parametrize("n", [21, 641])
def test_dim_scaled_constants_scale_c_like_ict_c0(dim, n):
    scaled = float(schedules.adaptive_c(n, schedules.dim_scaled_constants(dim)))
    expected = math.exp(-1.18 * math.log(n - 1) - 0.72) * math.sqrt(dim) / 64
    assert scaled == pytest.approx(expected, rel=1e-5)
    assert scaled / float(schedules.adaptive_c(n)) == pytest.approx(schedules.ict_c0(dim) / schedules.ict_c0(4096), rel=1e-5)


def test_robustness_c_keeps_c0_for_the_first_stage():
    c0 = schedules.ict_c0(4096)
    assert float(schedules.robustness_c(11, c0)) == pytest.approx(c0)
    assert float(schedules.robustness_c(21, c0)) == pytest.approx(math.exp(-1.18 * math.log(20) - 0.72), rel=1e-5)
    assert float(schedules.robustness_c(641, c0, constants=None)) == pytest.approx(c0)
    n = ops.convert_to_tensor(np.array([11, 21, 641], "int32"))
    got = numpy_of(schedules.robustness_c(n, c0, constants="authors_code"))
    expected = [c0] + [math.exp(-1.15 * math.log(k - 1) - 0.85) for k in (21, 641)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_precondition_matches_formulas_and_boundary_condition():
    sigma = np.array([0.002, 0.01, 0.5, 1.0, 80.0])
    c_skip, c_out, c_in, c_noise = (numpy_of(v) for v in schedules.precondition(sigma))
    sd, smin = 0.5, 0.002
    np.testing.assert_allclose(c_skip, sd**2 / ((sigma - smin) ** 2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, (sigma - smin) * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, 250 * np.log(sigma), rtol=1e-5)
    assert c_skip[0] == pytest.approx(1.0) and c_out[0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.compiled_step
def test_schedules_run_inside_a_compiled_function():
    class Probe(keras.layers.Layer):
        def call(self, steps):
            n = schedules.num_scales(steps[0], 294_000)
            probabilities = schedules.lognormal_index_probabilities(n, size=640)
            values = ops.stack([ops.cast(n, "float32"), ops.sum(probabilities), schedules.robustness_c(n, 0.0346)])
            return ops.expand_dims(values, 0) + ops.zeros_like(ops.cast(steps, "float32"))[:, None]

    model = keras.Sequential([keras.Input(shape=(), dtype="int32"), Probe()])
    n, total, c = model.predict(np.array([84_000], "int32"), verbose=0)[0]
    assert n == 41
    assert total == pytest.approx(1.0, abs=1e-5)
    assert c == pytest.approx(math.exp(-1.18 * math.log(40) - 0.72), rel=1e-5)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: schedules.karras_sigmas(1), "num_scales"),
        (lambda: schedules.karras_sigmas(2.5), "num_scales"),
        (lambda: schedules.karras_sigma(0, 11, sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: schedules.lognormal_index_probabilities(1), "num_scales"),
        (lambda: schedules.num_scales(0, 0), "total_steps"),
        (lambda: schedules.num_scales(-1, 10), "step"),
        (lambda: schedules.num_scales(0, "10"), "total_steps"),
        (lambda: schedules.num_scales(0, 10, s0=20, s1=10), "s1"),
        (lambda: schedules.ict_c0(0), "dim"),
        (lambda: schedules.adaptive_c(1), "num_scales"),
        (lambda: schedules.adaptive_c(11, "unknown"), "constants"),
        (lambda: schedules.adaptive_c(11, (1.0,)), "constants"),
        (lambda: schedules.robustness_c(11, -0.1), "c0"),
        (lambda: schedules.precondition(1.0, sigma_data=-1.0), "sigma_data"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, words):
    with pytest.raises(ValueError, match=words):
        call()
