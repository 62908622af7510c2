"""Exact top-k under one memory budget, for evaluation and serving alike.

Every exact ranking in tfrec follows one rule: by score, ties by lower item index (the
order ``tf.math.top_k`` returns). Scoring every item for many queries at once would hold
queries x items scores in memory; ``SCORE_BUDGET`` bounds how many are held at once, and
the queries are scored in chunks of ``rows_per_batch`` rows.

>>> import numpy as np
>>> top_k_indices(np.array([[0.5, 0.9, 0.5, 0.9, 0.1]]), 3)
array([[1, 3, 0]])
>>> items = np.eye(4, dtype=np.float32)
>>> exact_top_k(np.array([[0.1, 0.9, 0.0, 0.5]], np.float32), items, 2)
array([[1, 3]])
>>> rows_per_batch(256, 1_000_000, score_budget=1 << 24)
16
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SCORE_BUDGET = 1 << 24
"""Default most scores (queries x items) held at once: 64 MB as float32, 128 MB as float64."""


def rows_per_batch(batch_size: int | None, num_items: int, score_budget: int = SCORE_BUDGET) -> int:
    """Queries per batch: ``batch_size``, or fewer so that queries x items stays within
    ``score_budget`` (at least one query). ``batch_size`` ``None``: as many as the budget allows."""
    rows = max(1, score_budget // max(num_items, 1))
    return rows if batch_size is None else min(batch_size, rows)


def top_k_indices(scores, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row of ``scores`` (an array or tensor), by score then lower index.

    ``tf.math.top_k`` ranks equal scores by lower index, which is the ranking rule; it
    does every row at once, about twice as fast as a per-row partition and sort.

    Raises:
        ValueError: when a row holds NaN (a broken scorer, e.g. a model whose training diverged).
    """
    scores = tf.convert_to_tensor(scores)
    broken = tf.reduce_any(tf.math.is_nan(scores), axis=1)
    if bool(tf.reduce_any(broken)):
        rows = np.flatnonzero(broken.numpy())
        raise ValueError(f"{len(rows)} row(s) of scores hold NaN (first: row {rows[0]}): the scorer is broken, "
                         f"e.g. a model whose training diverged, and no ranking of them is meaningful")
    k = min(k, int(scores.shape[1]))
    return tf.math.top_k(scores, k=k, sorted=True).indices.numpy().astype(np.int64)


class ExactTopK:
    """Exact top-``k`` items by dot product with ``item_vectors``, queries scored in chunks.

    Args:
        item_vectors: the catalogue's vectors, ``[N, d]`` (kept as one float32 tensor).
        score_budget: most scores held at once; a chunk has ``score_budget // N`` queries.
    """

    def __init__(self, item_vectors, score_budget: int = SCORE_BUDGET):
        self.item_vectors = tf.constant(item_vectors, tf.float32)
        self.rows = rows_per_batch(None, int(self.item_vectors.shape[0]), score_budget)

    def __call__(self, queries, k: int) -> np.ndarray:
        """The ``k`` best item indices of each query ``[Q, d]``, ``[Q, k]`` (int64)."""
        queries = tf.convert_to_tensor(queries, tf.float32)
        chunks = [top_k_indices(tf.matmul(queries[i:i + self.rows], self.item_vectors, transpose_b=True), k)
                  for i in range(0, int(queries.shape[0]), self.rows)]
        if not chunks:
            return np.zeros((0, min(k, int(self.item_vectors.shape[0]))), np.int64)
        return np.concatenate(chunks)


def exact_top_k(queries, item_vectors, k: int, score_budget: int = SCORE_BUDGET) -> np.ndarray:
    """Exact top-``k`` item indices by dot product, ``[Q, k]``: ``ExactTopK(item_vectors)(queries, k)``."""
    return ExactTopK(item_vectors, score_budget)(queries, k)
