"""Baselines on small, hand-checked histories."""

import numpy as np

from tfrec.data import EvalSplit
from tfrec.evaluation.baselines import Als, ItemCooccurrence, MostPopular, Repeat, TextRecent, TextZeroShot
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


def test_text_recent_is_the_recency_weighted_mean_against_every_text_vector():
    """By hand with numpy: the last ``max_history`` items weighted ``d ** age``, L2-normalised, by cosine."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text = TextRecent(vectors, max_history=3, decays=(0.5,)).fit(TRAIN, N)
    history = np.array([4, 0, 1, 2])  # item 4 falls out of the last 3
    query = 0.25 * vectors[0].astype(np.float64) + 0.5 * vectors[1] + 1.0 * vectors[2]
    query /= np.linalg.norm(query)
    expected = vectors.astype(np.float64) @ query
    np.testing.assert_allclose(text.scores([history])[0], expected, atol=1e-5)
    assert text.decay == 0.5
    np.testing.assert_array_equal(text.scores([np.array([], np.int64)])[0] > 0.5, False)  # no history: no text


def test_text_recent_with_decay_one_ranks_as_text_zero_shot():
    vectors = np.random.default_rng(1).normal(size=(N, 4))
    histories = [np.array([0, 1, 2]), np.array([3, 3, 5])]
    recent = TextRecent(vectors, decays=(1.0,)).fit(TRAIN, N)
    np.testing.assert_array_equal(top_k_indices(recent.scores(histories), N),
                                  top_k_indices(TextZeroShot(vectors).fit(TRAIN, N).scores(histories), N))


def _recency_shop(recent_target: bool) -> tuple[np.ndarray, EvalSplit]:
    """Twelve items; every user's history is two "old" items then one "recent" item. Item 9 lies
    near the recent item, item 10 near the mean of the history; the validation target is item 9
    (``recent_target``) or item 10."""
    vectors = np.zeros((12, 4))
    vectors[0], vectors[1], vectors[2] = [1, 0, 0, 0], [1, 0.1, 0, 0], [0, 1, 0, 0]
    vectors[9] = [0.05, 1, 0.1, 0]  # close to the recent item 2
    vectors[10] = [1, 0.6, 0.1, 0]  # close to the plain mean of 0, 1, 2
    vectors[3:9] = np.eye(4)[[2, 3, 2, 3, 2, 3]] + 0.01
    vectors[11] = [0, 0, 0, 1]
    users = 20
    split = EvalSplit(user_ids=np.array([f"u{i}" for i in range(users)], dtype=object),
                      histories=[np.array([0, 1, 2])] * users, history_groups=[np.array([0, 1, 2])] * users,
                      targets=[np.array([9 if recent_target else 10])] * users)
    return vectors, split


def test_text_recent_chooses_its_decay_on_the_validation_targets():
    """The split given to ``fit`` holds the validation targets: where the next item follows the most
    recent one, a small decay wins; where it follows the whole history, the plain mean (decay 1)."""
    for recent_target, decay in ((True, 0.05), (False, 1.0)):
        vectors, valid = _recency_shop(recent_target)
        text = TextRecent(vectors, metric="ndcg@10", decays=(1.0, 0.5, 0.05), max_users=None).fit(valid, 12)
        assert text.decay == decay, (recent_target, text.validation)
        assert text.validation[decay] == max(text.validation.values())
        record = text.record()
        assert record["decay"] == decay and "validation" in record["chosen_by"] and len(record["validation"]) == 3
