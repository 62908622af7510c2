"""Evaluator metrics against values computed by hand."""

import numpy as np
import pytest

from tfrec.data import EvalSplit
from tfrec.evaluation.metrics import RankingMetrics, first_relevant_rank, intra_list_similarity
from tfrec.evaluation.ranking import evaluate_split
from tfrec.topk import top_k_indices


def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])
    np.testing.assert_array_equal(top_k_indices(scores, 4), [[1, 3, 0, 2]])



def test_top_k_equals_a_full_sort_on_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(-2, 3, size=(64, 40)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.3] = -np.inf  # removed history items
    for k in (1, 5, 17, 40, 60):
        expected = [np.lexsort((np.arange(40), -row))[:k] for row in scores]
        np.testing.assert_array_equal(top_k_indices(scores, k), expected)


def test_top_k_refuses_nan_scores_naming_the_row():
    scores = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0, ]])
    with pytest.raises(ValueError, match=r"1 row\(s\) of scores hold NaN \(first: row 1\)"):
        top_k_indices(scores, 2)


def test_first_relevant_rank_over_whole_ranking():
    scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.7], [1.0, 1.0, 1.0, 1.0, 1.0]])
    # Row 0: ranking 1, 4, 2, 3, 0 -> item 3 is at rank 3. Row 1: all tied -> item 2 at rank 2.
    np.testing.assert_array_equal(first_relevant_rank(scores, [np.array([3, 0]), np.array([4, 2])]), [3, 2])


def test_metrics_hand_computed():
    n = 8
    scores = np.array([
        [8, 7, 6, 5, 4, 3, 2, 1],  # ranking 0..7
        [1, 2, 3, 4, 5, 6, 7, 8],  # ranking 7..0
    ], float)
    targets = [np.array([1, 5]), np.array([0])]
    m = RankingMetrics(n, ks=(2, 4), ndcg_ks=(2, 4))
    m.update(top_k_indices(scores, 4), targets, scores)
    r = m.result()
    # User 0: hits at ranks 1 and 5; user 1: its item is ranked last (rank 7).
    assert np.isclose(r["recall@2"], (1 / 2 + 0) / 2)
    assert np.isclose(r["recall@4"], (1 / 2 + 0) / 2)
    ideal0 = 1 + 1 / np.log2(3)
    assert np.isclose(r["ndcg@2"], ((1 / np.log2(3)) / ideal0 + 0) / 2)
    assert np.isclose(r["mrr"], (1 / 2 + 1 / 8) / 2)
    assert np.isclose(r["hitrate@10"], 0.5)  # top 4 here: user 0 hits, user 1 does not
    assert np.isclose(r["coverage@10"], 8 / 8)  # top 4 of both users: 0-3 and 7-4
    assert r["users"] == 2


def test_protocols_and_repeat_share():
    # Two users over 6 items; scores prefer low indices.
    split = EvalSplit(
        user_ids=np.array(["a", "b"], dtype=object),
        histories=[np.array([0, 1]), np.array([2])],
        history_groups=[np.array([0, 1]), np.array([0])],
        targets=[np.array([0, 3]), np.array([2])],
    )
    cold = np.array([False, False, False, True, False, False])

    def scorer(histories):
        return np.tile(np.arange(6, 0, -1, dtype=float), (len(histories), 1))

    r = evaluate_split({"s": scorer}, split, 6, cold, ks=(1, 2)).metrics
    assert np.isclose(r["repeat_share"], 2 / 3)
    # all: user a gets item 0 at rank 0 (recall 1/2 at 1), user b's item 2 is at rank 2.
    assert np.isclose(r["all"]["s"]["recall@1"], (0.5 + 0) / 2)
    # explore: user b has no new target (skipped); user a: items 0, 1 removed, 3 ranks second.
    assert r["explore"]["s"]["users"] == 1
    assert np.isclose(r["explore"]["s"]["recall@1"], 0.0)
    assert np.isclose(r["explore"]["s"]["recall@2"], 1.0)
    # cold start: only item 3, for user a.
    assert r["cold_start"]["s"]["users"] == 1


def test_intra_list_similarity_hand_computed():
    e = np.eye(3, dtype=np.float32)
    same = np.stack([e[0], e[0], e[0]])[None]  # one list, three identical items
    orthogonal = e[None]  # one list of three orthogonal items
    mixed = np.stack([e[0], e[0], e[1]])[None]  # pairs: (0,1) same, (0,2) and (1,2) orthogonal
    np.testing.assert_allclose(intra_list_similarity(np.concatenate([same, orthogonal, mixed])), [1, 0, 1 / 3])


def test_metrics_report_intra_list_similarity_with_item_vectors():
    vectors = np.array([[1, 0], [1, 0], [0, 2], [0, 1]], np.float32)  # normalised inside
    m = RankingMetrics(4, ks=(2,), ndcg_ks=(2,), item_vectors=vectors)
    scores = np.array([[4, 3, 2, 1], [1, 2, 4, 3]], float)  # top 2: [0, 1] and [2, 3]
    m.update(top_k_indices(scores, 2), [np.array([0]), np.array([0])], scores)
    assert np.isclose(m.result()["ils@10"], 1.0)  # both lists hold two identical directions
