"""Baselines on small, hand-checked histories."""

import numpy as np

from tfrec.data import EvalSplit
from tfrec.evaluation.baselines import Als, ItemCooccurrence, MostPopular, Repeat, TextZeroShot
from tfrec.topk import top_k_indices

N = 6
TRAIN = EvalSplit(
    user_ids=np.array(["a", "b", "c"], dtype=object),
    histories=[np.array([0, 1, 2, 0]), np.array([1, 3, 0]), np.array([0, 4])],
    history_groups=[np.array([0, 0, 1, 1]), np.array([0, 1, 1]), np.array([0, 1])],
    targets=[np.array([5])] * 3,
)


def test_most_popular_orders_by_interactions():
    b = MostPopular().fit(TRAIN, N)
    # Counts: 0 -> 4, 1 -> 2, then 2, 3, 4 once (ties by index), 5 never.
    np.testing.assert_array_equal(top_k_indices(b.scores([np.array([3])]), N), [[0, 1, 2, 3, 4, 5]])


def test_repeat_ranks_own_items_by_count_then_recency_then_popularity():
    b = Repeat().fit(TRAIN, N)
    history = np.array([4, 3, 4, 2, 3])  # 4 and 3 twice (3 more recent), 2 once
    ranking = top_k_indices(b.scores([history]), N)[0]
    np.testing.assert_array_equal(ranking, [3, 4, 2, 0, 1, 5])


def test_item_cooccurrence_follows_next_groups():
    b = ItemCooccurrence().fit(TRAIN, N)
    # Transitions: a: {0,1} -> {0,2}; b: {1} -> {0,3}; c: {0} -> {4}.
    # From item 1: to 0 twice, to 2 once, to 3 once -> P(0|1) = 1/2, P(2|1) = P(3|1) = 1/4.
    scores = b.scores([np.array([1])])[0]
    np.testing.assert_allclose(scores[[0, 2, 3, 4]], [0.5, 0.25, 0.25, 0.0], atol=1e-5)


def test_als_and_text_zero_shot_score_the_catalogue():
    als = Als(factors=4, iterations=5, seed=0).fit(TRAIN, N)
    assert als.scores([np.array([0, 1])]).shape == (1, N)
    vectors = np.eye(N, 3)
    text = TextZeroShot(vectors).fit(TRAIN, N)
    ranking = top_k_indices(text.scores([np.array([1])]), 2)[0]
    assert ranking[0] == 1  # an item's own text is its nearest
