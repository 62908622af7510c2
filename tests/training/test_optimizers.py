"""LazyAdam against a NumPy reference, and against Keras' Adam where the two must agree."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrec.models import ItemTower
from tfrec.training import optimizers
from tfrec.training.optimizers import LazyAdam

BETA_1, BETA_2, EPSILON, LR = 0.9, 0.999, 1e-7, 0.05


def lazy_adam_reference(table, steps):
    """Adam's rule on the distinct rows of each step's (indices, values), in NumPy."""
    table = table.astype(np.float64).copy()
    m, v = np.zeros_like(table), np.zeros_like(table)
    for t, (indices, values) in enumerate(steps, start=1):
        rows = np.unique(indices)
        summed = np.stack([values[indices == row].sum(axis=0) for row in rows])
        m[rows] = BETA_1 * m[rows] + (1 - BETA_1) * summed
        v[rows] = BETA_2 * v[rows] + (1 - BETA_2) * summed**2
        alpha = LR * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
        table[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + EPSILON)
    return table, m, v


def random_steps(rng, num_rows, dim, num_steps):
    steps = []
    for _ in range(num_steps):
        indices = rng.integers(0, num_rows // 2, size=7)  # repeats, and rows never touched
        indices[1] = indices[0]
        steps.append((indices, rng.normal(size=(7, dim)).astype(np.float32)))
    return steps


def test_sparse_updates_match_numpy_and_leave_untouched_rows_alone():
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(10, 3)).astype(np.float32)
    steps = random_steps(rng, 10, 3, 4)
    table = keras.Variable(initial)
    optimizer = LazyAdam(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
    optimizer.build([table])
    for indices, values in steps:
        optimizer.apply([tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([10, 3]))], [table])

    expected, m, v = lazy_adam_reference(initial, steps)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(table), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(optimizer._momentums[0]), m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(optimizer._velocities[0]), v, rtol=1e-5, atol=1e-6)
    untouched = np.setdiff1d(np.arange(10), np.concatenate([i for i, _ in steps]))
    assert len(untouched) >= 5
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(table)[untouched], initial[untouched])


def test_dense_adam_moves_rows_a_step_did_not_touch():
    """The behaviour LazyAdam changes: Keras' Adam keeps moving a row after its last gradient."""
    table = keras.Variable(np.ones((3, 2), "float32"))
    optimizer = keras.optimizers.Adam(learning_rate=LR)
    optimizer.build([table])
    for row in (0, 1):
        optimizer.apply([tf.IndexedSlices(tf.ones((1, 2)), tf.constant([row]), tf.constant([3, 2]))], [table])
    lazy_table = keras.Variable(np.ones((3, 2), "float32"))
    lazy = LazyAdam(learning_rate=LR)
    lazy.build([lazy_table])
    for row in (0, 1):
        lazy.apply([tf.IndexedSlices(tf.ones((1, 2)), tf.constant([row]), tf.constant([3, 2]))], [lazy_table])

    dense_row0 = keras.ops.convert_to_numpy(table)[0]
    lazy_row0 = keras.ops.convert_to_numpy(lazy_table)[0]
    assert np.all(dense_row0 < lazy_row0)  # Adam moved row 0 again at step 2
    np.testing.assert_allclose(lazy_row0, 1 - LR, rtol=1e-6)
    assert keras.ops.convert_to_numpy(lazy_table)[2].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_dense_gradients_get_keras_adam(weight_decay):
    rng = np.random.default_rng(1)
    initial = rng.normal(size=(4, 3)).astype(np.float32)
    gradients = rng.normal(size=(3, 4, 3)).astype(np.float32)
    results = []
    for optimizer_class in (keras.optimizers.Adam, LazyAdam):
        weights = keras.Variable(initial)
        optimizer = optimizer_class(learning_rate=LR, weight_decay=weight_decay)
        optimizer.build([weights])
        for gradient in gradients:
            optimizer.apply([tf.constant(gradient)], [weights])
        results.append(keras.ops.convert_to_numpy(weights))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)


def test_embedding_gradients_in_a_compiled_step():
    """The trainer's path: an Embedding lookup's gradient, applied inside a tf.function."""
    embedding = keras.layers.Embedding(20, 4, embeddings_initializer="ones")
    embedding.build((None,))
    optimizer = LazyAdam(learning_rate=LR)
    optimizer.build(embedding.trainable_variables)

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(embedding(ids))
        gradients = tape.gradient(loss, embedding.trainable_variables)
        optimizer.apply_gradients(zip(gradients, embedding.trainable_variables))
        return gradients[0]

    gradient = step(tf.constant([3, 5, 3]))
    assert isinstance(gradient, tf.IndexedSlices)
    table = keras.ops.convert_to_numpy(embedding.embeddings)
    np.testing.assert_allclose(table[[3, 5]], 1 - LR, rtol=1e-6)
    assert np.all(np.delete(table, [3, 5], axis=0) == 1.0)


def test_amsgrad_is_refused_and_config_round_trips():
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
    restored = LazyAdam.from_config(LazyAdam(learning_rate=0.003, beta_1=0.8).get_config())
    assert isinstance(restored, LazyAdam)
    assert restored.beta_1 == 0.8
    assert float(keras.ops.convert_to_numpy(restored.learning_rate)) == pytest.approx(0.003)


def test_docstring_example_runs():
    result = doctest.testmod(optimizers, extraglobs={"keras": keras, "tf": tf})
    assert result.attempted > 0
    assert result.failed == 0


def test_the_item_towers_id_table_gets_sparse_gradients():
    """LazyAdam only differs from Adam where gradients are sparse: the trainer's id table is."""
    tower = ItemTower(6, 4, 5, hidden_dim=8, name="item_tower")
    tower.set_catalogue(text_vectors=np.random.default_rng(0).normal(size=(6, 5)).astype("float32"))
    tower(tf.constant([0]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(tf.constant([1, 3, 1])))
    table = [v for v in tower.trainable_variables if "id_embedding" in v.path]
    assert table, [v.path for v in tower.trainable_variables]
    gradient = tape.gradient(loss, table)[0]
    assert isinstance(gradient, tf.IndexedSlices)
    assert sorted(set(gradient.indices.numpy().tolist())) == [1, 3]
