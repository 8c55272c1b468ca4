"""EDM diffusion training and ECT: their terms against NumPy, the stages, shared dropout, Heun
sampling, learning, saving, and starting a consistency model from a diffusion model.

Both objectives are tested against the official code in test_ect_golden.py.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_lct
from keras_lct import objectives
from keras_lct.models import ConsistencyModel
from keras_lct.models import MLPDenoiser
from keras_lct.models import UNet
from keras_lct.objectives import ECT
from keras_lct.objectives import EDMDiffusion
from test_consistency import distance_to_modes
from test_consistency import labelled_mixture
from test_consistency import mixture
from test_objectives import numpy_of
from test_objectives import randomized


def toy(objective, num_classes=0, label_dropout=0.0, ema_decays=(0.9,), learning_rate=3e-3):
    network = MLPDenoiser(2, width=64, num_classes=num_classes, label_dropout=label_dropout)
    model = ConsistencyModel(network, objective=objective, ema_decays=ema_decays)
    model.build((None, 2))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return model


def preconditioned(model, x, sigma, labels=None):
    """EDM's D(x, sigma) in NumPy around the network: c_skip x + c_out F(c_in x, 250 ln sigma)."""
    sigma = sigma.astype(np.float64)
    data_variance = model.sigma_data**2
    c_skip = data_variance / (sigma**2 + data_variance)
    c_out = sigma * model.sigma_data / np.sqrt(sigma**2 + data_variance)
    c_in = 1 / np.sqrt(sigma**2 + data_variance)
    inputs = [(c_in[:, None] * x).astype("float32"), (250 * np.log(sigma)).astype("float32")]
    if labels is not None:
        inputs.append(labels.astype("int32"))
    network_output = ops.convert_to_numpy(model.network(inputs)).astype(np.float64)
    return c_skip[:, None] * x + c_out[:, None] * network_output


def test_edm_loss_is_the_weighted_squared_error_of_the_preconditioned_denoiser():
    model = randomized(toy(EDMDiffusion(), num_classes=4))
    rng = np.random.default_rng(0)
    clean, labels = labelled_mixture(8)
    noise = rng.standard_normal((8, 2)).astype("float32")
    sigma = np.exp(rng.normal(-1.2, 1.2, 8)).astype("float32")
    terms = numpy_of(model.objective.loss_terms(model, model.network, clean, noise, sigma, labels))
    denoised = preconditioned(model, clean + sigma[:, None] * noise, sigma, labels)
    per_sample = (1 / sigma.astype(np.float64) ** 2 + 1 / 0.25) * np.sum((denoised - clean) ** 2, axis=1)
    np.testing.assert_allclose(terms["denoised"], denoised, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["per_sample_loss"], per_sample, rtol=1e-5)
    assert terms["loss"] == pytest.approx(per_sample.mean(), rel=1e-5)
    # The model's call is that denoiser (no boundary condition: c_skip(sigma_min) < 1).
    noisy = clean + sigma[:, None] * noise
    np.testing.assert_allclose(ops.convert_to_numpy(model([noisy, sigma, labels])), denoised, rtol=1e-5, atol=1e-6)


def test_edm_heun_sampler_follows_the_probability_flow_of_gaussian_data_to_second_order():
    # For data N(0, s^2) the ideal denoiser is D(x, sigma) = s^2 / (s^2 + sigma^2) x and the
    # probability-flow ODE carries x(sigma_max) to x(sigma_max) s / sqrt(s^2 + sigma_max^2).
    model = toy(EDMDiffusion())
    spread, calls = 0.5, []

    def ideal_denoiser(inputs):
        calls.append(1)
        x, sigma = inputs
        return spread**2 / (spread**2 + sigma[:, None] ** 2) * x

    noise = np.random.default_rng(0).standard_normal((64, 2), dtype=np.float32)
    exact = noise * model.sigma_max * spread / np.sqrt(spread**2 + model.sigma_max**2)
    errors = {}
    for steps in (40, 80):
        levels = model.objective.sampling_levels(model, steps, None)
        assert len(levels) == steps and levels[0] == pytest.approx(model.sigma_max) and levels[-1] == pytest.approx(model.sigma_min)
        calls.clear()
        samples = model.objective.sample(model, levels, np.random.default_rng(0), (64, 2), ideal_denoiser)
        assert len(calls) == 2 * steps - 1
        errors[steps] = np.max(np.abs(samples / exact - 1))
    assert errors[80] < 5e-3 and errors[40] / errors[80] > 3.5  # Heun: second order (Euler's ratio is 2)
    one_step = model.objective.sample(model, [model.sigma_max], np.random.default_rng(0), (4, 2), ideal_denoiser)
    np.testing.assert_allclose(one_step, ideal_denoiser([noise[:4] * model.sigma_max, np.full(4, model.sigma_max)]), rtol=1e-4)


@pytest.mark.compiled_step
def test_edm_training_learns_the_mixture_and_round_trips_through_keras_files(tmp_path):
    model = toy(EDMDiffusion(), ema_decays=(0.95,))
    untrained = distance_to_modes(model.sample(256, steps=8, seed=0))
    history = model.fit(mixture(4096), batch_size=128, epochs=16, verbose=0)
    assert set(history.history) >= {"diffusion_loss"}
    assert distance_to_modes(model.sample(256, steps=8, seed=0)) < 0.5 * untrained
    path = str(tmp_path / "diffusion.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.objective, EDMDiffusion) and loaded.objective.get_config() == model.objective.get_config()
    np.testing.assert_allclose(loaded.sample(16, steps=2, seed=3), model.sample(16, steps=2, seed=3), rtol=1e-4, atol=1e-5)


def test_the_lognormal_draws_follow_the_step_and_the_distribution():
    model = toy(ECT())
    clean = ops.convert_to_tensor(mixture(4096))
    draws = [objectives.lognormal_draws(model, clean, None, ops.convert_to_tensor(step, "int32"), -1.1, 2.0) for step in (0, 1, 0)]
    noise, t = (ops.convert_to_numpy(value) for value in draws[0])
    assert abs(np.log(t).mean() + 1.1) < 0.1 and abs(np.log(t).std() - 2.0) < 0.1
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    np.testing.assert_array_equal(t, ops.convert_to_numpy(draws[2][1]))  # from (seed, step) only
    assert not np.allclose(t, ops.convert_to_numpy(draws[1][1]))


@pytest.mark.parametrize("mapping", ["sigmoid", "constant"])
def test_ect_maps_t_to_r_by_stage(mapping):
    objective = ECT(mapping=mapping, q=2.0, k=8.0, b=1.0)
    t = np.array([0.002, 0.05, 0.3, 1.0, 5.0, 80.0], "float32")
    for stage in (0, 1, 4):
        decay = 0.5 ** (stage + 1) * ((1 + 8 / (1 + np.exp(t.astype(np.float64)))) if mapping == "sigmoid" else 1.0)
        expected = np.maximum(t * (1 - decay), 0)
        np.testing.assert_allclose(ops.convert_to_numpy(objective.interval_end(t, stage)), expected, rtol=1e-6, atol=1e-7)
    assert mapping == "constant" or np.all(ops.convert_to_numpy(objective.interval_end(t[:2], 0)) == 0)
    steps = ops.convert_to_tensor(np.array([0, 999, 1000, 4500], "int32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(ECT(stage_steps=1000).stage_at(steps)), [0, 0, 1, 4])


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(weighting="edm", c=0.06), dict(distance="cauchy", c=0.3)],
    ids=["main", "imgnet-weighting", "cauchy"],
)
def test_ect_loss_against_numpy(settings):
    model = randomized(toy(ECT(**settings), num_classes=4))
    rng = np.random.default_rng(1)
    clean, labels = labelled_mixture(8, seed=1)
    noise = rng.standard_normal((8, 2)).astype("float32")
    t = np.array([0.01, 0.02, 0.1, 0.5, 1.0, 3.0, 10.0, 60.0], "float32")
    stage = 1
    terms = numpy_of(model.objective.loss_terms(model, model.network, clean, noise, t, stage, labels, c=settings.get("c")))
    r = np.maximum(t * (1 - 0.25 * (1 + 8 / (1 + np.exp(t.astype(np.float64))))), 0)
    np.testing.assert_allclose(terms["r"], r, rtol=1e-5, atol=1e-7)
    assert np.any(r == 0) and np.any(r > 0)
    student = preconditioned(model, clean + t[:, None] * noise, t, labels)
    positive = r > 0
    target = np.array(clean, np.float64)
    target[positive] = preconditioned(model, (clean + r[:, None] * noise)[positive], r[positive], labels[positive])
    np.testing.assert_allclose(terms["student"], student, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["target"], target, rtol=1e-5, atol=1e-6)  # r = 0: the data itself
    squared = np.sum((student - target) ** 2, axis=1)
    if settings.get("distance") == "cauchy":
        distance = np.log1p(squared / 2 / (2 * 0.3**2))  # the mean over the 2 features
    else:
        c = settings.get("c", 0.0)
        distance = np.sqrt(squared + c**2) - c  # c = 0: the L2 norm, not its square
    weight = (t**2 + 0.25) / (t**2 * 0.25) if settings.get("weighting") == "edm" else 1 / (t - r)
    np.testing.assert_allclose(terms["distance"], distance, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(terms["per_sample_loss"], distance * weight, rtol=1e-5, atol=1e-7)
    assert terms["loss"] == pytest.approx(np.mean(distance * weight), rel=1e-5)


@keras.saving.register_keras_serializable(package="keras_lct_tests")
class DropoutDenoiser(keras.layers.Layer):
    """A small denoiser with the library's Dropout between two dense layers, for the shared-mask test."""

    def __init__(self, rate=0.5, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def build(self, input_shape):
        self.hidden = keras.layers.Dense(64, name="hidden")
        self.hidden.build((None, input_shape[0][-1] + 1))
        self.dropout = keras_lct.layers.Dropout(self.rate, name="dropout")
        self.output_layer = keras.layers.Dense(input_shape[0][-1], name="output")
        self.output_layer.build((None, 64))

    def call(self, inputs, training=False):
        x, noise_labels = inputs[:2]
        features = ops.concatenate([x, ops.expand_dims(noise_labels, -1) / 250.0], axis=-1)
        return self.output_layer(self.dropout(ops.tanh(self.hidden(features)), training=training))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


def dropout_model():
    model = ConsistencyModel(DropoutDenoiser(), objective=ECT(stage_steps=1, mapping="constant", weighting="edm"),
                             ema_decays=())
    model.build((None, 2))
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    return model


@pytest.mark.compiled_step
def test_ect_target_reuses_the_students_dropout_masks_in_fit():
    model = dropout_model()
    x = mixture(64, seed=3)
    inputs = [x, np.zeros(64, "float32")]
    replay = model.dropout_replay()
    first = ops.convert_to_numpy(model.network(inputs, training=True))
    replay()
    np.testing.assert_array_equal(ops.convert_to_numpy(model.network(inputs, training=True)), first)
    assert np.abs(ops.convert_to_numpy(model.network(inputs, training=True)) - first).max() > 0.01
    # At stage 20 r is within 1e-6 of t: with the same masks student and target nearly agree. The
    # same model (seed, step 20: the same draws) with fresh masks, in one eager loss, for scale.
    fresh_masks = dropout_model()
    fresh_masks.set_weights(model.get_weights())
    fresh_masks.dropout_replay = lambda: (lambda: None)
    for each in (model, fresh_masks):
        each.training_step.assign(20)
    fresh = float(ops.convert_to_numpy(fresh_masks.compute_loss(x=ops.convert_to_tensor(x))))
    history = model.fit(x, batch_size=64, epochs=1, verbose=0)
    assert history.history["stage"][-1] == 20
    assert 0 < history.history["ect_loss"][-1] < 1e-3 * fresh


def test_ect_stage_follows_the_step_counter_and_trains_with_paired_noise_and_cauchy():
    from keras_lct.data import NoisePairedDataset

    model = toy(ECT(stage_steps=3, distance="cauchy"), num_classes=4, label_dropout=0.1)
    clean, labels = labelled_mixture(128)
    history = model.fit(NoisePairedDataset(clean, batch_size=32, labels=labels, seed=0), epochs=2, verbose=0)
    assert int(model.training_step) == 8
    assert history.history["stage"] == [1, 2]  # the stage of the epoch's last step: 3 // 3, 7 // 3
    assert set(history.history) >= {"ect_loss", "c"}
    assert all(np.isfinite(value) for values in history.history.values() for value in values)


@pytest.fixture(scope="module")
def diffusion_model(tmp_path_factory):
    """A class-conditional EDM diffusion model on the mixture, saved; its online and EMA weights differ."""
    model = toy(EDMDiffusion(), num_classes=4, label_dropout=0.1, ema_decays=(0.9,))
    clean, labels = labelled_mixture(512)
    model.fit(clean, labels, batch_size=128, epochs=2, verbose=0)
    path = str(tmp_path_factory.mktemp("diffusion") / "diffusion.keras")
    model.save(path)
    return model, path


def test_from_diffusion_copies_the_ema_weights_into_the_network_and_every_ema(diffusion_model):
    diffusion, path = diffusion_model
    model = ConsistencyModel.from_diffusion(path, objective="ect", ema_decays=(0.99, 0.999), network_settings={"label_dropout": 0.2})
    assert isinstance(model.objective, ECT) and model.network.label_dropout == 0.2 and int(model.training_step) == 0
    expected = [ops.convert_to_numpy(average) for average in diffusion.ema.averages[0]]
    assert not np.allclose(expected[0], ops.convert_to_numpy(diffusion.network.trainable_variables[0]))
    for index, values in enumerate(expected):
        np.testing.assert_array_equal(ops.convert_to_numpy(model.network.trainable_variables[index]), values)
        for averages in model.ema.averages:
            np.testing.assert_array_equal(ops.convert_to_numpy(averages[index]), values)
    online = ConsistencyModel.from_diffusion(diffusion, objective="ect_imgnet", ema=False)
    assert online.objective.q == 4.0 and online.objective.weighting == "edm"
    for variable, source in zip(online.network.trainable_variables, diffusion.network.trainable_variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), ops.convert_to_numpy(source))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    clean, labels = labelled_mixture(64)
    model.fit(clean, labels, batch_size=32, epochs=1, verbose=0)
    assert np.all(np.isfinite(model.sample(8, steps=2, seed=0, labels=np.arange(8) % 4)))


@pytest.mark.parametrize(
    "network, data_dim, words",
    [
        (lambda: MLPDenoiser(2, width=32, num_classes=4), 2, "network setting width=32"),
        (lambda: MLPDenoiser(2, width=64), 2, "0 classes, the diffusion model's 4"),
        (lambda: MLPDenoiser(3, width=64, num_classes=4), 3, r"data of shape \(3,\)"),
        (lambda: UNet.from_preset("smoke", img_resolution=8, in_channels=2, out_channels=2), None, "a UNet network"),
    ],
    ids=["architecture", "labels", "shape", "family"],
)
def test_a_diffusion_model_that_does_not_fit_is_refused_and_nothing_changes(diffusion_model, network, data_dim, words):
    _, path = diffusion_model
    model = ConsistencyModel(network(), objective="ect")
    model.build((None, data_dim) if data_dim else (None, 8, 8, 2))
    before = [ops.convert_to_numpy(variable) for variable in model.weights]
    with pytest.raises(ValueError, match=words):
        model.initialize_from(path)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), value)


def test_only_a_trained_edm_model_is_a_diffusion_model(tmp_path):
    with pytest.raises(ValueError, match="No diffusion model at"):
        ConsistencyModel.from_diffusion(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match="the 'consistency' objective"):
        ConsistencyModel.from_diffusion(toy("consistency"))
    with pytest.raises(ValueError, match="not built"):
        ConsistencyModel.from_diffusion(ConsistencyModel(MLPDenoiser(2), objective="edm"))
    with pytest.raises(ValueError, match="network_settings"):
        ConsistencyModel.from_diffusion(toy("edm"), network_settings={"width": 8})


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: ECT(q=1.0), "q"),
        (lambda: ECT(mapping="linear"), "mapping"),
        (lambda: ECT(weighting="snr"), "weighting"),
        (lambda: ECT(distance="cauchy", c=0.0), "c"),
        (lambda: ECT(c=-1.0), "c"),
        (lambda: ECT(stage_steps=0), "stage_steps"),
        (lambda: ECT.from_branch("amp"), "branch"),
        (lambda: EDMDiffusion(p_std=0.0), "p_std"),
        (lambda: toy("edm").sample(2, ts=[10.0, 100.0]), r"\(0, sigma_max\]"),
        (lambda: toy("edm").sample(2, ts=[1.0, 2.0]), "decreasing"),
    ],
)
def test_bad_settings_raise_value_error(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_edm_and_ect_serialize_by_name_and_config():
    for objective in (EDMDiffusion(p_mean=-1.0), ECT(q=4.0, mapping="constant", distance="cauchy", c=0.1)):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(objective))
        assert type(restored) is type(objective) and restored.get_config() == objective.get_config()
    imgnet = objectives.get("ect_imgnet")
    assert (imgnet.q, imgnet.c, imgnet.weighting) == (4.0, 0.06, "edm")
    assert objectives.get("ect").get_config() == ECT().get_config()
    assert isinstance(objectives.get("edm"), EDMDiffusion)
