"""A layer test helper modelled on Keras' own `run_layer_test`.

One call checks what every keras_lct layer promises: its config round-trips,
it runs symbolically and eagerly with the expected output shape, it holds the
expected number of trainable and non-trainable weights, it trains inside a
tiny `fit`, and a `.keras` model around it, its weights set to values no
initializer draws, reloads with those weights and equal outputs.
"""

import keras
import numpy as np


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shapes,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    tmp_path=None,
    run_training_check=True,
):
    """Runs the checks; `input_shapes` is a list of shapes (batch axis included)."""
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=shape).astype("float32") for shape in input_shapes]

    # Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config, (config, rebuilt.get_config())
    serialized = keras.layers.serialize(layer)
    assert type(keras.layers.deserialize(serialized)) is layer_cls

    # Symbolic call.
    symbolic_inputs = [keras.KerasTensor((None,) + tuple(shape[1:])) for shape in input_shapes]
    symbolic_output = layer_cls(**init_kwargs)(*symbolic_inputs)
    assert tuple(symbolic_output.shape[1:]) == tuple(expected_output_shape[1:]), symbolic_output.shape

    # Eager call and weights.
    layer = layer_cls(**init_kwargs)
    output = keras.ops.convert_to_numpy(layer(*inputs))
    assert output.shape == tuple(expected_output_shape), output.shape
    assert np.all(np.isfinite(output))
    assert len(layer.trainable_weights) == expected_num_trainable_weights, [w.path for w in layer.trainable_weights]
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, [
        w.path for w in layer.non_trainable_weights
    ]

    model = _model_around(layer_cls, init_kwargs, input_shapes)
    if run_training_check:
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        target = rng.normal(size=expected_output_shape).astype("float32")
        history = model.fit(inputs, target, batch_size=len(target), epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))

    if tmp_path is not None:
        # Values no initializer draws, so that the reloaded outputs match only if the file's weights load.
        for weight in model.weights:
            weight.assign(rng.uniform(0.5, 1.5, size=weight.shape).astype(weight.dtype))
        path = str(tmp_path / f"{layer_cls.__name__}.keras")
        model.save(path)
        restored = keras.models.load_model(path)
        for saved, loaded in zip(model.weights, restored.weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved))
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(restored(inputs)),
            keras.ops.convert_to_numpy(model(inputs)),
            rtol=1e-5,
            atol=1e-6,
        )
    return layer


def _model_around(layer_cls, init_kwargs, input_shapes):
    inputs = [keras.Input(shape=tuple(shape[1:])) for shape in input_shapes]
    return keras.Model(inputs, layer_cls(**init_kwargs)(*inputs))
