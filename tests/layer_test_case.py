"""One battery of checks run on every tfrec layer, in the manner of keras-hub's TestCase.

``run_layer_test`` builds the layer, calls it, checks the output shape, then checks
that it survives ``get_config``/``from_config`` and a ``.keras`` save and load with
identical outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


def _call(layer, inputs: tuple):
    return np.asarray(layer(*inputs))


def run_layer_test(
    layer: keras.layers.Layer,
    inputs,
    expected_shape: tuple,
    tmp_path: Path,
    prepare: Callable[[keras.layers.Layer], None] | None = None,
) -> np.ndarray:
    """Checks output shape, config round trip and save/load for ``layer``; returns its output.

    Args:
        layer: a fresh layer, called as ``layer(*inputs)``.
        inputs: one input, or a tuple of positional inputs.
        expected_shape: the output shape.
        prepare: run on the layer before its first call (e.g. to store catalogue
            content), and on the config copy before its weights are set.
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if prepare:
        prepare(layer)
    output = _call(layer, inputs)
    assert tuple(output.shape) == tuple(expected_shape), (output.shape, expected_shape)
    assert np.all(np.isfinite(output))

    # Config round trip: same config, same outputs once the weights are copied.
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    if prepare:
        prepare(clone)
    _call(clone, inputs)
    assert clone.get_config() == config
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_call(clone, inputs), output, rtol=1e-5, atol=1e-6)

    # Keras' saving format: a .keras file reloads to the same outputs.
    holder = _Holder(layer)
    holder(inputs)
    path = tmp_path / f"{layer.name}.keras"
    holder.save(path)
    restored = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(restored(inputs)), output, rtol=1e-5, atol=1e-6)
    return output


@keras.saving.register_keras_serializable(package="tfrec_tests")
class _Holder(keras.Model):
    """A model around one layer, so the layer goes through Keras' saving format."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs):
        return self.layer(*(tf.convert_to_tensor(x) for x in inputs))

    def get_config(self):
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        return config

    @classmethod
    def from_config(cls, config):
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
