"""The retrieval losses against a direct NumPy computation: in-batch softmax (each option on and
off), in-batch plus uniform or popularity-sampled negatives with logQ, and the full softmax."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tfrec.tasks import NegativeSampler, RetrievalTask, mixed_log_q


def numpy_loss(q, c, ids, temperature, accidental, log_q, neg=None, neg_ids=None, query_ids=None):
    cands = c if neg is None else np.concatenate([c, neg])
    cand_ids = ids if neg is None else np.concatenate([ids, neg_ids])
    losses = []
    for i in range(len(q)):
        logits = []
        for j in range(len(cands)):
            if accidental and j != i and cand_ids[j] == ids[i]:
                continue  # an accidental hit is not a negative
            if query_ids is not None and j != i and j < len(ids) and query_ids[j] == query_ids[i]:
                continue  # another positive of the same query is not a negative
            value = q[i] @ cands[j] / temperature
            if log_q is not None:
                value -= log_q[cand_ids[j]]
            logits.append((j == i, value))
        values = np.array([v for _, v in logits])
        positive = [v for is_pos, v in logits if is_pos][0]
        losses.append(np.log(np.exp(values - values.max()).sum()) + values.max() - positive)
    return np.array(losses)


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")


@pytest.mark.parametrize("accidental,logq,negatives,temperature,baskets",
                         list(itertools.product([False, True], [False, True], [0, 3], [0.05, 1.0], [False, True])))
def test_loss_matches_numpy(accidental, logq, negatives, temperature, baskets):
    rng = np.random.default_rng(7)
    num_items, batch = 10, 6
    ids = np.array([1, 4, 4, 7, 2, 1])  # items 1 and 4 appear twice
    # With baskets: rows 0-2 are one query's positives, rows 3-4 another's, row 5 a third.
    query_ids = np.array([0, 0, 0, 1, 1, 2]) if baskets else None
    q, c = _unit(rng, (batch, 8)), _unit(rng, (batch, 8))
    if baskets:
        q = q[query_ids]  # positives of one query share its vector
    neg = neg_ids = None
    if negatives:
        neg_ids = np.array([4, 9, 0])  # 4 is an accidental hit for rows 1 and 2
        neg = _unit(rng, (negatives, 8))
    counts = rng.integers(1, 50, size=num_items)
    log_q = mixed_log_q(counts, batch, negatives) if logq else None
    task = RetrievalTask(temperature=temperature, remove_accidental_hits=accidental, log_q=log_q)
    got = task(q, c, ids, neg, neg_ids, query_ids=query_ids).numpy()
    want = numpy_loss(q, c, ids, temperature, accidental, log_q, neg, neg_ids, query_ids)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mixed_log_q_is_a_distribution():
    counts = np.array([10, 0, 5, 85])
    for negatives in (0, 4):
        q = np.exp(mixed_log_q(counts, 8, negatives).astype(np.float64))
        q[counts == 0] = 0 if negatives == 0 else q[counts == 0]
        assert np.isclose(q.sum(), 1.0, atol=1e-6)
    # In-batch sampling alone follows the target frequencies.
    np.testing.assert_allclose(np.exp(mixed_log_q(counts, 8, 0))[[0, 2, 3]], [0.10, 0.05, 0.85], rtol=1e-5)


def numpy_full_softmax(q, items, ids, temperature, query_ids=None):
    losses = []
    for i in range(len(q)):
        logits = items @ q[i] / temperature
        keep = np.ones(len(items), bool)
        if query_ids is not None:
            for j in range(len(q)):
                if query_ids[j] == query_ids[i] and ids[j] != ids[i]:
                    keep[ids[j]] = False  # another positive of the same query is not a negative
        values = logits[keep]
        losses.append(np.log(np.exp(values - values.max()).sum()) + values.max() - logits[ids[i]])
    return np.array(losses)


@pytest.mark.parametrize("temperature,baskets", list(itertools.product([0.05, 1.0], [False, True])))
def test_full_softmax_matches_numpy(temperature, baskets):
    rng = np.random.default_rng(3)
    num_items = 12
    ids = np.array([1, 4, 4, 7, 2, 1])
    query_ids = np.array([0, 0, 1, 1, 1, 2]) if baskets else None
    q = _unit(rng, (6, 8))
    if baskets:
        q = q[query_ids]
    items = _unit(rng, (num_items, 8))
    task = RetrievalTask(temperature=temperature, log_q=mixed_log_q(np.ones(num_items), 6, 0))
    got = task.full_softmax(q, items, ids, query_ids=query_ids).numpy()
    np.testing.assert_allclose(got, numpy_full_softmax(q, items, ids, temperature, query_ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_negatives_with_log_q_match_numpy(sampling):
    """In-batch plus sampled negatives (mixed negative sampling), logQ for the sampling used."""
    rng = np.random.default_rng(11)
    num_items, batch, negatives = 20, 6, 5
    counts = rng.integers(1, 50, size=num_items)
    sampler = NegativeSampler(counts, sampling)
    neg_ids = sampler(tf.random.Generator.from_seed(1), negatives).numpy()
    assert neg_ids.shape == (negatives,) and ((0 <= neg_ids) & (neg_ids < num_items)).all()
    ids = np.array([1, 4, 4, 7, 2, 1])
    q, c, neg = _unit(rng, (batch, 8)), _unit(rng, (batch, 8)), _unit(rng, (negatives, 8))
    log_q = mixed_log_q(counts, batch, negatives, sampling)
    task = RetrievalTask(temperature=0.1, log_q=log_q)
    got = task(q, c, ids, neg, neg_ids).numpy()
    np.testing.assert_allclose(got, numpy_loss(q, c, ids, 0.1, True, log_q, neg, neg_ids), rtol=1e-4, atol=1e-4)
    # With popularity sampling the extra candidates follow the in-batch distribution: q = p.
    if sampling == "popularity":
        np.testing.assert_allclose(np.exp(log_q), counts / counts.sum(), rtol=1e-5)


def test_popularity_sampler_follows_the_counts():
    counts = np.array([0, 1, 0, 3, 6])
    draws = NegativeSampler(counts, "popularity")(tf.random.Generator.from_seed(5), 20_000).numpy()
    frequencies = np.bincount(draws, minlength=5) / len(draws)
    assert frequencies[0] == frequencies[2] == 0  # never an item without a count
    np.testing.assert_allclose(frequencies, counts / counts.sum(), atol=0.02)
    uniform = NegativeSampler(counts, "uniform")(tf.random.Generator.from_seed(5), 20_000).numpy()
    np.testing.assert_allclose(np.bincount(uniform, minlength=5) / len(uniform), 0.2, atol=0.02)


@pytest.mark.parametrize("full", [False, True])
def test_an_ensemble_trains_each_member_on_its_own_softmax(full):
    """With ``members`` > 1 the loss is the mean of each member's loss on its own unit vectors."""
    rng = np.random.default_rng(11)
    members, dim, num_items = 3, 4, 9
    ids = np.array([1, 4, 7, 2, 8])
    query_ids = np.array([0, 0, 1, 2, 3])
    q = (np.concatenate([_unit(rng, (5, dim)) for _ in range(members)], -1) / np.sqrt(members)).astype("float32")
    items = (np.concatenate([_unit(rng, (num_items, dim)) for _ in range(members)], -1)
             / np.sqrt(members)).astype("float32")
    log_q = mixed_log_q(rng.integers(1, 50, size=num_items), 5, 0)
    ensemble = RetrievalTask(temperature=0.1, log_q=None if full else log_q, members=members)
    single = RetrievalTask(temperature=0.1, log_q=None if full else log_q)
    parts = [slice(k * dim, (k + 1) * dim) for k in range(members)]
    if full:
        got = ensemble.full_softmax(q, items, ids, query_ids=query_ids).numpy()
        each = [single.full_softmax(q[:, p] * np.sqrt(members), items[:, p] * np.sqrt(members), ids,
                                    query_ids=query_ids).numpy() for p in parts]
    else:
        got = ensemble(q, items[ids], ids, query_ids=query_ids).numpy()
        each = [numpy_loss(q[:, p] * np.sqrt(members), items[ids][:, p] * np.sqrt(members), ids, 0.1, True,
                           log_q, None, None, query_ids) for p in parts]
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-4, atol=1e-4)
