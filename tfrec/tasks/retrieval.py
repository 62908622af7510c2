"""In-batch softmax for retrieval, with the corrections sampled softmax needs.

Each row is a (query, positive item) pair. The other positives of the batch serve as
negatives for a query (optionally with extra items sampled uniformly from the
catalogue), and the loss is the softmax cross-entropy of the positive among all those
candidates. A query may have several positives (every item of a basket): rows that
share a ``query_id`` are one query, and its other positives are never its negatives.

- **temperature**: logits are ``query . candidate / temperature``.
- **accidental hits**: a candidate that *is* the query's positive item (the same item
  twice in a batch, or a sampled negative that happens to be it) is not a negative,
  so it is masked out.
- **logQ correction** (Yi et al., RecSys 2019): popular items appear as in-batch
  negatives far more often than rare ones, which biases the model against them. The
  logit of each candidate ``j`` is reduced by ``log q_j``, its probability of being
  sampled. With ``B`` in-batch candidates drawn from the target frequencies ``p`` and
  ``M`` extra ones drawn from ``s`` (uniform ``1 / N``, or the popularity ``p`` itself),
  ``q_j = (B p_j + M s_j) / (B + M)``: mixed negative sampling (Yang et al., WWW 2020)
  with uniform ``s``.

When the catalogue is small enough, ``full_softmax`` drops sampling altogether: every
item is a candidate for every query, so there is no sampling bias to correct.

With ``members > 1`` the vectors are ensembles (see ``ItemTower``): each is the
concatenation of ``members`` unit vectors scaled by ``1 / sqrt(members)``. Every member is
trained on its own softmax and the losses are averaged, so the members learn independently
and their averaged scores form the ensemble.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec.models.ensemble import split_members

_MASKED = -1e9


def mixed_log_q(counts: np.ndarray, batch_size: int, num_random_negatives: int,
                sampling: str = "uniform") -> np.ndarray:
    """``log q`` of each item under the mixture of in-batch and extra sampled candidates.

    ``sampling``: how the extra negatives are drawn, ``uniform`` or ``popularity`` (in
    proportion to ``counts``, as ``NegativeSampler`` does).
    """
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"sampling must be uniform or popularity, got {sampling!r}")
    counts = np.asarray(counts, np.float64)
    p = counts / max(counts.sum(), 1.0)
    n = len(counts)
    s = np.full(n, 1.0 / n) if sampling == "uniform" else p
    q = (batch_size * p + num_random_negatives * s) / (batch_size + num_random_negatives)
    return np.log(np.maximum(q, 1e-12)).astype(np.float32)


class NegativeSampler:
    """Draws extra negatives, uniformly or in proportion to the items' target counts.

    Draws come from a ``tf.random.Generator`` (checkpointed with the model), so a resumed
    run draws what the interrupted one would have.
    """

    def __init__(self, counts: np.ndarray, sampling: str = "uniform"):
        if sampling not in ("uniform", "popularity"):
            raise ValueError(f"sampling must be uniform or popularity, got {sampling!r}")
        counts = np.asarray(counts, np.float64)
        self.num_items = len(counts)
        self.sampling = sampling
        cdf = np.cumsum(counts / max(counts.sum(), 1.0))
        self.cdf = tf.constant(cdf, tf.float64)

    def __call__(self, generator: tf.random.Generator, num: int) -> tf.Tensor:
        if self.sampling == "uniform":
            return generator.uniform([num], 0, self.num_items, dtype=tf.int64)
        u = generator.uniform([num], 0.0, 1.0, dtype=tf.float64)
        ids = tf.searchsorted(self.cdf, u, side="right")
        return tf.minimum(tf.cast(ids, tf.int64), self.num_items - 1)


class RetrievalTask:
    """Computes the per-example in-batch softmax loss.

    Args:
        temperature: divides the dot products.
        remove_accidental_hits: mask candidates equal to the query's positive item.
        log_q: ``[N]`` log sampling probabilities (see ``mixed_log_q``), or ``None`` for
            no logQ correction.
        members: ensemble members in the vectors (see the module's docstring).

    Example:

    >>> task = RetrievalTask(temperature=0.1)
    >>> q = tf.math.l2_normalize(tf.random.normal([4, 8]), -1)
    >>> task(q, q, tf.constant([0, 1, 2, 3])).shape
    TensorShape([4])
    """

    def __init__(self, temperature: float = 0.05, remove_accidental_hits: bool = True,
                 log_q: np.ndarray | None = None, members: int = 1):
        self.temperature = temperature
        self.remove_accidental_hits = remove_accidental_hits
        self.log_q = None if log_q is None else tf.constant(log_q, tf.float32)
        self.members = members

    def _mean_over_members(self, loss, *vectors):
        """``loss(*member_vectors)`` averaged over the members; ``None`` vectors stay ``None``."""
        if self.members == 1:
            return loss(*vectors)
        views = [None if v is None else split_members(v, self.members) for v in vectors]
        return tf.add_n([loss(*[None if v is None else v[k] for v in views])
                         for k in range(self.members)]) / float(self.members)

    def logits(self, queries, candidates, candidate_ids, negatives=None, negative_ids=None, query_ids=None):
        """Corrected logits ``[B, B + M]``; column ``i`` of row ``i`` is the positive.

        ``query_ids [B]``: rows with the same id are positives of one query; each masks
        the others' positives (``None``: every row is its own query).
        """
        candidate_ids = tf.cast(candidate_ids, tf.int64)
        all_candidates, all_ids = candidates, candidate_ids
        if negatives is not None:
            all_candidates = tf.concat([candidates, negatives], 0)
            all_ids = tf.concat([candidate_ids, tf.cast(negative_ids, tf.int64)], 0)
        logits = tf.matmul(queries, all_candidates, transpose_b=True) / self.temperature
        if self.log_q is not None:
            logits -= tf.gather(self.log_q, all_ids)[None, :]
        batch = tf.shape(queries)[0]
        extra = tf.shape(all_ids)[0] - batch
        positive = tf.pad(tf.eye(batch, dtype=tf.bool), [[0, 0], [0, extra]])
        masked = tf.zeros_like(positive)
        if self.remove_accidental_hits:
            masked |= tf.equal(candidate_ids[:, None], all_ids[None, :])
        if query_ids is not None:
            query_ids = tf.cast(query_ids, tf.int64)
            masked |= tf.pad(tf.equal(query_ids[:, None], query_ids[None, :]), [[0, 0], [0, extra]])
        return tf.where(masked & ~positive, _MASKED, logits)

    def __call__(self, queries, candidates, candidate_ids, negatives=None, negative_ids=None, query_ids=None):
        labels = tf.range(tf.shape(queries)[0])

        def loss(q, c, n):
            logits = self.logits(q, c, candidate_ids, n, negative_ids, query_ids)
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

        return self._mean_over_members(loss, queries, candidates, negatives)

    def full_softmax(self, queries, item_vectors, positive_ids, query_ids=None):
        """Cross-entropy of each positive against the whole catalogue ``item_vectors [N, d]``.

        Row ``i`` is query ``queries[i]`` with positive item ``positive_ids[i]``. Rows with
        the same ``query_ids`` are one query's positives: each leaves the others out of its
        softmax. No logQ correction: nothing is sampled.
        """
        positive_ids = tf.cast(positive_ids, tf.int64)
        indices = None
        if query_ids is not None:
            query_ids = tf.cast(query_ids, tf.int64)
            same = tf.equal(query_ids[:, None], query_ids[None, :]) & tf.not_equal(
                positive_ids[:, None], positive_ids[None, :])
            pairs = tf.where(same)  # (row, other row of the same query)
            indices = tf.stack([pairs[:, 0], tf.gather(positive_ids, pairs[:, 1])], axis=1)

        def loss(q, items):
            logits = tf.matmul(q, items, transpose_b=True) / self.temperature
            if indices is not None:
                logits = tf.tensor_scatter_nd_update(
                    logits, indices, tf.fill([tf.shape(indices)[0]], tf.constant(_MASKED, logits.dtype)))
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positive_ids, logits=logits)

        return self._mean_over_members(loss, queries, item_vectors)
