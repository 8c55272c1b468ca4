"""Impulsive outliers of the data and of the consistency TD values (paper section 4.1, fig. 1).

Fig. 1 compares pixel and latent data with box-and-whisker statistics: the
values of the (normalized) training data, and the temporal differences the
consistency loss compares, `TD = f(x_{t_{i+1}}, t_{i+1}) - f(x_{t_i}, t_i)`,
at N = 21 discretization steps. Latent data has rare but huge values
(impulsive outliers, like salt-and-pepper noise) that pixel data in [-1, 1]
cannot have, and they reach the TD values the robust loss must absorb.

- `box_statistics(values)`: quartiles, Tukey's inner and outer fences and the
  mild / extreme outliers beyond them, as plain numbers.
- `td_values(model, x0)`: the TD values of a `ConsistencyModel` on data x0.
- `impulsive_noise_report(...)`: both, for a pixel and / or a latent group.
- `plot_impulsive_noise(values, path)`: the 2x2 (or 1x2) figure as a PNG.
- `with_impulsive_outliers(values, fraction)`: data with injected impulsive
  outliers, to test a method on the heavy tails the data at hand may lack.
- `measured_c_on_gaussian_data(dim, total_steps)`: the schedule of
  `AdaptiveC("measured")` predicted without a network, on Gaussian data
  whose consistency function is exact, against eq. 11 (paper section 4.5);
  `plot_measured_c(results, path)` draws it.

Reference: paper section 4.1, fig. 1; section 4.5, eq. 11.
"""

import itertools
import math

import numpy as np
from keras import ops

from keras_lct import schedules
from keras_lct._validation import check_int
from keras_lct._validation import check_positive
from keras_lct._validation import check_seed
from keras_lct.models.consistency import ConsistencyModel
from keras_lct.saving import atomic_path

INNER_FENCE_IQRS = 1.5
OUTER_FENCE_IQRS = 3.0
QUARTILE_METHOD = "linear"  # numpy.quantile's default
MAX_PLOTTED_OUTLIERS = 2000
TD_DEFINITION = (
    "TD = f(x0 + t z, t) - f(x0 + t2 z, t2): the student minus the target of the consistency loss, "
    "t = sigma_i > t2 = sigma_{i+1} on the Karras grid of N levels, i uniform in [0, N-2], one z per sample, "
    "online weights"
)


def box_statistics(values, name="values"):
    """Box-and-whisker statistics of all the values of an array, with Tukey's fences.

    Quartiles use `numpy.quantile` with its default linear interpolation
    (`method="linear"`, the (n - 1) p position). With `IQR = Q3 - Q1`, the
    inner fences are `[Q1 - 1.5 IQR, Q3 + 1.5 IQR]` and the outer fences
    `[Q1 - 3 IQR, Q3 + 3 IQR]`. A value strictly outside the inner fences
    is an outlier: mild if it lies within the outer fences, extreme beyond
    them. The whiskers end at the most extreme values within the inner fences.

    Args:
        values: array-like of real numbers, any shape (flattened).
        name: what the values are, for error messages.

    Returns:
        dict of plain Python numbers: `count`, `min`, `max`, `mean`, `std`,
        `q1`, `median`, `q3`, `iqr`, `whiskers` [lo, hi], `inner_fences`
        [lo, hi], `outer_fences` [lo, hi], `mild_outliers` and
        `extreme_outliers` (`{"count", "fraction"}`), and `outliers` (both
        kinds: `{"count", "fraction", "min", "max"}`, min and max None when
        there are none).

    Example:
    >>> stats = box_statistics([1, 2, 3, 4, 5, 6, 7, 8, 100])
    >>> stats["q1"], stats["q3"], stats["outer_fences"], stats["extreme_outliers"]["count"]
    (3.0, 7.0, [-9.0, 19.0], 1)

    Reference: paper section 4.1, fig. 1 (blue box = IQR, green dashed =
    inner fences, orange dashed = outer fences, red dots = outliers).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"The {name} are empty: box statistics need at least one value.")
    _check_finite(_non_finite_counts(values), values.size, name)
    q1, median, q3 = (float(value) for value in np.quantile(values, [0.25, 0.5, 0.75], method=QUARTILE_METHOD))
    inner, outer = _fences(q1, q3, INNER_FENCE_IQRS), _fences(q1, q3, OUTER_FENCE_IQRS)
    outliers = values[_outside(values, inner)]
    extreme = int(_outside(outliers, outer).sum())
    inside = values[~_outside(values, inner)]

    def share(count):
        return {"count": int(count), "fraction": count / values.size}

    return {
        "count": int(values.size),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "q1": q1,
        "median": median,
        "q3": q3,
        "iqr": q3 - q1,
        "whiskers": [float(inside.min()), float(inside.max())],
        "inner_fences": list(inner),
        "outer_fences": list(outer),
        "mild_outliers": share(outliers.size - extreme),
        "extreme_outliers": share(extreme),
        "outliers": dict(
            share(outliers.size),
            min=float(outliers.min()) if outliers.size else None,
            max=float(outliers.max()) if outliers.size else None,
        ),
    }


def _fences(q1, q3, iqrs):
    return [q1 - iqrs * (q3 - q1), q3 + iqrs * (q3 - q1)]


def _outside(values, fences):
    return (values < fences[0]) | (values > fences[1])


def td_values(model, x0, num_scales=21, seed=0, batch_size=256, max_values=None):
    """The temporal differences (TD) the consistency loss compares, on data x0.

    For every sample x0[k], a grid index i uniform in [0, N - 2] and one
    standard normal z are drawn from `np.random.SeedSequence(seed,
    spawn_key=(0, k))` (the index first, then z: the values do not depend
    on `batch_size` or the backend). With the model's decreasing Karras grid
    `sigma = karras_sigmas(N)`, t = sigma[i] and t2 = sigma[i + 1] < t:

        TD = f(x0 + t z, t) - f(x0 + t2 z, t2),

    the student minus the target of `ConsistencyModel`'s training step, i.e.
    the paper's `f(x_{t_{i+1}}, t_{i+1}) - f(x_{t_i}, t_i)` in its ascending
    notation. f is `model([x, sigma])`, the online weights in inference mode
    (the same function as in training unless the network uses dropout).

    With an untrained `ConsistencyModel` whose network ends in a
    zero-initialized layer (`keras_lct.models.UNet`), F = 0 and
    `TD = c_skip(t) x_t - c_skip(t2) x_t2` (c_skip of
    `schedules.precondition`): the TD values before any learning, showing
    how outliers of the data enter the loss.

    Args:
        model: a `keras_lct.models.ConsistencyModel`, trained or not (built
            for x0's sample shape here if it is not built).
        x0: clean samples `(n, ...)`, e.g. normalized latents: a NumPy array
            or an array-like read by rows (`keras_lct.data.NormalizedLatents`).
        num_scales: N, the number of grid levels (21 in fig. 1).
        seed: int seed of the indices, the noise and the subsample.
        batch_size: samples per network call (each call evaluates both
            levels, 2 x `batch_size` inputs).
        max_values: keep at most this many of the `n * prod(shape)` values,
            a seeded uniform subsample in their original order; None keeps
            all.

    Returns:
        flat NumPy float32 array of TD values.

    Example:
    ```python
    model = ConsistencyModel(UNet(img_resolution=32, model_channels=32, channel_mult=(1, 2),
                                  num_blocks=1, attn_resolutions=()), ema_decays=())
    td = td_values(model, latents[:512])
    print(box_statistics(td)["extreme_outliers"])
    ```

    Reference: paper section 4.1, fig. 1 (right column).
    """
    if not isinstance(model, ConsistencyModel):
        raise ValueError(f"`model` must be a keras_lct.models.ConsistencyModel; received {type(model).__name__}.")
    num_scales = check_int("num_scales", num_scales, minimum=2)
    seed = check_seed("seed", seed)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    sample_shape = _sample_shape(x0)
    if not model.built:
        model.build((None,) + sample_shape)
    if tuple(model.data_shape) != sample_shape:
        raise ValueError(
            f"The model was built for samples of shape {tuple(model.data_shape)}, but x0 holds samples of "
            f"shape {sample_shape}."
        )
    sigmas = ops.convert_to_numpy(
        schedules.karras_sigmas(num_scales, model.sigma_min, model.sigma_max, model.rho)
    ).astype(np.float32)
    batch_size = min(batch_size, len(x0))

    def batches():
        for start in range(0, len(x0), batch_size):
            clean = np.asarray(x0[start : start + batch_size], np.float32)
            count = len(clean)
            index, noise = _draws(seed, range(start, start + count), num_scales, sample_shape)
            levels = np.stack([sigmas[index], sigmas[index + 1]])  # (2, count): t, t2
            noisy = clean + levels.reshape(levels.shape + (1,) * len(sample_shape)) * noise
            if count < batch_size:  # one compiled shape for every call
                levels, noisy = _pad(levels, batch_size), _pad(noisy, batch_size)
            denoised = model.predict_on_batch([noisy.reshape((-1,) + sample_shape), levels.reshape(-1)])
            student, target = np.asarray(ops.convert_to_numpy(denoised), np.float32).reshape(noisy.shape)[:, :count]
            yield student - target

    return _flat_subsample(batches(), len(x0) * math.prod(sample_shape), max_values, seed, "TD values")


def data_values(x0, seed=0, batch_size=256, max_values=None, name="data values"):
    """The flattened values of x0, subsampled like `td_values` (same positions for the same x0 and seed).

    Args:
        x0: samples `(n, ...)`, a NumPy array or an array-like read by rows.
        seed: int seed of the subsample.
        batch_size: samples read at a time.
        max_values: keep at most this many values (seeded, in order); None
            keeps all.
        name: what the values are, for the error on NaN or inf (every value
            is checked, kept or not).

    Returns:
        flat NumPy float32 array.
    """
    seed = check_seed("seed", seed)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    sample_shape = _sample_shape(x0)
    rows = (x0[start : start + batch_size] for start in range(0, len(x0), batch_size))
    return _flat_subsample(rows, len(x0) * math.prod(sample_shape), max_values, seed, name)


def impulsive_noise_report(
    pixels=None,
    latents=None,
    pixel_model=None,
    latent_model=None,
    num_scales=21,
    seed=0,
    batch_size=256,
    max_values=1_000_000,
):
    """Fig. 1's numbers: box statistics of the data and TD values, per group.

    Give a pixel group (`pixels` with `pixel_model`), a latent group
    (`latents` with `latent_model`), or both. For each group, the data
    values and the TD values (`td_values`) of all its samples are
    subsampled to at most `max_values` each (seeded) and summarized by
    `box_statistics`.

    Args:
        pixels: pixel data `(n, H, W, C)` in [-1, 1], or None.
        latents: normalized latent data `(n, h, w, c)` (the training data of
            latent consistency training), or None.
        pixel_model, latent_model: the `ConsistencyModel` of each group, e.g.
            an untrained one (F = 0, see `td_values`) or a trained one.
        num_scales: N of the grid (21 in fig. 1).
        seed: int seed of the TD draws and the subsamples.
        batch_size: samples per network call.
        max_values: at most this many values per panel; None keeps all.

    Returns:
        `(report, values)`. `report` is JSON-ready: `{"num_scales", "seed",
        "max_values", "quartile_method", "td_definition", group: {
        "num_samples", "sample_shape", "values_total", "subsampled", "data":
        box_statistics, "td": box_statistics}}` for each group given.
        `values` holds the (subsampled) arrays, `{group: {"data": array,
        "td": array}}`, the input of `plot_impulsive_noise`.

    Example:
    ```python
    report, values = impulsive_noise_report(pixels, latents, pixel_model, latent_model)
    print(report["latent"]["data"]["outliers"])
    plot_impulsive_noise(values, "impulsive_noise.png", num_scales=report["num_scales"])
    ```

    Reference: paper section 4.1, fig. 1.
    """
    num_scales = check_int("num_scales", num_scales, minimum=2)
    if max_values is not None:
        max_values = check_int("max_values", max_values, minimum=1)
    groups = {"pixel": (pixels, pixel_model), "latent": (latents, latent_model)}
    for group, (x0, model) in groups.items():
        if (x0 is None) != (model is None):
            given, missing = ("data", "model") if model is None else ("model", "data")
            raise ValueError(
                f"The {group} group has {given} but no {missing}: pass both `{group}s` and `{group}_model`, or neither."
            )
    groups = {group: pair for group, pair in groups.items() if pair[0] is not None}
    if not groups:
        raise ValueError("Give at least one group: `pixels` with `pixel_model`, or `latents` with `latent_model`.")
    report = {
        "num_scales": num_scales,
        "seed": seed,
        "max_values": max_values,
        "quartile_method": f"numpy.quantile, method={QUARTILE_METHOD!r}",
        "td_definition": TD_DEFINITION,
    }
    values = {}
    for group, (x0, model) in groups.items():
        sample_shape = _sample_shape(x0)
        total = len(x0) * math.prod(sample_shape)
        data = data_values(x0, seed=seed, batch_size=batch_size, max_values=max_values, name=f"{group} data values")
        data_statistics = box_statistics(data, name=f"{group} data values")
        td = td_values(model, x0, num_scales, seed=seed, batch_size=batch_size, max_values=max_values)
        values[group] = {"data": data, "td": td}
        report[group] = {
            "num_samples": len(x0),
            "sample_shape": list(sample_shape),
            "values_total": total,
            "subsampled": data.size < total,
            "data": data_statistics,
            "td": box_statistics(td, name=f"{group} TD values"),
        }
    return report, values


def with_impulsive_outliers(values, fraction=0.005, magnitude=(4.0, 8.0), seed=0):
    """A copy of the data with a random fraction of its values replaced by impulsive outliers.

    Each value is replaced, independently with probability `fraction`, by
    `+-U(magnitude)` (a random sign): salt-and-pepper noise, the kind of
    outlier fig. 1 finds in Stable Diffusion latents. For latents normalized
    to std 0.5 the default magnitudes are 8-16 standard deviations, the
    range of the extremes of the paper's CelebA-HQ latents (about -9 to 7).

    Args:
        values: array-like of real numbers, any shape.
        fraction: the probability that a value is replaced, in [0, 1].
        magnitude: `(low, high)`, 0 <= low <= high: the range of the
            outliers' absolute values.
        seed: int seed of the NumPy generator that places and draws them.

    Returns:
        a float32 NumPy array of the shape of `values`.

    Example:
    >>> heavy = with_impulsive_outliers(np.zeros((1000, 4, 4, 4)), fraction=0.01, seed=0)
    >>> round(float(np.mean(heavy != 0)), 2), float(np.abs(heavy).max()) <= 8
    (0.01, True)

    Reference: paper section 4.1, fig. 1.
    """
    values = np.asarray(values, dtype=np.float32)
    if not 0 <= fraction <= 1:
        raise ValueError(f"`fraction` must be in [0, 1]; received {fraction!r}.")
    low, high = magnitude
    if not 0 <= low <= high:
        raise ValueError(f"`magnitude` must be (low, high) with 0 <= low <= high; received {magnitude!r}.")
    rng = np.random.default_rng(check_seed("seed", seed))
    replaced = rng.random(values.shape) < fraction
    outliers = rng.uniform(low, high, size=values.shape) * rng.choice([-1.0, 1.0], size=values.shape)
    return np.where(replaced, outliers, values).astype(np.float32)


def plot_impulsive_noise(values, path, num_scales=21, seed=0, dpi=100):
    """Writes fig. 1 as a PNG: one row per group, the data (left) and its TD values (right).

    Each panel: the blue box spans Q1-Q3 with the median, whiskers to the
    last values within the inner fences, green dashed lines at the inner
    fences, orange dashed lines at the outer fences, and the outliers as red
    dots (a seeded random subsample of at most 2,000 per panel, jittered
    sideways). The title gives the group and the percentage of outliers.

    Args:
        values: `{group: {"data": array, "td": array}}`, e.g. the `values`
            returned by `impulsive_noise_report` (any group names, any
            number of rows).
        path: the PNG file to write (atomically; folders are created).
        num_scales: N the TD values were taken at (for the titles).
        seed: seed of the outlier subsample and jitter.
        dpi: resolution of the PNG.

    Example:
    ```python
    plot_impulsive_noise({"latent": {"data": x.ravel(), "td": td_values(model, x)}}, "fig1.png")
    ```

    Reference: paper fig. 1.
    """
    from matplotlib.lines import Line2D

    if not values:
        raise ValueError("`values` holds no group to plot.")
    rng = np.random.default_rng(check_seed("seed", seed))
    figure = new_figure(9, 3.6 * len(values), dpi=dpi)
    axes = figure.subplots(len(values), 2, squeeze=False)
    for row, (group, panels) in zip(axes, values.items()):
        for ax, (panel, label) in zip(row, (("data", f"{group} data"), ("td", f"{group} TD (N = {num_scales})"))):
            panel_values = np.asarray(panels[panel], np.float64).reshape(-1)
            statistics = box_statistics(panel_values, name=f"{label} values")
            _draw_box(ax, panel_values, statistics, rng)
            outliers = statistics["outliers"]
            ax.set_title(
                f"{label}: {100 * outliers['fraction']:.2f}% outliers "
                f"({100 * statistics['extreme_outliers']['fraction']:.2f}% extreme)",
                fontsize=10,
            )
    legend = [
        Line2D([], [], color="tab:blue", linewidth=6, alpha=0.5, label="IQR (Q1-Q3)"),
        Line2D([], [], color="tab:green", linestyle="--", label="inner fences (1.5 IQR)"),
        Line2D([], [], color="tab:orange", linestyle="--", label="outer fences (3 IQR)"),
        Line2D([], [], color="red", marker=".", linestyle="", label="outliers"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=4, fontsize=9, frameon=False)
    save_figure(figure, path, rect=(0, 0.05, 1, 1))


def measured_c_on_gaussian_data(
    dim,
    total_steps,
    batch_size=128,
    sigma_data=schedules.SIGMA_DATA,
    seed=0,
    c0=None,
    s0=schedules.CURRICULUM_S0,
    s1=schedules.CURRICULUM_S1,
    steps_per_chunk=8,
):
    """The c schedule of `AdaptiveC("measured")` on Gaussian data, where the consistency function is exact.

    For data x0 ~ N(0, sigma_data^2 I) of `dim` elements the probability-flow
    ODE keeps `x_t / sqrt(sigma_data^2 + t^2)` constant, so the consistency
    function is `f(x_t, t) = x_t sqrt(sigma_data^2 + sigma_min^2) /
    sqrt(sigma_data^2 + t^2)`: the model training would converge to. Every
    step of eq. 10's curriculum over `total_steps` draws `batch_size`
    samples, their grid indices i from the lognormal table as the model's
    step does, and one z each; the TD is `f(x0 + t z, t) - f(x0 + t2 z, t2)`
    (t = sigma_i, t2 = sigma_{i+1}) and its statistic
    `schedules.td_log_spread_sum`. A stage's c is `schedules.measured_c` of
    its mean ln r_i against the first stage's: the value the measured c
    settles at within that stage.

    Args:
        dim: d, the elements of one sample (4096 for 32x32x4 latents).
        total_steps: K of eq. 10, the run's optimizer steps.
        batch_size: samples per step.
        sigma_data: the data's standard deviation (0.5).
        seed: seed of the NumPy draws.
        c0: c of the first stage; None for iCT's 0.00054 sqrt(d).
        s0, s1: the curriculum's initial and final number of intervals.
        steps_per_chunk: steps drawn at once (memory: `steps_per_chunk *
            batch_size * dim` float32 values, three times).

    Returns:
        dict of plain numbers: `dim`, `total_steps`, `stage_length`,
        `batch_size`, `sigma_data`, `seed`, `c0`, `stages` (one dict per
        stage: `num_scales`, `steps`, `samples`, `log_spread` (mean ln r_i),
        `measured_c`, `eq11_c` (the library's eq. 11 schedule,
        `schedules.robustness_c`: c0 in the first stage), `eq11_dim_scaled_c`
        (eq. 11 times sqrt(d / 4096)) and `ratio` = measured / eq. 11), and
        `slope`, the least-squares slope of ln(measured c) against ln(N - 1)
        (eq. 11's is -1.18).

    Example:
    ```python
    result = measured_c_on_gaussian_data(4096, total_steps=7 * 200)
    print([round(stage["ratio"], 2) for stage in result["stages"]], result["slope"])
    plot_measured_c([result], "measured_c.png")
    ```

    Reference: paper section 4.5, eq. 10 and 11; `docs/callbacks.md` "The measured c".
    """
    dim = check_int("dim", dim, minimum=1)
    total_steps = check_int("total_steps", total_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    steps_per_chunk = check_int("steps_per_chunk", steps_per_chunk, minimum=1)
    sigma_data = check_positive("sigma_data", sigma_data)
    c0 = schedules.ict_c0(dim) if c0 is None else check_positive("c0", c0)
    stage_length = schedules.curriculum_stage_length(total_steps, s0, s1)
    rng = np.random.default_rng(check_seed("seed", seed))
    scale_at_sigma_min = math.sqrt(sigma_data**2 + schedules.SIGMA_MIN**2)

    def consistency_function(x, sigma):
        return x * (scale_at_sigma_min / np.sqrt(sigma_data**2 + np.square(sigma)))[:, None].astype(np.float32)

    num_scales_of_step = ops.convert_to_numpy(
        schedules.curriculum_num_scales(np.arange(total_steps), stage_length, s0, s1)
    )
    stages = []
    for num_scales, stage_steps in itertools.groupby(num_scales_of_step.tolist()):
        num_scales, steps = int(num_scales), len(list(stage_steps))
        # Shapes of s1 + 1 levels at every N, as in the model's step: one compiled op per shape.
        sigmas = ops.convert_to_numpy(schedules.karras_sigma(np.arange(s1 + 1), num_scales)).astype(np.float64)
        probabilities = schedules.lognormal_index_probabilities(num_scales, size=s1)
        log_sum, samples = 0.0, 0
        for start in range(0, steps, steps_per_chunk):
            count = min(steps_per_chunk, steps - start) * batch_size
            uniform = rng.random(count, dtype=np.float32)
            index = ops.convert_to_numpy(schedules.sample_from_probabilities(probabilities, uniform))
            t, next_t = sigmas[index], sigmas[index + 1]
            clean = np.float32(sigma_data) * rng.standard_normal((count, dim), dtype=np.float32)
            noise = rng.standard_normal((count, dim), dtype=np.float32)
            student = consistency_function(clean + t[:, None].astype(np.float32) * noise, t)
            target = consistency_function(clean + next_t[:, None].astype(np.float32) * noise, next_t)
            chunk_sum, chunk_samples = schedules.td_log_spread_sum(student, target)
            log_sum += float(ops.convert_to_numpy(chunk_sum))
            samples += int(ops.convert_to_numpy(chunk_samples))
        stages.append({"num_scales": num_scales, "steps": steps, "samples": samples, "log_spread": log_sum / samples})
    scaled = schedules.dim_scaled_constants(dim)
    for stage in stages:
        n = stage["num_scales"]
        stage["measured_c"] = float(ops.convert_to_numpy(schedules.measured_c(c0, stages[0]["log_spread"], stage["log_spread"])))
        stage["eq11_c"] = float(ops.convert_to_numpy(schedules.robustness_c(n, c0, s0, "paper")))
        stage["eq11_dim_scaled_c"] = float(ops.convert_to_numpy(schedules.robustness_c(n, c0, s0, scaled)))
        stage["ratio"] = stage["measured_c"] / stage["eq11_c"]
    slope = None
    if len(stages) > 1:
        log_intervals = np.log([stage["num_scales"] - 1.0 for stage in stages])
        slope = float(np.polyfit(log_intervals, np.log([stage["measured_c"] for stage in stages]), 1)[0])
    return {
        "dim": dim,
        "total_steps": total_steps,
        "stage_length": stage_length,
        "batch_size": batch_size,
        "sigma_data": sigma_data,
        "seed": seed,
        "c0": c0,
        "stages": stages,
        "slope": slope,
    }


def plot_measured_c(results, path, dpi=100):
    """Writes c against N (log-log) as a PNG: the measured c and eq. 11, one colour per data size.

    Args:
        results: one result of `measured_c_on_gaussian_data`, or a list of them.
        path: the PNG file to write (atomically; folders are created).
        dpi: resolution of the PNG.

    Example:
    ```python
    plot_measured_c([measured_c_on_gaussian_data(4096, 1400), measured_c_on_gaussian_data(64, 1400)], "c.png")
    ```

    Reference: paper section 4.5, eq. 11 and fig. 4 (left).
    """
    results = [results] if isinstance(results, dict) else list(results)
    if not results:
        raise ValueError("`results` holds no result of `measured_c_on_gaussian_data` to plot.")
    figure = new_figure(6.4, 4.4, dpi=dpi)
    ax = figure.subplots()
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for result, colour in zip(results, colours * len(results)):
        n = [stage["num_scales"] for stage in result["stages"]]
        label = f"d = {result['dim']}"
        ax.plot(n, [stage["measured_c"] for stage in result["stages"]], "o-", color=colour,
                label=f"measured, {label} (slope {result['slope']:.2f})" if result["slope"] is not None else f"measured, {label}")
        if result["dim"] != schedules.PAPER_LATENT_DIM:
            ax.plot(n, [stage["eq11_dim_scaled_c"] for stage in result["stages"]], ":", color=colour,
                    label=f"eq. 11 x sqrt(d / 4096), {label}")
    reference = results[0]["stages"]
    n = [stage["num_scales"] for stage in reference]
    ax.plot(n, [float(ops.convert_to_numpy(schedules.adaptive_c(value))) for value in n], "k--",
            label="eq. 11: exp(-1.18 ln(N - 1) - 0.72)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n)
    ax.set_xticklabels([str(value) for value in n])
    ax.minorticks_off()
    ax.set_xlabel("N (discretization levels)")
    ax.set_ylabel("c")
    ax.set_title("Robustness scale c per curriculum stage: measured on Gaussian data vs eq. 11", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(figure, path)


def new_figure(width, height, dpi=100):
    """A matplotlib figure of `width` x `height` inches, drawn off-screen (no display, no pyplot).

    Example:
    >>> figure = new_figure(6, 4)
    >>> ax = figure.subplots()
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path, rect=None):
    """Lays `figure` out (inside `rect` of the figure, if given) and writes it as a PNG, atomically."""
    figure.tight_layout(rect=rect)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")


def _draw_box(ax, values, statistics, rng):
    box = {
        "med": statistics["median"],
        "q1": statistics["q1"],
        "q3": statistics["q3"],
        "whislo": statistics["whiskers"][0],
        "whishi": statistics["whiskers"][1],
        "fliers": [],
    }
    ax.bxp([box], showfliers=False, patch_artist=True, widths=0.5,
           boxprops={"facecolor": "tab:blue", "alpha": 0.5}, medianprops={"color": "navy"})
    for fences, color in ((statistics["inner_fences"], "tab:green"), (statistics["outer_fences"], "tab:orange")):
        for fence in fences:
            ax.axhline(fence, color=color, linestyle="--", linewidth=1)
    outliers = values[_outside(values, statistics["inner_fences"])]
    if outliers.size > MAX_PLOTTED_OUTLIERS:
        outliers = rng.choice(outliers, MAX_PLOTTED_OUTLIERS, replace=False)
    ax.scatter(1 + rng.uniform(-0.2, 0.2, outliers.size), outliers, s=4, color="red", linewidths=0)
    ax.set_xticks([])
    ax.set_xlim(0.5, 1.5)


def _draws(seed, samples, num_scales, sample_shape):
    """Grid indices and noise of the given samples, each a pure function of (seed, sample)."""
    indices, noise = [], []
    for sample in samples:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, sample)))
        indices.append(rng.integers(0, num_scales - 1))
        noise.append(rng.standard_normal(sample_shape, dtype=np.float32))
    return np.asarray(indices, np.int64), np.stack(noise)


def _non_finite_counts(values):
    nan = int(np.isnan(values).sum())
    return np.array([nan, int(np.size(values) - np.isfinite(values).sum()) - nan])


def _check_finite(non_finite, size, name):
    nan, inf = (int(count) for count in non_finite)
    if nan or inf:
        raise ValueError(
            f"The {name} hold {nan} NaN and {inf} inf of {size} values; box statistics need finite "
            "values. Find where they come from (broken data, or a diverged model)."
        )


def _flat_subsample(chunks, total, max_values, seed, name):
    """Concatenates flattened chunks, keeping a seeded sorted subsample of `max_values` positions.

    Every value is checked to be finite, kept or not.
    """
    keep = None
    if max_values is not None and total > check_int("max_values", max_values, minimum=1):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        keep = np.sort(rng.choice(total, size=max_values, replace=False))
    kept, start, non_finite = [], 0, np.zeros(2, np.int64)
    for chunk in chunks:
        flat = np.asarray(chunk, np.float32).reshape(-1)
        non_finite += _non_finite_counts(flat)
        if keep is None:
            kept.append(flat)
        else:
            low, high = np.searchsorted(keep, [start, start + flat.size])
            kept.append(flat[keep[low:high] - start])
        start += flat.size
    _check_finite(non_finite, total, name)
    return np.concatenate(kept)


def _sample_shape(x0):
    shape = tuple(getattr(x0, "shape", ()))
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"`x0` must hold samples `(n, ...)` with n >= 1 and rank >= 2; received shape {shape}.")
    return tuple(int(dim) for dim in shape[1:])


def _pad(array, size):
    """Pads axis 1 of `array` up to `size` by repeating its last entry (valid inputs, discarded)."""
    padding = [(0, 0)] * array.ndim
    padding[1] = (0, size - array.shape[1])
    return np.pad(array, padding, mode="edge")
