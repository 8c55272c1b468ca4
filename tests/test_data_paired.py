"""`keras_lct.data.NoisePairedDataset`: (x0, OT-paired noise) batches for fit."""

import keras
import numpy as np
import pytest
from ot_costs import optimal_pairing_cost
from ot_costs import pairing_cost

from keras_lct import coupling
from keras_lct.data import paired as paired_data
from keras_lct.data import NoisePairedDataset


class Batches(keras.utils.PyDataset):
    """A PyDataset source yielding batches of 8 samples, as `x` or `(x, labels)`."""

    def __init__(self, data, labels=False):
        super().__init__()
        self.data, self.labels = data, labels
        self.epochs_ended = 0

    def __len__(self):
        return len(self.data) // 8

    def __getitem__(self, index):
        x = self.data[index * 8 : (index + 1) * 8]
        return (x, np.zeros(len(x))) if self.labels else x

    def on_epoch_end(self):
        self.epochs_ended += 1


def tf_batches(data, batch_size=8):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)


def test_grouped_pairing_of_a_dataset():
    rng = np.random.default_rng(8)
    x0 = rng.normal(size=(8, 3)).astype("float32") + 2.0
    batches = NoisePairedDataset(x0, batch_size=8, shuffle=False, ot_group_size=4)
    expected = coupling.pair_noise(x0, paired_data._batch_noise((8, 3), 0, 0, 0), group_size=4)
    np.testing.assert_array_equal(batches[0][1], expected)


def test_array_source_noise_is_reproducible_fresh_and_standard_normal():
    data = np.random.default_rng(1).normal(size=(64, 16)).astype("float32")
    batches = NoisePairedDataset(data, batch_size=16, seed=3)
    assert len(batches) == 4 and batches.num_batches == 4
    epoch0 = [batches[i] for i in range(4)]
    x_first, z_first = epoch0[0]
    assert x_first.shape == z_first.shape == (16, 16) and z_first.dtype == np.float32
    assert not np.allclose(np.sort(z_first, 0), np.sort(epoch0[1][1], 0))
    # Same (seed, epoch, index): same batch, whatever the access order.
    np.testing.assert_array_equal(batches[0][1], z_first)
    again = NoisePairedDataset(data, batch_size=16, seed=3)
    np.testing.assert_array_equal(again[0][1], z_first)
    other_seed = NoisePairedDataset(data, batch_size=16, seed=4)
    assert not np.allclose(np.sort(other_seed[0][1], 0), np.sort(z_first, 0))
    # Every epoch covers each sample once, in a new order, with new noise.
    batches.on_epoch_end()
    assert batches.epoch == 1
    epoch1 = [batches[i] for i in range(4)]
    for epoch in (epoch0, epoch1):
        seen = np.concatenate([x for x, _ in epoch])
        np.testing.assert_array_equal(np.sort(seen, axis=0), np.sort(data, axis=0))
    assert not np.array_equal(epoch1[0][0], x_first)
    assert not np.allclose(np.sort(epoch1[0][1], 0), np.sort(z_first, 0))
    # A run resumed at epoch 1 draws the same order and noise.
    resumed = NoisePairedDataset(data, batch_size=16, seed=3)
    resumed.epoch = 1
    for index in range(4):
        np.testing.assert_array_equal(resumed[index][0], epoch1[index][0])
        np.testing.assert_array_equal(resumed[index][1], epoch1[index][1])
    noise = np.concatenate([z for _, z in epoch0 + epoch1])
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    assert abs(np.mean(noise**3)) < 0.15 and abs(np.mean(noise**4) - 3.0) < 0.3


def test_ot_off_gives_the_same_noise_unpermuted():
    data = np.random.default_rng(2).normal(size=(32, 5)).astype("float32") + 1.0
    kwargs = dict(batch_size=32, seed=4, shuffle=False)
    x_ot, z_ot = NoisePairedDataset(data, ot=True, **kwargs)[0]
    x_plain, z_plain = NoisePairedDataset(data, ot=False, **kwargs)[0]
    np.testing.assert_array_equal(x_ot, x_plain)
    np.testing.assert_array_equal(z_plain, paired_data._batch_noise((32, 5), 4, 0, 0))
    # Same multiset of noise rows, OT-ordered: the optimal pairing.
    perm = coupling.ot_permutation(x_plain, z_plain)
    np.testing.assert_array_equal(z_ot, z_plain[perm])
    assert not np.array_equal(perm, np.arange(32))
    optimum = optimal_pairing_cost(x_plain, z_plain)
    assert pairing_cost(x_ot, z_ot) == pytest.approx(optimum, rel=1e-6)
    assert pairing_cost(x_ot, z_ot) < pairing_cost(x_plain, z_plain)


def test_array_batches_keep_a_remainder_on_request():
    data = np.arange(20, dtype="float32").reshape(10, 2)
    assert len(NoisePairedDataset(data, batch_size=4)) == 2
    batches = NoisePairedDataset(data, batch_size=4, drop_remainder=False, shuffle=False)
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[2][0], data[8:])
    with pytest.raises(ValueError, match="integer dtype int32"):
        NoisePairedDataset(np.ones((4, 2), "int32"), batch_size=2)


def test_py_dataset_source():
    data = np.random.default_rng(3).normal(size=(32, 2, 2, 1)).astype("float32")
    for source in (Batches(data), Batches(data, labels=True)):
        paired = NoisePairedDataset(source, seed=0)
        assert len(paired) == 4
        x0, z = paired[2]
        np.testing.assert_array_equal(x0, data[16:24])
        assert z.shape == x0.shape and z.dtype == np.float32
        assert pairing_cost(x0, z) == pytest.approx(optimal_pairing_cost(x0, z), rel=1e-6)
        paired.on_epoch_end()
        assert source.epochs_ended == 1 and paired.epoch == 1


def test_tf_data_source_is_streamed_one_full_pass_per_epoch():
    data = np.random.default_rng(4).normal(size=(32, 3)).astype("float32")
    labels = np.zeros(32, "int32")
    paired = NoisePairedDataset(tf_batches((data, labels)), seed=0)
    assert len(paired) == 4
    # Indices are noise keys; the data comes in stream order, restarting when exhausted.
    order = [paired[index][0] for index in (3, 0, 2, 1, 1)]
    np.testing.assert_array_equal(np.concatenate(order[:4]), data)
    np.testing.assert_array_equal(order[4], data[:8])
    expected_noise = paired_data._batch_noise((8, 3), 0, 0, 1)
    np.testing.assert_array_equal(np.sort(paired[1][1], 0), np.sort(expected_noise, 0))
    infinite = NoisePairedDataset(tf_batches(data).repeat(), seed=0)
    assert infinite.num_batches is None
    with pytest.raises(ValueError, match="unknown number of batches"):
        NoisePairedDataset(tf_batches(data).filter(lambda x: True))
    with pytest.raises(ValueError, match="use_multiprocessing"):
        NoisePairedDataset(tf_batches(data), use_multiprocessing=True)


class NoiseRegression(keras.Model):
    """Regresses y on x: its loss proves that fit hands the step (x0, z)."""

    def __init__(self, dimension):
        super().__init__()
        self.dense = keras.layers.Dense(dimension)

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean((self.dense(x) - y) ** 2)


def expected_epoch_loss(model, batches):
    """Mean over the epoch's batches of the model's loss, computed in NumPy."""
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in model.dense.weights)
    pairs = [batches[index] for index in range(len(batches))]
    return float(np.mean([np.mean((x @ kernel + bias - z) ** 2) for x, z in pairs]))


def frozen_noise_regression(dimension):
    """A built model whose weights fit cannot change (learning rate 0)."""
    model = NoiseRegression(dimension)
    model(np.zeros((1, dimension), "float32"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    return model


@pytest.mark.parametrize("source", ["array", "py_dataset", "tf_data", "array_2_workers"])
def test_drives_fit_with_x0_and_paired_noise(source):
    data = np.random.default_rng(5).normal(size=(16, 3)).astype("float32")

    def make_batches():
        if source == "array":
            return NoisePairedDataset(data, batch_size=8, seed=1)
        if source == "array_2_workers":
            return NoisePairedDataset(data, batch_size=8, seed=1, workers=2)
        if source == "py_dataset":
            return NoisePairedDataset(Batches(data, labels=True), seed=1)
        return NoisePairedDataset(tf_batches(data), seed=1)

    model = frozen_noise_regression(3)
    batches = make_batches()
    # A tf.data source is a stream: keep fit's batch order so the reference sees the same pairs.
    history = model.fit(
        batches,
        epochs=1,
        shuffle=source != "tf_data",
        callbacks=[batches.epoch_callback()],
        verbose=0,
    )
    assert int(model.optimizer.iterations) == 2
    # The reported loss is the mean loss of the epoch's batches: (x0, z) reached the step.
    expected = expected_epoch_loss(model, make_batches())
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_epoch_callback_follows_fit_epochs_and_resumes():
    data = np.random.default_rng(6).normal(size=(16, 2)).astype("float32")
    model = frozen_noise_regression(2)
    batches = NoisePairedDataset(data, batch_size=8, seed=2)
    callbacks = [batches.epoch_callback()]
    history = model.fit(batches, epochs=3, initial_epoch=1, callbacks=callbacks, verbose=0)
    assert int(model.optimizer.iterations) == 4
    reference = NoisePairedDataset(data, batch_size=8, seed=2)
    for loss, epoch in zip(history.history["loss"], (1, 2)):
        reference.epoch = epoch
        assert loss == pytest.approx(expected_epoch_loss(model, reference), rel=1e-5)
    assert history.history["loss"][0] != pytest.approx(history.history["loss"][1], rel=1e-3)


def test_fit_without_the_callback_still_draws_new_noise_every_epoch():
    data = np.random.default_rng(6).normal(size=(16, 2)).astype("float32")
    model = frozen_noise_regression(2)
    batches = NoisePairedDataset(data, batch_size=16)
    history = model.fit(batches, epochs=3, verbose=0)
    assert int(model.optimizer.iterations) == 3 and batches.epoch >= 3
    losses = history.history["loss"]
    assert len(set(np.round(losses, 5))) == 3 and np.all(np.isfinite(losses))


def test_bad_array_input_is_refused_up_front():
    good = np.zeros((8, 2), "float32")
    bad = good.copy()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf values, first in sample 5"):
        NoisePairedDataset(bad, batch_size=4)
    with pytest.raises(ValueError, match="batch_size` is 1.*larger `batch_size`.*ot=False"):
        NoisePairedDataset(good, batch_size=1)
    assert len(NoisePairedDataset(good, batch_size=1, ot=False)) == 8
    with pytest.raises(ValueError, match="last batch holds 1 sample"):
        NoisePairedDataset(np.zeros((9, 2)), batch_size=4, drop_remainder=False)
    with pytest.raises(ValueError, match="rank 1.*rank >= 2"):
        NoisePairedDataset(np.zeros(8), batch_size=4)
    with pytest.raises(ValueError, match="dtype str32; expected float numbers"):
        NoisePairedDataset(np.array([["a"], ["b"]]), batch_size=2)
    with pytest.raises(ValueError, match="dtype bool"):
        NoisePairedDataset(np.zeros((4, 2), bool), batch_size=2)
    with pytest.raises(ValueError, match="no samples"):
        NoisePairedDataset(np.zeros((0, 2)), batch_size=2)
    with pytest.raises(ValueError, match="make no full batch"):
        NoisePairedDataset(good, batch_size=16)
    with pytest.raises(ValueError, match="batch_size` must be an integer >= 1"):
        NoisePairedDataset(good, batch_size=0)
    with pytest.raises(ValueError, match="batch_size` applies to array data only"):
        NoisePairedDataset(Batches(good), batch_size=8)


def test_bad_batches_of_a_source_are_refused_at_that_batch():
    data = np.random.default_rng(7).normal(size=(24, 2)).astype("float32")
    data[19, 0] = np.nan
    for source in (Batches(data), tf_batches(data)):
        paired = NoisePairedDataset(source, seed=0)
        paired[0], paired[1]  # clean batches pass
        with pytest.raises(ValueError, match="Batch 2 holds NaN or inf values.*its sample 3"):
            paired[2]
    single = NoisePairedDataset(tf_batches(np.zeros((9, 2), "float32")))
    single[0]
    with pytest.raises(ValueError, match="Batch 1 holds 1 sample.*ot=False"):
        single[1]
    scalars = NoisePairedDataset(tf_batches(np.zeros(16, "float32")))
    with pytest.raises(ValueError, match="Batch 0 has shape \\(8,\\), of rank 1"):
        scalars[0]
    strings = NoisePairedDataset(Batches(np.array([["a"]] * 16)))
    with pytest.raises(ValueError, match="Batch 0 has dtype"):
        strings[0]
    with pytest.raises(ValueError, match="holds no batches"):
        NoisePairedDataset(Batches(np.zeros((0, 2))))
    with pytest.raises(ValueError, match="holds no batches"):
        NoisePairedDataset(tf_batches(np.zeros((0, 2), "float32")))


def test_fit_stops_at_the_first_bad_batch_before_any_step():
    data = np.random.default_rng(8).normal(size=(16, 2)).astype("float32")
    data[2, 1] = np.nan
    model = frozen_noise_regression(2)
    steps = []
    count_steps = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append(batch)
    )
    with pytest.raises(ValueError, match="Batch 0 holds NaN"):
        model.fit(
            NoisePairedDataset(Batches(data)),
            epochs=1,
            shuffle=False,
            callbacks=[count_steps],
            verbose=0,
        )
    assert steps == []


def test_batches_per_epoch_keeps_whole_updates_and_leaves_other_samples_out_each_epoch():
    samples = np.arange(10 * 4, dtype="float32").reshape(10, 2, 2, 1)
    batches = NoisePairedDataset(samples, batch_size=2, ot=False, seed=3, batches_per_epoch=4)
    assert len(batches) == 4
    left_out = []
    for epoch in range(3):
        batches.epoch = epoch
        seen = np.concatenate([batches[index][0] for index in range(len(batches))])
        assert len(np.unique(seen[:, 0, 0, 0])) == 8  # distinct samples, no repeats
        left_out.append(set(samples[:, 0, 0, 0]) - set(seen[:, 0, 0, 0]))
    assert len({frozenset(s) for s in left_out}) > 1
    with pytest.raises(ValueError, match="exceeds the 5 full batches"):
        NoisePairedDataset(samples, batch_size=2, batches_per_epoch=6)
    with pytest.raises(ValueError, match="applies to array data"):
        NoisePairedDataset(Batches(np.zeros((16, 2, 2, 1), "float32")), batches_per_epoch=1)


class LabelledBatches(keras.utils.PyDataset):
    """A PyDataset source of (x, labels) batches of 8, or of x only from batch `unlabelled_from` on."""

    def __init__(self, data, labels, unlabelled_from=None):
        super().__init__()
        self.data, self.labels, self.unlabelled_from = data, labels, unlabelled_from

    def __len__(self):
        return len(self.data) // 8

    def __getitem__(self, index):
        rows = slice(index * 8, (index + 1) * 8)
        if self.unlabelled_from is not None and index >= self.unlabelled_from:
            return self.data[rows]
        return self.data[rows], self.labels[rows]


def labelled_data(count=24, seed=11):
    """Samples of 3 classes far apart (so pairing across classes would be cheaper), and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count).astype("int64")
    return (rng.normal(size=(count, 3)) + 3.0 * labels[:, None]).astype("float32"), labels


def assert_paired_within_classes(x0, z, y, noise):
    """z holds each row of `noise` once; each class's rows hold the noise rows at its positions, optimally paired."""
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        np.testing.assert_array_equal(np.sort(z[rows], axis=0), np.sort(noise[rows], axis=0))
        optimum = optimal_pairing_cost(x0[rows], noise[rows])
        assert pairing_cost(x0[rows], z[rows]) == pytest.approx(optimum, rel=1e-6)


def test_labelled_array_batches_keep_their_labels_and_pair_within_classes():
    data, labels = labelled_data()
    batches = NoisePairedDataset(data, batch_size=8, seed=1, labels=labels)
    assert batches.num_classes == int(labels.max()) + 1 and batches.labels.dtype == np.int32
    for epoch in (0, 1):
        batches.epoch = epoch
        for index in range(3):
            x0, z, y = batches[index]
            assert y.dtype == np.int32 and y.shape == (8,)
            # Each sample comes with its own label, whatever the epoch's shuffle.
            sample = [int(np.flatnonzero((data == row).all(axis=1))[0]) for row in x0]
            np.testing.assert_array_equal(y, labels[sample])
            assert_paired_within_classes(x0, z, y, paired_data._batch_noise(x0.shape, 1, epoch, index))
    # Without OT: the same noise draw, unpaired, with the labels.
    x0, z, y = NoisePairedDataset(data, batch_size=8, seed=1, labels=labels, ot=False)[0]
    np.testing.assert_array_equal(z, paired_data._batch_noise(x0.shape, 1, 0, 0))
    unlabelled = NoisePairedDataset(data, batch_size=8, seed=1)
    assert len(unlabelled[0]) == 2 and unlabelled.num_classes == 0 and unlabelled.labels is None


@pytest.mark.parametrize("group", [None, 4])
def test_labelled_shards_are_the_parts_of_the_whole_batch(group):
    data, labels = labelled_data(count=16)
    whole = NoisePairedDataset(data, batch_size=16, seed=2, ot_group_size=group, labels=labels)
    shards = [
        NoisePairedDataset(data, batch_size=16, seed=2, ot_group_size=group, labels=labels, shard=(part, 2))
        for part in range(2)
    ]
    for expected, joined in zip(whole[0], (np.concatenate(parts) for parts in zip(*(shard[0] for shard in shards)))):
        np.testing.assert_array_equal(joined, expected)
    x0, z, y = whole[0]
    noise = paired_data._batch_noise(x0.shape, 2, 0, 0)
    for rows in (slice(0, 16),) if group is None else (slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 16)):
        assert_paired_within_classes(x0[rows], z[rows], y[rows], noise[rows])


@pytest.mark.parametrize("source", ["py_dataset", "tf_data"])
def test_a_batched_source_gives_its_labels_with_labels_true(source):
    data, labels = labelled_data()
    batched = LabelledBatches(data, labels) if source == "py_dataset" else tf_batches((data, labels))
    batches = NoisePairedDataset(batched, seed=3, labels=True)
    assert batches.num_classes is None
    for index in range(3):
        x0, z, y = batches[index]
        np.testing.assert_array_equal(x0, data[index * 8 : (index + 1) * 8])
        np.testing.assert_array_equal(y, labels[index * 8 : (index + 1) * 8])
        assert y.dtype == np.int32
        assert_paired_within_classes(x0, z, y, paired_data._batch_noise(x0.shape, 3, 0, index))
    # Without labels=True the source's labels are dropped, as before.
    assert len(NoisePairedDataset(LabelledBatches(data, labels))[0]) == 2


def test_bad_labels_are_refused_with_what_to_do():
    data, labels = labelled_data(count=16)
    with pytest.raises(ValueError, match="dtype float64; class labels are integers.*astype\\('int32'\\)"):
        NoisePairedDataset(data, batch_size=8, labels=labels.astype("float64"))
    with pytest.raises(ValueError, match="15 labels for 16 samples; give exactly one label per sample"):
        NoisePairedDataset(data, batch_size=8, labels=labels[:15])
    with pytest.raises(ValueError, match="negative label -1"):
        NoisePairedDataset(data, batch_size=8, labels=np.where(labels == 0, -1, labels))
    with pytest.raises(ValueError, match="shape \\(16, 1\\); expected one integer per sample"):
        NoisePairedDataset(data, batch_size=8, labels=labels[:, None])
    with pytest.raises(ValueError, match="labels=True takes the labels from the \\(x, y\\) batches.*array itself"):
        NoisePairedDataset(data, batch_size=8, labels=True)
    with pytest.raises(ValueError, match="yield \\(x, labels\\) batches and pass labels=True"):
        NoisePairedDataset(LabelledBatches(data, labels), labels=labels)
    # A batched source's labels are checked at the bad batch.
    missing = NoisePairedDataset(LabelledBatches(data, labels, unlabelled_from=1), labels=True)
    missing[0]
    with pytest.raises(ValueError, match="Batch 1 of the source holds no labels.*labels=None"):
        missing[1]
    with pytest.raises(ValueError, match="labels of batch 0 have dtype float32"):
        NoisePairedDataset(tf_batches((data, labels.astype("float32"))), labels=True)[0]
    with pytest.raises(ValueError, match="labels of batch 0 hold 4 labels for 8 samples"):
        NoisePairedDataset(LabelledBatches(data, labels[:4]), labels=True)[0]


class LabelWeightedRegression(NoiseRegression):
    """Regresses z on x0, each sample's error weighted by 1 + its label: its loss proves that fit hands the step y."""

    def __init__(self, dimension):
        super().__init__(dimension)
        self.label_dtypes = []

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self.label_dtypes.append(keras.backend.standardize_dtype(sample_weight.dtype))
        errors = keras.ops.mean((self.dense(x) - y) ** 2, axis=-1)
        return keras.ops.mean(errors * (1.0 + keras.ops.cast(sample_weight, "float32")))


@pytest.mark.parametrize("source", ["array", "tf_data"])
def test_drives_fit_with_x0_paired_noise_and_labels(source):
    data, labels = labelled_data(count=16)

    def make_batches():
        if source == "array":
            return NoisePairedDataset(data, batch_size=8, seed=1, labels=labels)
        return NoisePairedDataset(tf_batches((data, labels)), seed=1, labels=True)

    model = LabelWeightedRegression(3)
    model(np.zeros((1, 3), "float32"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    batches = make_batches()
    history = model.fit(batches, epochs=1, shuffle=False, callbacks=[batches.epoch_callback()], verbose=0)
    assert int(model.optimizer.iterations) == 2 and set(model.label_dtypes) == {"int32"}
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in model.dense.weights)
    reference = make_batches()
    batch_losses = [
        np.mean(np.mean((x @ kernel + bias - z) ** 2, axis=-1) * (1.0 + y))
        for x, z, y in (reference[index] for index in range(len(reference)))
    ]
    expected = np.mean(batch_losses)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
