"""Business rules inside the exported models, on a small hand-made catalogue with categories."""

import numpy as np
import pytest
import tensorflow as tf

from serving import signatures
from serving.scann_retrieve import first_occurrences
from serving.signatures import EXCLUDED, ServingCatalogue, SimilarModel

IDS = ["mug-red", "mug-blue", "lamp-1", "lamp-2", "mug-green", "lamp-3"]
CATEGORIES = ["mugs", "mugs", "lamps", "lamps", "mugs", "lamps"]
VECTORS = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.5, 0.5]], np.float32)


@pytest.fixture(scope="module")
def catalogue():
    return ServingCatalogue(np.array(IDS), VECTORS, np.array(CATEGORIES))


def _ids(tensor) -> list[list[str]]:
    return [[i.decode() for i in row] for row in tensor.numpy()]


def test_unknown_ids_map_to_minus_one(catalogue):
    np.testing.assert_array_equal(catalogue.indices(tf.constant([["lamp-1", "nope", ""]])), [[2, -1, -1]])


def test_keep_applies_exclusions_history_and_category(catalogue):
    history = tf.constant([[0, -1], [3, 3]], tf.int64)
    keep = catalogue.keep(2, history, tf.constant(True), tf.constant(["lamp-3", "unknown"]), tf.constant(""))
    np.testing.assert_array_equal(keep, [[False, True, True, True, True, False],
                                         [True, True, True, False, True, False]])
    keep = catalogue.keep(2, history, tf.constant(False), tf.constant([], tf.string), tf.constant("lamps"))
    np.testing.assert_array_equal(keep, [[False, False, True, True, False, True]] * 2)


def test_rules_apply_before_top_k_so_k_results_come_back(catalogue):
    similar = SimilarModel(catalogue, default_k=3)
    out = similar.serve(item_id=tf.constant(["mug-red"]), k=tf.constant(3), exclude_ids=tf.constant(["lamp-1"]),
                        category=tf.constant("lamps"))
    ids = _ids(out["item_ids"])[0]
    scores = out["scores"].numpy()[0]
    # Only two lamps are left after the exclusion: they come first, the rest score EXCLUDED.
    assert ids[:2] == ["lamp-2", "lamp-3"] and scores[2] == pytest.approx(EXCLUDED)
    out = similar.serve(item_id=tf.constant(["mug-red"]), k=tf.constant(2), exclude_ids=tf.constant([], tf.string),
                        category=tf.constant("mugs"))
    assert _ids(out["item_ids"]) == [["mug-blue", "mug-green"]]  # itself excluded, only mugs


def test_a_category_needs_a_catalogue_with_categories():
    plain = ServingCatalogue(np.array(IDS), VECTORS)
    history = tf.constant([[0]], tf.int64)
    assert plain.keep(1, history, tf.constant(False), tf.constant([], tf.string), tf.constant("")).shape == (1, 6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no category field"):
        plain.keep(1, history, tf.constant(False), tf.constant([], tf.string), tf.constant("mugs"))


def test_k_must_be_positive(catalogue):
    similar = SimilarModel(catalogue, default_k=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be a positive"):
        similar.serve(item_id=tf.constant(["mug-red"]), k=tf.constant(0), exclude_ids=tf.constant([], tf.string),
                      category=tf.constant(""))


def test_explanations_name_the_closest_history_item():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    catalogue = ServingCatalogue(np.array(["a", "b", "c", "d"]), vectors)
    history = tf.constant([[0, 2, -1], [-1, -1, -1]], tf.int64)
    results = tf.constant([[1, 3], [1, 3]], tf.int64)
    because, score = catalogue.explain(history, results)
    # b is closest to a, d to c; a request without history explains nothing.
    assert _ids(because) == [["a", "c"], ["", ""]]
    np.testing.assert_allclose(score.numpy(), [[0.9, 0.9], [0, 0]], rtol=1e-6)
    empty = catalogue.explain(tf.zeros([1, 0], tf.int64), tf.constant([[1]], tf.int64))[0]
    assert _ids(empty) == [[""]]


def test_only_the_first_results_are_explained_so_a_large_k_costs_no_more(monkeypatch):
    monkeypatch.setattr(signatures, "EXPLAINED_RESULTS", 2)
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    catalogue = ServingCatalogue(np.array(["a", "b", "c", "d"]), vectors)
    because, score = catalogue.explain(tf.constant([[0, 2]], tf.int64), tf.constant([[1, 3, 0, 2]], tf.int64))
    assert _ids(because) == [["a", "c", "", ""]]
    np.testing.assert_allclose(score.numpy(), [[0.9, 0.9, 0, 0]], rtol=1e-6)


def test_first_occurrences_keeps_one_of_each_item():
    items = tf.constant([[4, 2, 4, -1, 2, 7]], tf.int64)
    np.testing.assert_array_equal(first_occurrences(items), [[True, True, False, False, False, True]])


def test_removed_items_come_last_as_blanks_and_explain_nothing():
    removed = np.array([name in ("mug-blue", "lamp-2") for name in IDS])
    catalogue = ServingCatalogue(np.array(IDS), VECTORS, np.array(CATEGORIES), removed)
    similar = SimilarModel(catalogue, default_k=3)
    out = similar.serve(item_id=tf.constant(["mug-red"]), k=tf.constant(6), exclude_ids=tf.constant(["lamp-1"]),
                        category=tf.constant(""))
    # the kept items by score, then the excluded ones (itself, lamp-1), then the removed ones as ""
    assert _ids(out["item_ids"]) == [["mug-green", "lamp-3", "mug-red", "lamp-1", "", ""]]
    assert out["scores"].numpy()[0][2:].tolist() == pytest.approx([EXCLUDED] * 4)
    history = tf.constant([[1, 3, 2]], tf.int64)  # two of the three history items are removed
    because, score = catalogue.explain(history, tf.constant([[0, 5]], tf.int64))
    assert _ids(because) == [["lamp-1", "lamp-1"]]
    because, _ = catalogue.explain(tf.constant([[1, 3]], tf.int64), tf.constant([[0]], tf.int64))
    assert _ids(because) == [[""]]  # only removed items in the history: no explanation


def test_similar_weighs_the_dimensions_it_is_given_as_evaluation_does():
    """With a ``scale``, tfrec_similar ranks as ``tfrec.evaluation.similar.similar_scorer``: the
    first dimension stands for the trained part, the second for the text part."""
    from tfrec.evaluation.similar import similar_scale, similar_scorer

    plain = ServingCatalogue(np.array(IDS), VECTORS)
    for weight in (0.5, 0.9):
        scale = similar_scale(1, 1, weight)
        out = SimilarModel(plain, default_k=5, scale=scale).serve(
            item_id=tf.constant(["mug-blue"]), k=tf.constant(5), exclude_ids=tf.constant([], tf.string),
            category=tf.constant(""))
        expected = similar_scorer(VECTORS, scale)([np.array([1])])[0]
        order = [i for i in np.argsort(-expected, kind="stable") if i != 1]
        assert _ids(out["item_ids"])[0] == [IDS[i] for i in order]
        np.testing.assert_allclose(out["scores"].numpy()[0], expected[order], rtol=1e-6)
    with pytest.raises(ValueError, match="2 values"):
        SimilarModel(plain, default_k=5, scale=np.ones(3))
