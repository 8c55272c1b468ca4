"""Class-conditional ConsistencyModel: labels in the step, label dropout, sampling by label, refusals.

The conditional model's training and cross-backend files are tested in test_consistency.py
(`test_fit_learns_a_known_distribution_with_and_without_labels`, the `.keras` file saved on jax).
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lct.models import ConsistencyModel
from keras_lct.models import MLPDenoiser

NUM_CLASSES = 3


class LabelRecorder(MLPDenoiser):
    """A conditional MLP that keeps the class labels of every call (eager steps only)."""

    def call(self, inputs, training=None):
        if len(inputs) > 2 and not isinstance(inputs[2], keras.KerasTensor):
            self.seen.append(ops.convert_to_numpy(inputs[2]))
        return super().call(inputs, training=training)


def conditional_model(label_dropout=0.25, network=None, seed=0):
    network = network or MLPDenoiser(2, width=16, num_classes=NUM_CLASSES, label_dropout=label_dropout)
    model = ConsistencyModel(network, ema_decays=(0.9,), seed=seed)
    model.build((None, 2))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def test_label_dropout_is_one_draw_for_student_and_target_keyed_by_the_step():
    network = LabelRecorder(2, width=16, num_classes=NUM_CLASSES, label_dropout=0.25)
    network.seen = []
    model = conditional_model(network=network)
    batch = 2000
    x0 = np.zeros((batch, 2), "float32")
    labels = (np.arange(batch) % NUM_CLASSES).astype("int32")
    noise = np.random.default_rng(0).standard_normal((batch, 2)).astype("float32")
    model.compute_loss(x0, noise, None, labels, training=False)  # training=False: the step counter stays
    student, target = network.seen
    np.testing.assert_array_equal(student, target)
    dropped = student == NUM_CLASSES
    assert 0.22 < dropped.mean() < 0.28, dropped.mean()  # label_dropout = 0.25 of 2000 draws
    np.testing.assert_array_equal(student[~dropped], labels[~dropped])

    network.seen = []
    model.compute_loss(x0, noise, None, labels, training=False)  # the same step: the same draw
    np.testing.assert_array_equal(network.seen[0], student)
    model.training_step.assign(1)
    model.compute_loss(x0, noise, None, labels, training=False)
    assert not np.array_equal(network.seen[-1], student)


def test_without_label_dropout_the_labels_reach_the_network_unchanged():
    network = LabelRecorder(2, width=16, num_classes=NUM_CLASSES, label_dropout=0.0)
    network.seen = []
    model = conditional_model(network=network)
    labels = np.array([2, 0, 1, 1], "int32")
    model.compute_loss(np.zeros((4, 2), "float32"), None, None, labels)
    for seen in network.seen:
        np.testing.assert_array_equal(seen, labels)


def test_sampling_by_label_and_without():
    model = conditional_model()
    rng = np.random.default_rng(0)
    for weight in model.network.weights:  # the output layer starts at zero: every class would sample alike
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    by_label = model.sample(6, seed=1, labels=[0, 1, 2, 0, 1, 2], ema=False)
    same_noise_one_class = model.sample(6, seed=1, labels=1, ema=False)
    unconditional = model.sample(6, seed=1, ema=False)
    assert by_label.shape == same_noise_one_class.shape == unconditional.shape == (6, 2)
    np.testing.assert_allclose(by_label[[1, 4]], same_noise_one_class[[1, 4]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_label[[0, 2]], same_noise_one_class[[0, 2]], rtol=1e-3, atol=1e-3)
    assert not np.allclose(by_label, unconditional, rtol=1e-3, atol=1e-3)  # the null class has its own embedding


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing labels", "has no labels"),
        ("labels for an unconditional model", "unconditional"),
        ("float labels", "integers"),
        ("labels out of range", "out of range"),
        ("negative labels", "negative"),
        ("label count", "one label per sample"),
    ],
)
def test_fit_refuses_bad_labels_before_training(case, words):
    x0 = np.zeros((8, 2), "float32")
    labels = np.arange(8, dtype="int32") % NUM_CLASSES
    model = conditional_model()
    fit = {
        "missing labels": lambda: model.fit(x0, batch_size=4, verbose=0),
        "labels for an unconditional model": lambda: conditional_model(
            network=MLPDenoiser(2, width=16)).fit(x0, labels, batch_size=4, verbose=0),
        "float labels": lambda: model.fit(x0, labels.astype("float32"), batch_size=4, verbose=0),
        "labels out of range": lambda: model.fit(x0, labels + 1, batch_size=4, verbose=0),
        "negative labels": lambda: model.fit(x0, labels - 1, batch_size=4, verbose=0),
        "label count": lambda: model.fit(x0, labels[:6], batch_size=4, verbose=0),
    }[case]
    with pytest.raises(ValueError, match=words):
        fit()
    assert int(model.training_step) == 0


@pytest.mark.parametrize(
    "dropout, labels, words",
    [
        (0.25, 3, "out of range"),
        (0.25, [0, 1], "2 labels for 3 samples"),
        (0.25, [0.0, 1.0, 2.0], "integers"),
        (0.0, None, "no unconditional mode"),
    ],
)
def test_sample_refuses_bad_labels(dropout, labels, words):
    with pytest.raises(ValueError, match=words):
        conditional_model(label_dropout=dropout).sample(3, labels=labels)


def test_an_unconditional_model_refuses_sampling_labels():
    with pytest.raises(ValueError, match="unconditional"):
        conditional_model(network=MLPDenoiser(2, width=16)).sample(3, labels=1)
