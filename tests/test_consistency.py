"""ConsistencyModel: the objective, fit on a known distribution, state, saving, sampling."""

import functools
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct import callbacks
from keras_lct import schedules
from keras_lct.backend import compiled
from keras_lct.models import ConsistencyModel
from keras_lct.models import MLPDenoiser
from keras_lct.models import UNet
from keras_lct.optimizers import RAdam

MODES = np.array([[0.5, 0.5], [-0.5, 0.5], [0.5, -0.5], [-0.5, -0.5]], "float32")


def mixture(count, seed=0):
    """Four tight Gaussian modes at (+-0.5, +-0.5): a distribution with a known answer."""
    rng = np.random.default_rng(seed)
    return (MODES[rng.integers(0, len(MODES), count)] + 0.03 * rng.standard_normal((count, 2))).astype("float32")


def distance_to_modes(samples):
    return float(np.mean(np.min(np.linalg.norm(samples[:, None, :] - MODES[None], axis=-1), axis=1)))


def toy_model(network=None, **kwargs):
    kwargs.setdefault("ema_decays", (0.99,))
    model = ConsistencyModel(network or MLPDenoiser(2, width=64), **kwargs)
    model.build((None, 2))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


class LogRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append({key: float(value) for key, value in logs.items()})


def labelled_mixture(count, seed=0):
    """`mixture`'s samples with their mode as the class label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(MODES), count).astype("int32")
    return (MODES[labels] + 0.03 * rng.standard_normal((count, 2))).astype("float32"), labels


def conditional_toy_model(label_dropout=0.1, **kwargs):
    """`toy_model` around a class-conditional MLP: one class per mode of `MODES`."""
    return toy_model(network=MLPDenoiser(2, width=64, num_classes=len(MODES), label_dropout=label_dropout), **kwargs)


@pytest.mark.compiled_step
def test_fit_learns_a_known_distribution_with_and_without_labels():
    """One class-conditional model, trained with label dropout, samples each mode by its label and all without."""
    model = conditional_toy_model()
    untrained = distance_to_modes(model.sample(512, seed=0, ema=False))
    steps = 800
    x0, labels = labelled_mixture(4096)
    model.fit(
        x0,
        labels,
        batch_size=128,
        epochs=steps // 32,
        verbose=0,
        callbacks=[callbacks.ExpCurriculum(steps), callbacks.AdaptiveC()],
    )
    # Without a label (the null class, 10% of the training labels) it samples the mixture (measured 0.34-0.37).
    one_step = distance_to_modes(model.sample(512, seed=0))
    two_step = distance_to_modes(model.sample(512, steps=2, seed=0))
    assert untrained > 0.55, untrained
    assert one_step < 0.45, (untrained, one_step)
    assert two_step < 0.45, (untrained, two_step)
    # With a label, the requested mode (measured: 98-100% of the 1-step samples nearest it, every backend).
    hits = []
    for label in range(len(MODES)):
        samples = model.sample(128, seed=label, labels=label)
        hits.append(np.mean(np.argmin(np.linalg.norm(samples[:, None] - MODES[None], axis=-1), axis=1) == label))
    assert np.mean(hits) > 0.85 and min(hits) > 0.7, hits


def numpy_objective(model, clean, noise, index, num_scales, c, distance):
    """The objective of docs/reference.md computed in numpy from raw network outputs."""
    sigmas = schedules_numpy_grid(num_scales)
    t, next_t = sigmas[index], sigmas[index + 1]

    def f(x, sigma):
        sd, smin = 0.5, 0.002
        c_skip = sd**2 / ((sigma - smin) ** 2 + sd**2)
        c_out = (sigma - smin) * sd / np.sqrt(sigma**2 + sd**2)
        c_in = 1 / np.sqrt(sigma**2 + sd**2)
        network_output = ops.convert_to_numpy(model.network([(c_in[:, None] * x).astype("float32"), (250 * np.log(sigma)).astype("float32")]))
        return c_skip[:, None] * x + c_out[:, None] * network_output

    student = f(clean + t[:, None] * noise, t)
    target = f(clean + next_t[:, None] * noise, next_t)
    m = np.mean((student - target) ** 2, axis=1)
    per_sample = {"cauchy": np.log1p(m / (2 * c**2)), "pseudo_huber": np.sqrt(m + c**2) - c, "l2": m}[distance]
    consistency = np.mean(per_sample / (t - next_t))
    low_noise = index >= math.floor(0.75 * num_scales)
    diffusion_terms = np.mean((student - clean) ** 2, axis=1) * (1 / t**2 + 1 / 0.25)
    diffusion = diffusion_terms[low_noise].mean() if low_noise.any() else 0.0
    return consistency, diffusion, consistency + 5 * diffusion


def schedules_numpy_grid(n):
    i = np.arange(n)
    return (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7


@pytest.mark.parametrize("distance", ["cauchy", "pseudo_huber", "l2"])
def test_objective_matches_an_independent_computation(distance):
    model = toy_model(loss=distance, num_scales=21)
    clean = mixture(64, seed=3)
    noise = np.random.default_rng(4).standard_normal(clean.shape).astype("float32")
    step = ops.convert_to_tensor(0, "int32")
    _, index, _ = model.objective.draws(model, ops.convert_to_tensor(clean), noise, step, ops.convert_to_tensor(21, "int32"))
    index = ops.convert_to_numpy(index)
    assert index.min() >= 0 and index.max() <= 19
    c = schedules.ict_c0(2)
    consistency, diffusion, total = numpy_objective(model, clean, noise, index, 21, c, distance)
    value = float(model.compute_loss(x=clean, y=noise, training=False))
    assert value == pytest.approx(total, rel=2e-4)
    assert float(model.objective_trackers["consistency_loss"].result()) == pytest.approx(consistency, rel=2e-4)
    assert float(model.objective_trackers["diffusion_loss"].result()) == pytest.approx(diffusion, rel=2e-4)


def test_diffusion_loss_is_zero_not_nan_when_no_sample_is_in_the_subset():
    model = toy_model(diffusion_fraction=0.0)
    value = float(model.compute_loss(x=mixture(16), training=False))
    assert np.isfinite(value)
    assert float(model.objective_trackers["diffusion_loss"].result()) == 0.0
    everything = toy_model(diffusion_fraction=1.0)
    everything.compute_loss(x=mixture(16), training=False)
    assert float(everything.objective_trackers["diffusion_loss"].result()) > 0.0


def test_noise_differs_between_steps_and_samples_and_repeats_for_a_step():
    model = toy_model()
    clean = ops.convert_to_tensor(mixture(32))
    n = ops.convert_to_tensor(641, "int32")
    draws = [model.objective.draws(model, clean, None, ops.convert_to_tensor(step, "int32"), n) for step in (0, 1, 0)]
    noise = [ops.convert_to_numpy(noise) for noise, _, _ in draws]
    index = [ops.convert_to_numpy(index) for _, index, _ in draws]
    assert not np.allclose(noise[0], noise[1])
    np.testing.assert_array_equal(noise[0], noise[2])
    np.testing.assert_array_equal(index[0], index[2])
    assert len(np.unique(noise[0][:, 0])) == 32
    assert len(np.unique(index[0])) > 5 and not np.array_equal(index[0], index[1])
    assert abs(noise[0].mean()) < 0.3 and 0.7 < noise[0].std() < 1.3


ADAPTIVE_CONSTANTS = {"paper": (-1.18, -0.72), "authors_code": (-1.15, -0.85)}


def expected_schedule(step, total_steps, constants="paper"):
    """N of eq. 10 and c (c0, then eq. 11 once N > 11), for 2-d data."""
    n = min(10 * 2 ** (step // math.floor(total_steps / 7)), 640) + 1
    slope, intercept = ADAPTIVE_CONSTANTS[constants]
    return n, 0.00054 * math.sqrt(2) if n <= 11 else math.exp(slope * math.log(n - 1) + intercept)


def fit_and_record(model, steps, total_steps, constants="paper", **fit_kwargs):
    recorder = LogRecorder()
    x0, labels = labelled_mixture(16 * steps)
    model.fit(
        x0,
        labels if model.num_classes else None,
        batch_size=16,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[callbacks.ExpCurriculum(total_steps), callbacks.AdaptiveC(constants), recorder],
        **fit_kwargs,
    )
    return recorder.batches


def assert_logs_follow_schedule(batches, first_step, total_steps, constants="paper"):
    for offset, logs in enumerate(batches):
        n, c = expected_schedule(first_step + offset, total_steps, constants)
        assert logs["num_scales"] == n, (first_step + offset, logs)
        assert logs["c"] == pytest.approx(c, rel=1e-5), (first_step + offset, logs)


def test_adaptive_c_scaled_with_dim_follows_eq_11_times_sqrt_d_over_4096():
    total_steps = 14  # K' = 2: N > 11 from step 2
    model = toy_model()
    recorder = LogRecorder()
    model.fit(
        mixture(16 * 4), batch_size=16, epochs=1, shuffle=False, verbose=0,
        callbacks=[callbacks.ExpCurriculum(total_steps), callbacks.AdaptiveC(scale_with_dim=True), recorder],
    )
    for step, logs in enumerate(recorder.batches):
        n, c = expected_schedule(step, total_steps)
        assert logs["num_scales"] == n
        expected = c if n <= 11 else c * math.sqrt(2) / 64  # eq. 11 at d = 2 instead of 32 * 32 * 4
        assert logs["c"] == pytest.approx(expected, rel=1e-5), (step, logs)
    assert callbacks.AdaptiveC(scale_with_dim=True).get_config()["scale_with_dim"] is True


@pytest.mark.compiled_step
def test_num_scales_and_c_inside_the_step_follow_the_schedule(tmp_path):
    total_steps = 70  # K' = 10: N doubles every 10 steps
    model = toy_model()
    assert_logs_follow_schedule(fit_and_record(model, 25, total_steps), 0, total_steps)
    assert int(model.training_step) == 25
    assert int(model.schedule.num_scales) == 41
    # A second fit continues the schedule from the model's own step.
    assert_logs_follow_schedule(fit_and_record(model, 10, total_steps, "authors_code"), 25, total_steps, "authors_code")
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert int(restored.training_step) == 35
    assert float(restored.schedule.robustness_c) == pytest.approx(float(model.schedule.robustness_c))
    assert_logs_follow_schedule(fit_and_record(restored, 12, total_steps, "authors_code"), 35, total_steps, "authors_code")


@pytest.mark.compiled_step
def test_steps_per_execution_keeps_the_schedule():
    if keras.backend.backend() == "torch":
        pytest.skip("Keras' torch trainer accepts only steps_per_execution=1.")
    model = ConsistencyModel(MLPDenoiser(2, width=16), ema_decays=())
    model.build((None, 2))
    model.compile(optimizer="adam", steps_per_execution=4)
    fit_and_record(model, 24, 70)
    assert int(model.training_step) == 24
    assert int(model.schedule.num_scales) == expected_schedule(23, 70)[0]


def test_exp_curriculum_reads_the_whole_runs_length_from_fit():
    # ExpCurriculum() takes K = epochs x batches per epoch from fit: N at every step is that of
    # ExpCurriculum(K), also when fit resumes with initial_epoch (fit's epochs is the run's last).
    data = mixture(16 * 2)  # 2 batches an epoch; 14 epochs: K = 28, K' = 4
    expected = [expected_schedule(step, 28)[0] for step in range(28)]
    whole, curriculum = LogRecorder(), callbacks.ExpCurriculum()
    toy_model().fit(data, batch_size=16, epochs=14, shuffle=False, verbose=0, callbacks=[curriculum, whole])
    assert curriculum.run_total_steps == 28
    assert [logs["num_scales"] for logs in whole.batches] == expected

    model, resumed, curriculum = toy_model(), LogRecorder(), callbacks.ExpCurriculum()
    model.fit(data, batch_size=16, epochs=7, shuffle=False, verbose=0, callbacks=[callbacks.ExpCurriculum(28)])
    model.fit(data, batch_size=16, epochs=14, initial_epoch=7, shuffle=False, verbose=0, callbacks=[curriculum, resumed])
    assert curriculum.run_total_steps == 28 and int(model.training_step) == 28
    assert [logs["num_scales"] for logs in resumed.batches] == expected[14:]


def test_exp_curriculum_counts_optimizer_updates_under_gradient_accumulation():
    model = ConsistencyModel(MLPDenoiser(2, width=8), ema_decays=())
    model.build((None, 2))
    model.compile(optimizer=keras.optimizers.Adam(1e-3, gradient_accumulation_steps=2))
    curriculum = callbacks.ExpCurriculum()
    model.fit(mixture(16 * 4), batch_size=16, epochs=2, verbose=0, callbacks=[curriculum])
    assert curriculum.run_total_steps == int(model.training_step) == 4  # 8 batches, 4 updates


def test_exp_curriculum_without_a_total_refuses_data_of_unknown_length():
    def batches():
        for seed in range(2):
            yield (mixture(16, seed=seed),)

    model = toy_model()
    with pytest.raises(ValueError, match=r"no known number of batches per epoch.*ExpCurriculum\(total_steps\)"):
        model.fit(batches(), epochs=1, verbose=0, callbacks=[callbacks.ExpCurriculum()])
    assert int(model.training_step) == 0
    model.fit(batches(), epochs=1, verbose=0, callbacks=[callbacks.ExpCurriculum(2)])  # a total given: trains
    assert int(model.training_step) == 2


def test_ema_tracks_the_online_weights_and_keeps_them_apart():
    model = toy_model(ema_decays=(0.5, 0.9))
    initial = [ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    fit_and_record(model, 6, 70)
    online = [ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    fast, slow = ([ops.convert_to_numpy(v) for v in averages] for averages in model.ema.averages)
    change = lambda weights: sum(np.abs(w - i).sum() for w, i in zip(weights, initial))
    assert 0 < change(slow) < change(fast) < change(online)
    with model.ema.weights_in_network(0.9):
        inside = [ops.convert_to_numpy(v) for v in model.network.trainable_variables]
    for a, b in zip(inside, slow):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.network.trainable_variables, online):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), b)


@pytest.mark.compiled_step
def test_ema_folds_in_the_weights_after_each_optimizer_update():
    # The authors' loop: optimizer.step(), then update_ema. After k updates the average is the
    # recurrence a_k = d a_(k-1) + (1 - d) w_k over the weights w_k AFTER update k, from a_0 = w_0.
    decay = 0.6
    model = toy_model(ema_decays=(decay,))
    weights = lambda: [ops.convert_to_numpy(v).astype(np.float64) for v in model.network.trainable_variables]
    average = weights()
    for step in range(3):
        model.fit(mixture(16, seed=step), batch_size=16, epochs=1, verbose=0)
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights())]
    assert int(model.training_step) == 3
    for expected, kept in zip(average, model.ema.averages[0]):
        np.testing.assert_allclose(ops.convert_to_numpy(kept), expected, rtol=1e-5, atol=1e-7)


def test_sampling_steps_ts_and_determinism():
    model = toy_model()
    one = model.sample(8, seed=1)
    assert one.shape == (8, 2) and one.dtype == np.float32
    np.testing.assert_array_equal(one, model.sample(8, seed=1, batch_size=3))
    assert not np.allclose(one, model.sample(8, seed=2))
    two = model.sample(8, steps=2, seed=1)
    three = model.sample(8, ts=[80.0, 1.0, 0.1], seed=1)
    assert not np.allclose(one, two) and not np.allclose(two, three)
    # 1 step is f(sigma_max z, sigma_max) with z from NumPy's generator.
    z = np.random.default_rng(1).standard_normal((8, 2), dtype=np.float32)
    with model.ema.weights_in_network():
        expected = ops.convert_to_numpy(model.denoise(80.0 * z, 80.0))
    np.testing.assert_allclose(one, expected, rtol=1e-5, atol=1e-6)


def test_boundary_condition_f_is_identity_at_sigma_min():
    model = toy_model()
    x = mixture(8)
    np.testing.assert_allclose(ops.convert_to_numpy(model([x, np.full((8,), 0.002, "float32")])), x, atol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), x)


SAVE_ON_JAX = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, {tests!r})
import numpy as np
import keras
from test_consistency import conditional_toy_model, fit_and_record
model = conditional_toy_model()
fit_and_record(model, 20, 70)
model.save({path!r})
np.save({samples!r}, np.concatenate([model.sample(16, seed=5), model.sample(16, steps=2, seed=5, labels=np.arange(16) % 4)]))
"""


def run_python(code, env_backend=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if env_backend:
        env["KERAS_BACKEND"] = env_backend
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    return result


def small_unet_model(jit_compile, seed=0):
    """A ConsistencyModel around a one-level UNet with attention on 4x4x4 data."""
    keras.utils.set_random_seed(seed)
    network = UNet(img_resolution=4, in_channels=4, out_channels=4, model_channels=8, channel_mult=(1,),
                   num_blocks=1, attn_resolutions=(4,), channels_per_head=8)
    model = ConsistencyModel(network, ema_decays=(0.9,), seed=seed)
    model.build((None, 4, 4, 4))
    model.compile(optimizer=RAdam(1e-3), jit_compile=jit_compile)
    model.set_curriculum(100)
    model.set_robustness_schedule()
    return model


@pytest.mark.compiled_step
def test_jit_compile_true_compiles_the_step_with_the_same_losses_and_weights(monkeypatch):
    # tensorflow: XLA compiles the whole step. torch: the step calls its network through
    # torch.compile (keras_lct.backend.compiled): the student's forward and backward, the target's forward.
    if keras.backend.backend() == "jax":
        pytest.skip("jax's default step is the XLA-compiled one (jit_compile='auto' is True there) that every fit "
                    "test runs; its eager step, compiled op by op, took 143 s of make test")
    if keras.backend.backend() == "torch":
        import torch

        # Dynamo's capture and AOTAutograd's backward, without inductor's code generation (1-4 minutes
        # of C++ compiles on 2 cores; bench/step_ops.py runs inductor).
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    data = np.random.default_rng(0).normal(size=(32, 4, 4, 4)).astype("float32") * 0.5
    # On tensorflow XLA's stateless random ops use another algorithm than the graph's: other noise,
    # other losses, so there the compiled step is checked on its own.
    compared = (True,) if keras.backend.backend() == "tensorflow" else (False, True)
    runs = {}
    for jit_compile in compared:
        model = small_unet_model(jit_compile)
        assert model.jit_compile is jit_compile
        initial = [ops.convert_to_numpy(v) for v in model.network.weights]
        history = model.fit(data, batch_size=16, epochs=3, shuffle=False, verbose=0)
        runs[jit_compile] = history.history["loss"], [ops.convert_to_numpy(v) for v in model.network.weights]
    if keras.backend.backend() == "tensorflow":
        losses, weights = runs[True]
        assert np.all(np.isfinite(losses)) and int(model.optimizer.iterations) == 6
        assert all(np.all(np.isfinite(weight)) for weight in weights)
        assert not all(np.array_equal(weight, start) for weight, start in zip(weights, initial))
        return
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for compiled_weight, eager_weight in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(compiled_weight, eager_weight, rtol=1e-3, atol=1e-5)
    if keras.backend.backend() == "torch":
        # The network traces whole: a graph break would leave Keras' per-layer work in the step.
        explanation = torch._dynamo.explain(lambda x, noise_labels: model.network([x, noise_labels], training=True))(
            ops.convert_to_tensor(data[:16]), ops.zeros((16,))
        )
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
        assert model.network in compiled._CALLERS  # and the step called it through torch.compile


def test_jit_compile_takes_the_modes_of_torch_compile(tmp_path):
    model = small_unet_model("reduce-overhead")
    # On torch the mode goes to torch.compile (CUDA graphs on a GPU); elsewhere it means XLA.
    assert model.jit_compile == ("reduce-overhead" if keras.backend.backend() == "torch" else True)
    # Saved as the mode on torch; elsewhere as True ("auto" where XLA is the backend's default).
    saved = model.get_compile_config()["jit_compile"]
    assert saved == "reduce-overhead" if keras.backend.backend() == "torch" else saved in (True, "auto")
    model.save(tmp_path / "model.keras")
    assert keras.models.load_model(tmp_path / "model.keras").jit_compile == model.jit_compile
    with pytest.raises(ValueError, match="max-autotune"):
        model.compile(optimizer=RAdam(1e-3), jit_compile="fastest")


def test_a_loaded_model_is_compiled_from_its_saved_config(tmp_path):
    model = toy_model()
    model.fit(mixture(16), batch_size=8, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    # Keras' compile_from_config skips a model whose compile is overridden: no optimizer, no state to resume.
    assert isinstance(loaded.optimizer, keras.optimizers.Adam) and int(loaded.optimizer.iterations) == 2
    for loaded_variable, variable in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(loaded_variable), ops.convert_to_numpy(variable))
    assert loaded.jit_compile == model.jit_compile


@pytest.mark.compiled_step
def test_keras_file_saved_on_jax_gives_the_same_samples_here(tmp_path):
    path, samples = str(tmp_path / "jax.keras"), str(tmp_path / "samples.npy")
    result = run_python(SAVE_ON_JAX.format(tests=os.path.dirname(__file__), path=path, samples=samples), "jax")
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.models.load_model(path)
    assert int(model.training_step) == 20
    if keras.backend.backend() == "torch":
        assert model.jit_compile is False  # XLA's "on" from JAX must not turn on torch.compile
    here = np.concatenate([model.sample(16, seed=5), model.sample(16, steps=2, seed=5, labels=np.arange(16) % 4)])
    np.testing.assert_allclose(here, np.load(samples), rtol=1e-4, atol=1e-5)


RESUMABLE_RUN = r"""
import json, os, sys
sys.path.insert(0, {tests!r})
import numpy as np
import keras
from keras import ops
from keras_lct import callbacks
from test_consistency import toy_model, mixture

KILL_AT = {kill_at}

def state(model):
    return dict(
        step=int(model.training_step), iterations=int(model.optimizer.iterations),
        num_scales=int(model.schedule.num_scales), c=float(model.schedule.robustness_c),
        ema=float(sum(np.abs(ops.convert_to_numpy(v)).sum() for v in model.ema.averages[0])),
        optimizer=float(sum(np.abs(ops.convert_to_numpy(v)).sum() for v in model.optimizer.variables)),
    )

class Probe(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        with open({begin!r}, "w") as f:
            json.dump(state(self.model), f)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.training_step)
        if step == KILL_AT:
            with open({killed!r}, "w") as f:
                json.dump(state(self.model), f)
            os._exit(17)  # the machine dies mid-epoch, right after a backup

model = toy_model()
model.fit(mixture(16 * 10), batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[
    callbacks.ExpCurriculum(40), callbacks.AdaptiveC(),
    keras.callbacks.BackupAndRestore({backup!r}, save_freq=5, delete_checkpoint=False),
    Probe(),
])
with open({end!r}, "w") as f:
    json.dump(state(model), f)
"""


@pytest.mark.compiled_step
def test_backup_and_restore_resumes_a_killed_run(tmp_path):
    import json

    files = {name: str(tmp_path / f"{name}.json") for name in ("begin", "killed", "end")}
    code = RESUMABLE_RUN.format(tests=os.path.dirname(__file__), backup=str(tmp_path / "backup"), **files, kill_at="{kill_at}")
    killed = run_python(code.format(kill_at=15))  # epoch 2 of 4, batch 5 of 10
    assert killed.returncode == 17, killed.stderr[-3000:]
    at_kill = json.load(open(files["killed"]))
    resumed = run_python(code.format(kill_at=-1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    at_resume = json.load(open(files["begin"]))
    for key in ("step", "iterations", "num_scales", "c"):
        assert at_resume[key] == at_kill[key], (key, at_resume, at_kill)
    for key in ("ema", "optimizer"):
        assert at_resume[key] == pytest.approx(at_kill[key], rel=1e-6), key
    at_end = json.load(open(files["end"]))
    # BackupAndRestore reruns the interrupted epoch 2 from its start, then 3 and 4.
    assert at_end["step"] == at_end["iterations"] == 15 + 3 * 10
    assert at_end["num_scales"] == 641


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: ConsistencyModel(MLPDenoiser(2), loss="huber"), "loss"),
        (lambda: ConsistencyModel(MLPDenoiser(2), diffusion_fraction=1.5), "diffusion_fraction"),
        (lambda: ConsistencyModel(MLPDenoiser(2), ema_decays=(1.2,)), "ema_decays"),
        (lambda: ConsistencyModel(MLPDenoiser(2), num_scales=1), "num_scales"),
        (lambda: ConsistencyModel(MLPDenoiser(2), c=-1.0), "`c`"),
        (lambda: ConsistencyModel("no-such-network").build((None, 8, 8, 4)), "no-such-network"),
        (lambda: ConsistencyModel(MLPDenoiser(2)).build((None, 3)), r"cannot take data of shape \(3,\)"),
        (lambda: ConsistencyModel(MLPDenoiser(2)).build((None,)), "rank >= 2"),
        (lambda: ConsistencyModel(MLPDenoiser(2)).sample(2), "Build the model"),
        (lambda: toy_model().sample(2, ts=[1.0, 2.0]), "strictly decreasing"),
        (lambda: toy_model().sample(2, ts=[100.0]), r"\[sigma_min, sigma_max\]"),
        (lambda: toy_model().sample(2, steps=3), "`steps`"),
        (lambda: toy_model().sample(2, ema=0.5), "No EMA with decay 0.5"),
        (lambda: callbacks.AdaptiveC("unknown"), "constants"),
        (lambda: callbacks.ExpCurriculum(0), "total_steps"),
    ],
)
def test_bad_configuration_raises_value_error(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_fit_builds_a_model_that_was_only_compiled():
    # As in Keras: no build call needed; fit builds the network, the optimizer and the EMA.
    # A learning rate of 0 keeps the weights, so the average must still equal them.
    model = ConsistencyModel(MLPDenoiser(2, width=8), ema_decays=(0.9,))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.fit(mixture(32), batch_size=16, epochs=1, verbose=0)
    assert int(model.training_step) == int(model.optimizer.iterations) == 2
    for average, weight in zip(model.ema.averages[0], model.network.trainable_variables):
        np.testing.assert_allclose(ops.convert_to_numpy(average), ops.convert_to_numpy(weight), rtol=1e-6)
    assert model.sample(4, seed=0).shape == (4, 2)


@pytest.mark.compiled_step
def test_a_built_model_traces_its_step_once():
    # tensorflow traces the step a second time when variables are created in the first trace:
    # fit builds the optimizer first, on every backend, so the step never creates one.
    model = toy_model()
    traces = []
    compute_loss = model.compute_loss
    model.compute_loss = lambda *args, **kwargs: traces.append(1) or compute_loss(*args, **kwargs)
    optimizer_built = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: traces.append(model.optimizer.built))
    model.fit(mixture(32), batch_size=16, epochs=1, verbose=0, callbacks=[optimizer_built])
    steps_traced = 2 if keras.backend.backend() == "torch" else 1  # torch runs each step eagerly
    assert traces == [True] + [1] * steps_traced


def test_nan_data_is_refused_before_training_starts():
    model = toy_model()
    data = mixture(64)
    data[37, 1] = np.nan
    with pytest.raises(ValueError, match="sample 37"):
        model.fit(data, batch_size=16, epochs=1, verbose=0)
    assert int(model.training_step) == 0


def test_callbacks_refuse_other_models():
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="ConsistencyModel"):
        plain.fit(mixture(8), mixture(8), verbose=0, callbacks=[callbacks.ExpCurriculum(10)])


def test_sample_grid_writes_pngs(tmp_path):
    model = ConsistencyModel(MLPDenoiser(12, width=16), ema_decays=())
    model.build((None, 12))
    model.compile(optimizer="adam")

    def as_images(samples):
        return samples.reshape(-1, 2, 2, 3)

    grid = callbacks.SampleGrid(str(tmp_path), every_epochs=2, num_samples=9, decode=as_images)
    model.fit(np.zeros((32, 12), "float32"), batch_size=16, epochs=4, verbose=0, callbacks=[grid])
    assert [os.path.basename(path) for path in grid.written] == ["samples_epoch_0002.png", "samples_epoch_0004.png"]
    from PIL import Image

    assert Image.open(grid.written[0]).size == (6, 6)


def test_trains_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = toy_model()
    assert model.network.compute_dtype == "bfloat16"
    history = model.fit(mixture(64), batch_size=16, epochs=2, verbose=0, callbacks=[callbacks.ExpCurriculum(8), callbacks.AdaptiveC()])
    assert all(np.isfinite(history.history["loss"]))
    assert all(v.dtype == "float32" for v in model.ema.averages[0])
    samples = model.sample(8, seed=0)
    assert samples.dtype == np.float32 and np.all(np.isfinite(samples))


def test_fit_keeps_paired_batches_on_fits_epochs():
    from keras_lct.data import NoisePairedDataset

    model = toy_model()
    batches = NoisePairedDataset(mixture(64), batch_size=16, seed=1)
    seen = []
    probe = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: seen.append(batches.epoch))
    model.fit(batches, epochs=7, initial_epoch=5, verbose=0, callbacks=[probe])
    assert seen == [5] * 4 + [6] * 4


@pytest.mark.compiled_step
def test_checkpoint_resume_continues_exactly(tmp_path):
    """Checkpoint at epoch 2, load, fit on: the same weights, EMA, N, c and optimizer state as one fit."""
    from keras_lct.data import NoisePairedDataset

    data = mixture(64)
    total_steps = 4 * 4

    def schedule():
        return [callbacks.ExpCurriculum(total_steps), callbacks.AdaptiveC()]

    keras.utils.set_random_seed(1)
    straight = toy_model()
    straight.fit(NoisePairedDataset(data, batch_size=16, seed=2), epochs=4, verbose=0, callbacks=schedule())

    keras.utils.set_random_seed(1)
    first = toy_model()
    path = str(tmp_path / "checkpoint.keras")
    checkpoint = callbacks.Checkpoint(path, every_epochs=3)  # epoch 2 saved by on_train_end
    first.fit(NoisePairedDataset(data, batch_size=16, seed=2), epochs=2, verbose=0, callbacks=schedule() + [checkpoint])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.keras"]
    resumed = keras.models.load_model(path)
    assert int(resumed.training_step) == 8
    resumed.fit(NoisePairedDataset(data, batch_size=16, seed=2), epochs=4, initial_epoch=2, verbose=0, callbacks=schedule())

    assert int(resumed.schedule.num_scales) == int(straight.schedule.num_scales) and int(resumed.optimizer.iterations) == 16
    assert float(resumed.schedule.robustness_c) == pytest.approx(float(straight.schedule.robustness_c))
    pairs = list(zip(resumed.weights, straight.weights)) + list(
        zip(resumed.optimizer.variables, straight.optimizer.variables)
    )
    for mine, reference in pairs:
        np.testing.assert_allclose(ops.convert_to_numpy(mine), ops.convert_to_numpy(reference), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must end in `.keras`"):
        callbacks.Checkpoint(str(tmp_path / "checkpoint.h5"))


def test_sample_grid_with_several_step_counts_and_a_final_epoch(tmp_path):
    model = ConsistencyModel(MLPDenoiser(12, width=16), ema_decays=())
    model.build((None, 12))
    model.compile(optimizer="adam")
    grid = callbacks.SampleGrid(
        str(tmp_path), every_epochs=2, num_samples=4, steps=(1, [80.0, 1.0, 0.1]), decode=lambda s: s.reshape(-1, 2, 2, 3)
    )
    model.fit(np.zeros((32, 12), "float32"), batch_size=16, epochs=3, verbose=0, callbacks=[grid])
    assert [os.path.basename(path) for path in grid.written] == [
        "samples_epoch_0002_1step.png",
        "samples_epoch_0002_3step.png",
        "samples_epoch_0003_1step.png",
        "samples_epoch_0003_3step.png",
    ]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
