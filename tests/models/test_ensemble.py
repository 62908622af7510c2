"""Ensemble vectors: one dot product is the mean of the members' cosines."""

import doctest

import numpy as np
import tensorflow as tf

from tfrec.models import ensemble
from tfrec.models.ensemble import each_member, join_members, split_members


def _unit(rng, shape):
    x = rng.normal(size=shape).astype("float32")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_dot_product_of_ensembles_is_the_mean_of_member_cosines_and_split_undoes_join():
    rng = np.random.default_rng(0)
    queries = [_unit(rng, (4, 5)) for _ in range(3)]
    items = [_unit(rng, (6, 5)) for _ in range(3)]
    scores = tf.matmul(join_members(queries), join_members(items), transpose_b=True).numpy()
    expected = np.mean([q @ i.T for q, i in zip(queries, items)], axis=0)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    for part, original in zip(split_members(join_members(queries), 3), queries):
        np.testing.assert_allclose(part.numpy(), original, rtol=1e-5)
    assert join_members(queries[:1]) is queries[0]
    assert each_member(3, lambda suffix: f"dense{suffix}") == ["dense", "dense_1", "dense_2"]


def test_docstring_examples_run():
    result = doctest.testmod(ensemble, extraglobs={"tf": tf})
    assert result.attempted > 0
    assert result.failed == 0
