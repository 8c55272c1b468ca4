"""Training objectives: MeanFlow's draws, target, distances, guidance, fit, sampling and saving.

The paper's consistency objective is tested in test_consistency.py (against an
independent computation) and against the authors' code (test_scale_out.py,
bench/); MeanFlow against the official code in test_meanflow_golden.py.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct import objectives
from keras_lct.data import NoisePairedDataset
from keras_lct.models import ConsistencyModel
from keras_lct.models import MLPDenoiser
from keras_lct.models import UNet
from keras_lct.objectives import MeanFlow
from test_consistency import distance_to_modes
from test_consistency import labelled_mixture
from test_consistency import mixture


def meanflow_model(num_classes=0, label_dropout=0.0, width=64, **objective_settings):
    network = MLPDenoiser(
        2, width=width, num_classes=num_classes, label_dropout=label_dropout, interval_embedding=True
    )
    model = ConsistencyModel(network, objective=MeanFlow(**objective_settings), ema_decays=(0.9,))
    model.build((None, 2))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


def randomized(model, seed=0):
    """`model` with every network weight redrawn, so that u is not the zero of its output layer's init."""
    rng = np.random.default_rng(seed)
    for variable in model.network.trainable_variables:
        variable.assign(0.3 * rng.standard_normal(variable.shape).astype("float32"))
    return model


def numpy_of(terms):
    return {key: ops.convert_to_numpy(value).astype(np.float64) for key, value in terms.items()}


def test_meanflow_draws_order_the_times_and_set_r_to_t_for_the_data_proportion():
    model = meanflow_model(data_proportion=0.75)
    clean = ops.convert_to_tensor(mixture(2048))
    draws = [model.objective.draws(model, clean, None, ops.convert_to_tensor(step, "int32")) for step in (0, 1, 0)]
    noise, t, r = (ops.convert_to_numpy(value) for value in draws[0])
    assert np.all((0 < r) & (r <= t) & (t < 1))
    assert abs(np.mean(r == t) - 0.75) < 0.04
    # t = max of two sigmoid(-0.4 + n) draws: its logit's mean is above -0.4, r's below.
    logit = lambda p: np.log(p / (1 - p))
    assert logit(t).mean() > -0.1 and logit(r[r < t]).mean() < -0.7
    assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1
    np.testing.assert_array_equal(t, ops.convert_to_numpy(draws[2][1]))
    assert not np.allclose(t, ops.convert_to_numpy(draws[1][1]))


def test_meanflow_target_is_the_velocity_less_the_interval_times_du_dt_by_central_differences():
    model = randomized(meanflow_model())
    objective = model.objective
    rng = np.random.default_rng(1)
    clean, noise = mixture(16, seed=1), rng.standard_normal((16, 2)).astype("float32")
    t = rng.uniform(0.3, 0.9, 16).astype("float32")
    r = np.where(np.arange(16) % 2 == 0, t, t * rng.uniform(0.1, 0.9, 16)).astype("float32")
    terms = numpy_of(objective.loss_terms(model.network, clean, noise, t, r))
    velocity = noise.astype(np.float64) - clean

    def u(shift):
        z = (1 - (t + shift)) * clean.T + (t + shift) * noise.T  # z moves with t at dz/dt = v
        inputs = [z.T.astype("float32"), t + shift, t + shift - r]
        return ops.convert_to_numpy(model.network([np.asarray(v, "float32") for v in inputs])).astype(np.float64)

    step = 1e-3
    central = (u(step) - u(-step)) / (2 * step)
    np.testing.assert_allclose(terms["du_dt"], central, rtol=2e-2, atol=2e-2 * np.abs(central).max())
    np.testing.assert_allclose(terms["guided_velocity"], velocity, rtol=1e-6)  # unconditional: v_g = v
    expected_target = velocity - (t - r)[:, None] * terms["du_dt"]
    np.testing.assert_allclose(terms["target"], expected_target, rtol=1e-5, atol=1e-6)
    distance = np.sum((terms["u"] - terms["target"]) ** 2, axis=1)
    np.testing.assert_allclose(terms["distance"], distance, rtol=1e-5)
    assert terms["loss"] == pytest.approx(np.mean(distance / (distance + 0.01)), rel=1e-5)


def test_a_separate_jvp_network_gives_the_same_terms_and_gradient():
    # Under torchrun the differentiated call goes through DDP, which cannot run inside a JVP: u then
    # comes from a plain call and du/dt from a JVP through the bare network.
    from test_backend_ops import value_and_gradients

    model = randomized(meanflow_model(num_classes=4, label_dropout=0.25))
    rng = np.random.default_rng(5)
    clean, labels = labelled_mixture(8, seed=5)
    noise = rng.standard_normal((8, 2)).astype("float32")
    t, r = rng.uniform(0.5, 0.9, 8).astype("float32"), rng.uniform(0.0, 0.4, 8).astype("float32")
    batch = [ops.convert_to_tensor(value) for value in (clean, noise, t, r, labels)]

    def terms(jvp_network):
        return model.objective.loss_terms(model.network, *batch, jvp_network=jvp_network)

    fused, separate = numpy_of(terms(None)), numpy_of(terms(model.network))
    for name in ("u", "du_dt", "target", "loss"):
        np.testing.assert_allclose(separate[name], fused[name], rtol=1e-5, atol=1e-6, err_msg=name)
    variables = model.network.trainable_variables
    (_, fused_gradients), (_, separate_gradients) = (
        value_and_gradients(lambda: terms(jvp_network)["loss"], variables) for jvp_network in (None, model.network))
    for a, b in zip(separate_gradients, fused_gradients):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("distance", ["cauchy", "pseudo_huber"])
def test_meanflow_takes_the_papers_robust_distances_with_c(distance):
    model = randomized(meanflow_model(distance=distance, c=0.3, norm_p=0.0))
    rng = np.random.default_rng(2)
    clean, noise = mixture(8, seed=2), rng.standard_normal((8, 2)).astype("float32")
    t, r = np.full(8, 0.8, "float32"), np.full(8, 0.2, "float32")
    terms = numpy_of(model.objective.loss_terms(model.network, clean, noise, t, r, c=0.3))
    m = np.mean((terms["u"] - terms["target"]) ** 2, axis=1)
    expected = np.log1p(m / (2 * 0.09)) if distance == "cauchy" else np.sqrt(m + 0.09) - 0.3
    np.testing.assert_allclose(terms["distance"], expected, rtol=1e-5)
    assert terms["loss"] == pytest.approx(expected.mean(), rel=1e-5)  # norm_p = 0: no weighting


def test_meanflow_guidance_mixes_the_conditional_and_unconditional_velocities():
    model = randomized(meanflow_model(num_classes=4, label_dropout=0.25, omega=2.0, kappa=0.5, t_end=0.7))
    rng = np.random.default_rng(3)
    clean, labels = labelled_mixture(8, seed=3)
    noise = rng.standard_normal((8, 2)).astype("float32")
    t = np.array([0.2, 0.5, 0.6, 0.9, 0.3, 0.8, 0.4, 0.65], "float32")
    r = 0.5 * t
    dropped = np.array([False, False, True, False, False, False, True, False])
    inputs = np.where(dropped, 4, labels).astype("int32")
    terms = numpy_of(model.objective.loss_terms(model.network, clean, noise, t, r, inputs, dropped))

    z = ((1 - t)[:, None] * clean + t[:, None] * noise).astype("float32")

    def v(class_labels):  # u at r = t: the instantaneous velocity
        return ops.convert_to_numpy(model.network([z, t, 0.0 * t, class_labels.astype("int32")])).astype(np.float64)

    velocity = noise.astype(np.float64) - clean
    unconditional, conditional = v(np.full(8, 4)), v(labels)
    in_window = (t <= 0.7)[:, None]
    guided = np.where(in_window, 2.0 * velocity + (1 - 2.0 - 0.5) * unconditional + 0.5 * conditional, velocity)
    expected = np.where(dropped[:, None], velocity, guided)
    np.testing.assert_allclose(terms["guided_velocity"], expected, rtol=1e-5, atol=1e-6)


def test_meanflow_uses_paired_noise_and_trains_with_labels_and_the_cauchy_distance():
    # OT pairing: a NoisePairedDataset's (x0, z, y) batches; the loss uses the given z.
    model = meanflow_model(num_classes=4, label_dropout=0.1, distance="cauchy")
    clean, labels = labelled_mixture(64)
    batches = NoisePairedDataset(clean, batch_size=32, labels=labels, seed=0)
    history = model.fit(batches, epochs=2, verbose=0)
    assert int(model.training_step) == 4
    assert set(history.history) >= {"meanflow_loss", "velocity_loss", "c"}
    assert all(np.isfinite(value) for values in history.history.values() for value in values)
    x0, z, y = batches[0]
    step = ops.convert_to_tensor(model.training_step)
    noise, _, _ = model.objective.draws(model, ops.convert_to_tensor(x0), ops.convert_to_tensor(z), step)
    np.testing.assert_array_equal(ops.convert_to_numpy(noise), z)
    samples = model.sample(8, steps=2, seed=0, labels=np.arange(8) % 4)
    assert samples.shape == (8, 2) and np.all(np.isfinite(samples))


@pytest.mark.compiled_step
def test_meanflow_learns_a_known_distribution_in_one_step_and_round_trips_through_keras_files(tmp_path):
    model = meanflow_model(kappa=0.0)
    untrained = distance_to_modes(model.sample(256, seed=0, ema=False))
    model.fit(mixture(4096), batch_size=128, epochs=6, verbose=0)
    one_step, two_steps = (model.sample(256, steps=steps, seed=0, ema=False) for steps in (1, 2))
    assert distance_to_modes(one_step) < 0.5 * untrained
    assert distance_to_modes(two_steps) < 0.5 * untrained
    path = str(tmp_path / "meanflow.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.objective, MeanFlow) and loaded.objective.get_config() == model.objective.get_config()
    np.testing.assert_allclose(loaded.sample(16, steps=2, seed=3), model.sample(16, steps=2, seed=3), rtol=1e-5, atol=1e-6)


def test_the_models_call_takes_the_objectives_inputs():
    model = randomized(meanflow_model(time_scale=2.0))
    z = np.random.default_rng(4).standard_normal((4, 2)).astype("float32")
    t, r = np.full(4, 0.7, "float32"), np.full(4, 0.3, "float32")
    u = ops.convert_to_numpy(model.network([z, 2.0 * t, 2.0 * (t - r)]))
    np.testing.assert_allclose(ops.convert_to_numpy(model([z, t, r])), z - 0.4 * u, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[z_t, t, r\]"):
        model([z, t])


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: ConsistencyModel(MLPDenoiser(2), objective="meanflow").build((None, 2)), "interval_embedding=True"),
        (lambda: ConsistencyModel(UNet.from_preset("tiny"), objective="flow"), "objective"),
        (lambda: MeanFlow(data_proportion=1.5), "data_proportion"),
        (lambda: MeanFlow(distance="huber"), "distance"),
        (lambda: MeanFlow(two_step_time=1.0), "two_step_time"),
        (lambda: MeanFlow(t_start=0.8, t_end=0.2), "t_start"),
        (lambda: meanflow_model().sample(2, ts=[1.0, 1.5]), r"\(0, 1\]"),
        (lambda: meanflow_model().sample(2, steps=3), "steps"),
    ],
)
def test_bad_objective_settings_raise_value_error(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_objectives_serialize_by_name_and_config():
    for objective in (objectives.ConsistencyTraining(loss="pseudo_huber"), MeanFlow(omega=1.5, distance="cauchy", c=0.1)):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(objective))
        assert type(restored) is type(objective) and restored.get_config() == objective.get_config()
    assert isinstance(objectives.get("meanflow"), MeanFlow)
    default = ConsistencyModel(MLPDenoiser(2), loss="l2").get_config()
    assert default["loss"] == "l2" and "objective" not in default  # the default objective's config is as before
