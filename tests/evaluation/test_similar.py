"""The similar-items measure: tfrec_similar's ranking from each user's last item, and the weight kept."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tfrec.data import EvalSplit
from tfrec.evaluation.ranking import evaluate_split
from tfrec.evaluation.similar import EQUAL, candidate_weights, choose, served_text_weight, similar_scale, similar_scorer


def fake_model(text_dim: int, weight: float):
    """What the measure reads of a model: the user tower's part sizes and fitted text weight."""
    tower = SimpleNamespace(trained_dim=2, text_dim=text_dim, text_weight=SimpleNamespace(numpy=lambda: weight))
    return SimpleNamespace(user_tower=tower)


def test_the_score_is_the_weighted_dot_product_with_the_last_item():
    vectors = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    scores = similar_scorer(vectors, similar_scale(2, 1, 0.2))([np.array([4, 1]), np.array([], np.int64)])
    by_hand = 0.8 * vectors[:, :2] @ vectors[1, :2] + 0.2 * vectors[:, 2] * vectors[1, 2]
    np.testing.assert_allclose(scores[0], by_hand, rtol=1e-5)
    np.testing.assert_array_equal(scores[1], 0.0)
    np.testing.assert_array_equal(similar_scale(3, 0, 0.7), [1, 1, 1])  # no text part: the trained part alone


def test_the_candidates_are_equal_weight_and_the_fitted_one():
    assert candidate_weights(fake_model(4, 0.3)) == {"equal": EQUAL, "fitted": 0.3}
    assert candidate_weights(fake_model(0, 0.0)) == {"trained": 0.0}


def _shop():
    """Thirty items; by the trained part item 0 is followed by items 10-29, by the text part by
    item 3. Every user's last item is 0; the next item is 3."""
    vectors = np.zeros((30, 4), np.float32)
    vectors[0] = [1, 0, 1, 0]
    vectors[3] = [-0.5, 1, 1, 0]   # text part as item 0's, trained part apart
    vectors[10:, 0] = np.linspace(0.6, 0.7, 20)
    users = 8
    split = EvalSplit(np.array([f"u{i}" for i in range(users)], object), [np.array([5, 0])] * users,
                      [np.array([0, 1])] * users, [np.array([3])] * users)
    return vectors, split


def test_the_weight_that_ranks_the_validation_targets_better_is_kept():
    vectors, split = _shop()
    measured = {}
    for name, weight in (("equal", 0.5), ("fitted", 0.9)):
        result = evaluate_split({name: similar_scorer(vectors, similar_scale(2, 2, weight))}, split, 30,
                                np.zeros(30, bool))
        values = {m: result.metrics["explore"][name][m] for m in ("recall@10", "ndcg@10", "users")}
        measured[name] = {"valid": values, "test": values}
    assert (measured["equal"]["valid"]["recall@10"], measured["fitted"]["valid"]["recall@10"]) == (0.0, 1.0)
    record = choose(fake_model(2, 0.9), measured)
    assert (record["chosen"], record["text_weight"]) == ("fitted", 0.9)
    assert "validation" in record["chosen_by"] and set(record["valid"]) == {"equal", "fitted"}


def test_a_tie_keeps_equal_weight():
    same = {"valid": {"recall@10": 0.4}, "test": {"recall@10": 0.3}}
    record = choose(fake_model(2, 0.7), {"equal": same, "fitted": same})
    assert (record["chosen"], record["text_weight"]) == ("equal", EQUAL)


def test_the_export_serves_the_weight_evaluation_chose(tmp_path):
    assert served_text_weight(tmp_path) == EQUAL  # not evaluated: equal weight, as before
    (tmp_path / "metrics.json").write_text(json.dumps({"similar_items": {"text_weight": 0.3}}))
    assert served_text_weight(tmp_path) == pytest.approx(0.3)
