"""Ranking metrics over the full catalogue.

A ranking orders every catalogue item by score, ties broken by the lower item index
(the order ``tf.math.top_k`` returns). For a user with held-out items ``T``:

- ``recall@K``: hits in the top ``K`` over ``|T|``.
- ``ndcg@K``: binary gains, ``sum 1/log2(rank + 2)`` over the hits, divided by the ideal
  DCG of ``min(|T|, K)`` hits.
- ``mrr``: ``1 / (rank + 1)`` of the best-ranked held-out item, over the whole ranking.
- ``hitrate@10``: 1 if any held-out item is in the top 10.
- ``coverage@10``: share of the catalogue appearing in at least one user's top 10.
- ``ils@10`` (with ``item_vectors``): intra-list similarity, the mean cosine similarity
  of the pairs of items in a user's top 10; lower is a more diverse list. Measured with
  one set of vectors for every scorer (the pretrained text vectors), so lists compare.

Every metric but coverage is a mean over users. ``per_user()`` returns each user's values,
from which confidence intervals are bootstrapped (``tfrec.evaluation.bootstrap``).
"""

from __future__ import annotations

import numpy as np


def target_mask(targets: list[np.ndarray], num_items: int) -> np.ndarray:
    """``[len(targets), num_items]``: True where an item is one of the row's targets."""
    mask = np.zeros((len(targets), num_items), bool)
    rows = np.repeat(np.arange(len(targets)), [len(t) for t in targets])
    mask[rows, np.concatenate(targets) if len(targets) else np.zeros(0, np.int64)] = True
    return mask


def first_relevant_rank(scores: np.ndarray, targets: list[np.ndarray], mask: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each row's best-ranked target in the full tie-broken ranking."""
    mask = target_mask(targets, scores.shape[1]) if mask is None else mask
    # The best target: highest score, ties by lower index (argmax returns the first maximum).
    best = np.argmax(np.where(mask, scores, -np.inf), axis=1)
    value = scores[np.arange(len(scores)), best][:, None]
    columns = np.arange(scores.shape[1])
    return np.count_nonzero(scores > value, axis=1) + np.count_nonzero(
        (scores == value) & (columns < best[:, None]), axis=1)


def intra_list_similarity(vectors: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine similarity within each list of unit vectors ``[users, k, d]``."""
    k = vectors.shape[1]
    if k < 2:
        return np.zeros(len(vectors))
    gram = np.einsum("ukd,ujd->ukj", vectors, vectors)
    return (gram.sum((1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (k * (k - 1))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` scaled to unit length per row, as float32 (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(k) + 2.0)


class RankingMetrics:
    """Accumulates per-user metrics over batches.

    Args:
        num_items: the catalogue's size (for coverage).
        ks: the cut-offs of recall, hit rate and coverage (the largest bounds the lists).
        ndcg_ks: the cut-offs of NDCG.
        item_vectors: with them, the lists' intra-list similarity is measured; they are
            normalised into a copy.
        unit_item_vectors: already unit rows (``unit_rows``), kept as given, so that many
            metrics share one copy of a large catalogue's vectors.

    Example:

    >>> m = RankingMetrics(num_items=5, ks=(1, 2))
    >>> scores = np.array([[0.9, 0.8, 0.1, 0.0, 0.0]])
    >>> m.update(np.array([[0, 1]]), [np.array([1])], scores)
    >>> m.result()["recall@1"], m.result()["recall@2"], m.result()["mrr"]
    (0.0, 1.0, 0.5)
    """

    def __init__(self, num_items: int, ks=(10, 20, 50, 100), ndcg_ks=(10, 20),
                 item_vectors: np.ndarray | None = None, unit_item_vectors: np.ndarray | None = None):
        self.num_items = num_items
        self.item_vectors = unit_item_vectors
        if item_vectors is not None:
            self.item_vectors = unit_rows(item_vectors)
        self.ks = tuple(sorted(ks))
        self.ndcg_ks = tuple(k for k in ndcg_ks if k <= max(self.ks))
        self.max_k = max(self.ks)
        self._sums: dict[str, float] = {}
        self._curve = np.zeros(self.max_k)
        self._users = 0
        self._covered = np.zeros(num_items, bool)
        self._rows: list[np.ndarray] = []
        self._values: list[dict[str, np.ndarray]] = []

    def update(self, top: np.ndarray, targets: list[np.ndarray], scores: np.ndarray,
               users: np.ndarray | None = None) -> None:
        """Adds a batch: ``top [b, >=max_k]`` ranked item indices, held-out items, full scores.

        With ``users`` (each row's user index in the split) every user's values are kept
        for ``per_user()``.
        """
        if not targets:
            return
        top = top[:, : self.max_k]
        mask = target_mask(targets, scores.shape[1])
        hits = np.take_along_axis(mask, top, axis=1)
        sizes = np.array([len(t) for t in targets], np.float64)
        values: dict[str, np.ndarray] = {}
        for k in self.ks:
            values[f"recall@{k}"] = hits[:, :k].sum(1) / sizes
        for k in self.ndcg_ks:
            d = _discounts(k)
            dcg = (hits[:, :k] * d).sum(1)
            ideal = np.cumsum(d)[np.minimum(sizes, k).astype(int) - 1]
            values[f"ndcg@{k}"] = dcg / ideal
        values["mrr"] = 1.0 / (first_relevant_rank(scores, targets, mask) + 1.0)
        values["hitrate@10"] = hits[:, :10].any(1).astype(np.float64)
        if self.item_vectors is not None:
            values["ils@10"] = intra_list_similarity(self.item_vectors[top[:, :10]])
        for name, v in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(v.sum())
        if users is not None:
            self._rows.append(np.asarray(users, np.int64))
            self._values.append(values)
        curve = (np.cumsum(hits, axis=1) / sizes[:, None]).sum(0)
        self._curve[: len(curve)] += curve
        self._users += len(targets)
        self._covered[np.unique(top[:, :10])] = True

    @property
    def users(self) -> int:
        return self._users

    def recall_curve(self) -> list[float]:
        """Recall@K for K = 1 .. max_k."""
        return (self._curve / max(self._users, 1)).tolist()

    def per_user(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The users given to ``update`` and each one's value of every mean-over-users metric."""
        if not self._rows:
            return np.zeros(0, np.int64), {}
        names = self._values[0].keys()
        return np.concatenate(self._rows), {n: np.concatenate([v[n] for v in self._values]) for n in names}

    def result(self) -> dict[str, float]:
        out = {name: total / self._users for name, total in self._sums.items()} if self._users else {}
        out["coverage@10"] = float(self._covered.mean())
        out["users"] = self._users
        return out
