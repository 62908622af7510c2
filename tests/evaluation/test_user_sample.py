"""``eval.max_users``: a fixed random sample of users per split, and batches bounded by the score budget."""

import numpy as np
import pytest

from tfrec.data import EvalSplit, sample_users
from tfrec.evaluation.ranking import evaluate_split
from tfrec.topk import rows_per_batch

NUM_ITEMS = 40


def _split(users: int) -> EvalSplit:
    rng = np.random.default_rng(1)
    histories = [rng.integers(0, NUM_ITEMS, size=1 + i % 9) for i in range(users)]
    targets = [np.unique(rng.integers(0, NUM_ITEMS, size=3)) for _ in range(users)]
    return EvalSplit(np.array([f"u{i:03d}" for i in range(users)], dtype=object), histories,
                     [np.arange(len(h)) for h in histories], targets)


def test_a_sample_has_max_users_distinct_users_in_split_order():
    split = _split(200)
    sample = sample_users(split, 50, seed=7)
    assert len(sample) == 50
    assert len(set(sample.user_ids)) == 50
    assert list(sample.user_ids) == sorted(sample.user_ids)  # the split's order is kept
    position = {u: i for i, u in enumerate(split.user_ids)}
    for user, history, targets in zip(sample.user_ids, sample.histories, sample.targets):
        assert history is split.histories[position[user]] and targets is split.targets[position[user]]


def test_the_same_seed_draws_the_same_users_and_another_seed_others():
    split = _split(200)
    assert list(sample_users(split, 50, seed=7).user_ids) == list(sample_users(split, 50, seed=7).user_ids)
    assert list(sample_users(split, 50, seed=7).user_ids) != list(sample_users(split, 50, seed=8).user_ids)


def test_a_split_no_larger_than_max_users_or_no_limit_is_measured_whole():
    split = _split(30)
    assert sample_users(split, 30, seed=0) is split
    assert sample_users(split, 1000, seed=0) is split
    assert sample_users(split, None, seed=0) is split


def _scores(histories):
    """Scores that depend on the history alone, whatever batch it comes in."""
    return np.stack([np.random.default_rng(int(h.sum())).random(NUM_ITEMS) for h in histories])


def test_rows_per_batch_keeps_users_times_items_within_the_budget():
    assert rows_per_batch(256, 3_700) == 256
    assert rows_per_batch(256, 1_000_000, score_budget=1 << 24) == 16
    assert rows_per_batch(256, 10_000_000, score_budget=1 << 20) == 1  # never fewer than one user


def test_results_do_not_depend_on_the_score_budget():
    split = _split(120)
    vectors = np.random.default_rng(2).normal(size=(NUM_ITEMS, 8)).astype(np.float32)

    def run(budget):
        result = evaluate_split({"model": _scores}, split, NUM_ITEMS, np.zeros(NUM_ITEMS, bool), ks=(5, 10),
                                batch_size=64, item_vectors=vectors, keep_per_user=True,
                                score_budget=budget)
        return result.metrics, result.curves, result.per_user

    whole, small = run(1 << 24), run(3 * NUM_ITEMS)  # batches of 64 users, and of 3
    # Rankings are equal; means differ at most by the order of their float sums, and the
    # intra-list similarity (float32 vectors) by float32 rounding.
    for protocol in ("all", "explore", "cold_start"):
        assert whole[0][protocol]["model"] == pytest.approx(small[0][protocol]["model"], rel=1e-6)
        assert whole[1][protocol]["model"] == pytest.approx(small[1][protocol]["model"], rel=1e-12)
    assert whole[0]["all"]["model"]["users"] == 120 and whole[0]["repeat_share"] == small[0]["repeat_share"]
    for protocol, by_scorer in whole[2].items():
        users, values = by_scorer["model"]
        other_users, other_values = small[2][protocol]["model"]
        np.testing.assert_array_equal(users, other_users)
        for name in values:
            if name == "ils@10":
                np.testing.assert_allclose(values[name], other_values[name], rtol=1e-5)
            else:
                np.testing.assert_array_equal(values[name], other_values[name])
