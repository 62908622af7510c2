"""Baselines measured on the same split, in the same run, as the model.

Every baseline is fitted on the training part of each user's history (the histories of
the validation records) and scores the whole catalogue for a batch of histories. Each
adds popularity as a tiny tie-breaker, so every list is complete and ties never depend
on item order.

- ``most_popular``: items by training interactions.
- ``repeat``: "buy it again": the user's own past items by count, ties by recency, then
  popularity; then everything else by popularity.
- ``item_cooccurrence``: items bought in the group right after a group holding the
  history's items, across all users (``P(b in next group | a in group)``), summed over
  the user's recent items.
- ``als``: implicit-feedback matrix factorisation (the ``implicit`` package); a user's
  factors are solved from their history at query time.
- ``text_zero_shot``: the pretrained text encoder without any training: the mean of the
  history's item text vectors against every item's text vector.
- ``text_recent``: the same encoder with the recency the model's text term uses: the item
  ``a`` places from the most recent weighted ``d ** a``, with ``d`` chosen on validation
  (``TEXT_RECENT_DECAYS``; ``d = 1`` is ``text_zero_shot``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from tfrec.data import EvalSplit, sample_users
from tfrec.evaluation.ranking import evaluate_split

TIE_BREAK = 1e-6
TEXT_RECENT_DECAYS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)
"""Decays ``text_recent`` tries on validation (1: the plain mean, as ``text_zero_shot``)."""
ITEM_CHUNK = 1 << 15
"""Items whose float32 vectors are widened to float64 at once when scoring (``dot64``)."""


def dot64(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``queries @ items.T`` in float64, with ``items`` kept in float32 (half the memory of a
    large catalogue) and widened a chunk of items at a time."""
    queries = np.asarray(queries, np.float64)
    out = np.empty((len(queries), len(items)), np.float64)
    for start in range(0, len(items), ITEM_CHUNK):
        chunk = items[start:start + ITEM_CHUNK].astype(np.float64)
        out[:, start:start + len(chunk)] = queries @ chunk.T
    return out


def interaction_counts(train: EvalSplit, num_items: int) -> np.ndarray:
    counts = np.zeros(num_items, np.int64)
    for history in train.histories:
        np.add.at(counts, history, 1)
    return counts


def popularity_prior(counts: np.ndarray) -> np.ndarray:
    """Popularity ranks scaled into ``[0, 1)``: most popular highest, ties by lower index."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    prior = np.empty(len(counts), np.float64)
    prior[order] = (len(counts) - 1 - np.arange(len(counts))) / len(counts)
    return prior


def user_item_matrix(histories: list[np.ndarray], num_items: int) -> sp.csr_matrix:
    """Counts of each item in each history, ``[len(histories), num_items]``."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), num_items))
    m.sum_duplicates()
    return m


class Baseline:
    name = "baseline"

    def fit(self, train: EvalSplit, num_items: int) -> Baseline:
        self.num_items = num_items
        self.prior = popularity_prior(interaction_counts(train, num_items))
        return self

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class MostPopular(Baseline):
    name = "most_popular"

    def scores(self, histories):
        return np.tile(self.prior, (len(histories), 1))


class Repeat(Baseline):
    name = "repeat"

    def scores(self, histories):
        out = np.tile(self.prior, (len(histories), 1))
        for row, history in enumerate(histories):
            if not len(history):
                continue
            items, counts = np.unique(history, return_counts=True)
            # Position of each item's last occurrence, 1 = oldest (first occurrence in the reversed history).
            _, from_end = np.unique(history[::-1], return_index=True)
            last = (len(history) - from_end).astype(np.float64)
            scale = len(history) + 2.0
            out[row, items] += 1.0 + counts * scale * scale + last * scale
        return out


class ItemCooccurrence(Baseline):
    name = "item_cooccurrence"

    def __init__(self, max_history: int = 50):
        self.max_history = max_history

    def fit(self, train, num_items):
        super().fit(train, num_items)
        sources, targets = [], []
        for history, groups in zip(train.histories, train.history_groups):
            boundaries = np.flatnonzero(np.diff(groups)) + 1
            parts = [np.unique(p) for p in np.split(history, boundaries)]
            for before, after in zip(parts, parts[1:]):
                sources.append(np.repeat(before, len(after)))
                targets.append(np.tile(after, len(before)))
        src = np.concatenate(sources) if sources else np.zeros(0, np.int64)
        dst = np.concatenate(targets) if targets else np.zeros(0, np.int64)
        counts = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(num_items, num_items))
        counts.sum_duplicates()
        totals = np.asarray(counts.sum(1)).ravel()
        self.transition = sp.diags(1.0 / np.maximum(totals, 1.0)) @ counts
        return self

    def scores(self, histories):
        recent = [np.unique(h[-self.max_history:]) for h in histories]
        indicator = user_item_matrix(recent, self.num_items)
        indicator.data[:] = 1.0
        return np.asarray((indicator @ self.transition).todense(), np.float64) + TIE_BREAK * self.prior


class Als(Baseline):
    name = "als"

    def __init__(self, factors: int = 64, iterations: int = 15, regularization: float = 0.05,
                 alpha: float = 1.0, seed: int = 0):
        self.params = dict(factors=factors, iterations=iterations, regularization=regularization,
                           alpha=alpha, random_state=seed)

    def fit(self, train, num_items):
        from implicit.cpu.als import AlternatingLeastSquares

        super().fit(train, num_items)
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(**self.params, num_threads=0)
            self.model.fit(user_item_matrix(train.histories, num_items), show_progress=False)
        return self

    def scores(self, histories):
        with threadpool_limits(1, "blas"):
            users = self.model.recalculate_user(
                np.arange(len(histories)), user_item_matrix(histories, self.num_items)
            )
        return dot64(users, self.model.item_factors) + TIE_BREAK * self.prior


class TextZeroShot(Baseline):
    name = "text_zero_shot"

    def __init__(self, text_vectors: np.ndarray, max_history: int = 50):
        self.text_vectors = np.asarray(text_vectors, np.float32)  # scored in float64 (``dot64``)
        self.max_history = max_history

    def scores(self, histories):
        queries = np.stack(
            [self.text_vectors[h[-self.max_history:]].astype(np.float64).mean(0) if len(h)
             else np.zeros(self.text_vectors.shape[1]) for h in histories]
        )
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        return dot64(queries, self.text_vectors) + TIE_BREAK * self.prior


def recency_queries(text_vectors: np.ndarray, histories: list[np.ndarray], decay: float,
                    max_history: int) -> np.ndarray:
    """Unit text queries ``[B, D]`` (float64): each history's last ``max_history`` item text
    vectors, the item ``a`` places from the most recent weighted ``decay ** a``; zeros for an
    empty history."""
    queries = np.zeros((len(histories), text_vectors.shape[1]), np.float64)
    for row, history in enumerate(histories):
        recent = history[-max_history:]
        if len(recent):
            weights = decay ** np.arange(len(recent) - 1, -1, -1, dtype=np.float64)
            queries[row] = weights @ text_vectors[recent].astype(np.float64)
    return queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)


class TextRecent(Baseline):
    """The frozen encoder's recency-weighted history vector against every item's text vector.

    ``fit`` chooses the decay among ``decays`` on the split it is given, whose targets are the
    validation groups: the one with the best ``explore`` ``metric`` (a tie keeps the larger
    decay), measured on a random sample of at most ``max_users`` of its users.

    Example:

    >>> vectors = np.eye(12, 4)
    >>> split = EvalSplit(np.array(["u"], object), [np.array([0, 1])], [np.array([0, 1])], [np.array([2])])
    >>> baseline = TextRecent(vectors, decays=(1.0, 0.5)).fit(split, 12)
    >>> baseline.decay, baseline.scores([np.array([0, 1])]).shape
    (1.0, (1, 12))
    """

    name = "text_recent"

    def __init__(self, text_vectors: np.ndarray, max_history: int = 50, metric: str = "ndcg@10",
                 decays=TEXT_RECENT_DECAYS, max_users: int | None = 5000, seed: int = 0, batch_size: int = 256):
        self.text_vectors = np.asarray(text_vectors, np.float32)  # scored in float64 (``dot64``)
        self.max_history, self.metric, self.decays = max_history, metric, tuple(decays)
        self.max_users, self.seed, self.batch_size = max_users, seed, batch_size
        self.decay, self.validation, self.users = 1.0, {}, 0

    def fit(self, train, num_items):
        super().fit(train, num_items)
        if len(self.decays) == 1:  # nothing to choose
            self.decay = self.decays[0]
            return self
        split = sample_users(train, self.max_users, self.seed)
        ks = sorted({int(self.metric.split("@")[1]) if "@" in self.metric else 10, 10})
        scorers = {f"{d:g}": (lambda histories, d=d: self._scores(histories, d)) for d in self.decays}
        result = evaluate_split(scorers, split, num_items, np.zeros(num_items, bool), ks, self.batch_size)
        self.validation = {d: float(result.metrics["explore"][f"{d:g}"][self.metric]) for d in self.decays}
        self.decay = max(self.decays, key=lambda d: (self.validation[d], d))
        self.users = len(split)
        return self

    def _scores(self, histories, decay):
        queries = recency_queries(self.text_vectors, histories, decay, self.max_history)
        return dot64(queries, self.text_vectors) + TIE_BREAK * self.prior

    def scores(self, histories):
        return self._scores(histories, self.decay)

    def record(self) -> dict:
        """The chosen decay and how it was chosen, for ``metrics.json``."""
        return {"decay": self.decay, "decays": list(self.decays),
                "chosen_by": f"validation, explore {self.metric} on {self.users} users (a tie keeps the larger decay)",
                "validation": {f"{d:g}": round(v, 6) for d, v in self.validation.items()}}
