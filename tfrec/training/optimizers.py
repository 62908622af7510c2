"""Adam that moves only the rows of a table that a step touched.

An embedding lookup's gradient is a ``tf.IndexedSlices`` over the rows of the batch. Keras'
``Adam`` turns it into a dense tensor and updates every row of the table, and both of its
moment tables, at every step: rows that were not in the batch keep moving with their decaying
momentum, and a step costs time in proportion to the catalogue instead of the batch. With a
million items that is most of the step (docs/results.md, "Cost at scale").

``LazyAdam`` applies Adam's rule to the touched rows only, as TensorFlow 1's
``LazyAdamOptimizer`` did: each distinct row's gradient is summed, its two moments are
updated, and the row moves by the bias-corrected ratio. Dense gradients (every other weight)
get ``Adam``'s own update, and decoupled weight decay works as in ``Adam``.

>>> import numpy as np
>>> table = keras.Variable(np.ones((4, 2), "float32"))
>>> optimizer = LazyAdam(learning_rate=0.1)
>>> optimizer.build([table])
>>> gradient = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([2]), tf.constant([4, 2]))
>>> optimizer.apply([gradient], [table])
>>> keras.ops.convert_to_numpy(table).astype("float64").round(3).tolist()
[[1.0, 1.0], [1.0, 1.0], [0.9, 0.9], [1.0, 1.0]]
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfrec")
class LazyAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with row-wise (lazy) updates for sparse gradients.

    Takes ``keras.optimizers.Adam``'s arguments except ``amsgrad``.
    """

    def __init__(self, *args, amsgrad: bool = False, **kwargs):
        if amsgrad:
            raise ValueError("LazyAdam does not implement amsgrad")
        super().__init__(*args, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        rows, slot = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), slot, tf.shape(rows)[0])
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - beta_2**step) / (1 - beta_1**step)

        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(_tensor(m), rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(_tensor(v), rows) + (1 - beta_2) * tf.square(values)
        # No dense_shape: reading a variable's shape reads the variable, and a scatter into a
        # variable whose dense value is still referenced copies all of it first.
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad", None)
        return config


def _tensor(variable):
    """The ``tf.Variable`` under a Keras variable (gathers read only the rows they need)."""
    return variable.value if isinstance(variable, keras.Variable) else variable
