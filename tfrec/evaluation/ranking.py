"""Exact evaluation: every user against the full catalogue, under both protocols.

- ``all``: every item of the held-out group is a target; history items may be ranked.
- ``explore``: the user's history items leave the ranking and the targets (discovery);
  users left with no target are skipped and counted.
- ``cold_start``: as ``explore``, with only targets that never occur in training.

Every scorer (the model and each baseline) scores the same batch of users, so the
numbers in one table come from the same split, the same users and the same ranking
rule (score, ties by lower item index).

Target segments measure the ``all`` ranking on part of each user's held-out items:
``repeat`` (items in the user's history), ``new`` (the others), and one segment per
item mask given (e.g. popularity bands); a user with no target in a segment is not
counted in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from tfrec.data import EvalSplit, pad_histories
from tfrec.evaluation.metrics import RankingMetrics, unit_rows
from tfrec.topk import SCORE_BUDGET, rows_per_batch, top_k_indices

ScoreFn = Callable[[list[np.ndarray]], np.ndarray]
PROTOCOLS = ("all", "explore", "cold_start")


@dataclasses.dataclass
class SplitResult:
    """What ``evaluate_split`` measures on one split."""

    metrics: dict
    """``{protocol: {scorer: metrics}}``, ``"users"``, ``"repeat_share"`` and, with target
    segments, ``"segments"``: ``{segment: {scorer: metrics}}``."""
    curves: dict
    """``{protocol: {scorer: [recall@1, ..., recall@max_k]}}``."""
    per_user: dict | None = None
    """``{protocol or segment: {scorer: (users, values)}}`` (``RankingMetrics.per_user``),
    for bootstrapped confidence intervals; ``None`` unless asked for."""


@dataclasses.dataclass
class _Batch:
    """One batch of users and their targets under each protocol and segment."""

    histories: list[np.ndarray]
    targets: list[np.ndarray]
    users: np.ndarray
    new: list[np.ndarray]
    """Targets not in the history (``explore``)."""
    cold: list[np.ndarray]
    """New targets never seen in training (``cold_start``)."""
    segments: dict[str, list[np.ndarray]]

    @classmethod
    def of(cls, split: EvalSplit, rows: range, cold_items: np.ndarray,
           segment_masks: Mapping[str, np.ndarray] | None) -> _Batch:
        histories = [split.histories[i] for i in rows]
        targets = [split.targets[i] for i in rows]
        new = [np.setdiff1d(t, h) for t, h in zip(targets, histories)]
        segments = {}
        if segment_masks is not None:
            segments = {"repeat": [np.intersect1d(t, h) for t, h in zip(targets, histories)], "new": new}
            segments |= {s: [t[mask[t]] for t in targets] for s, mask in segment_masks.items()}
        return cls(histories, targets, np.arange(rows.start, rows.stop), new,
                   [t[cold_items[t]] for t in new], segments)


class _SplitMeter:
    """The metrics of every scorer under every protocol and segment, batch after batch."""

    def __init__(self, names: list[str], num_items: int, ks, item_vectors: np.ndarray | None,
                 segment_names: list[str], keep_per_user: bool):
        unit = None if item_vectors is None else unit_rows(item_vectors)  # one copy shared by every scorer
        self.protocols = {p: {name: RankingMetrics(num_items, ks, unit_item_vectors=unit) for name in names}
                          for p in PROTOCOLS}
        self.segments = {s: {name: RankingMetrics(num_items, ks) for name in names} for s in segment_names}
        self.max_k, self.keep = max(ks), keep_per_user
        self.targets_total = self.repeats = 0

    def update(self, name: str, scores: np.ndarray, batch: _Batch) -> None:
        """Ranks one scorer's ``scores`` of ``batch`` under each protocol and segment."""
        def measure(metrics: RankingMetrics, top: np.ndarray, targets: list[np.ndarray]) -> None:
            rows = [i for i, t in enumerate(targets) if len(t)]  # users with a target here
            metrics.update(top[rows], [targets[i] for i in rows], scores[rows],
                           batch.users[rows] if self.keep else None)

        top = top_k_indices(scores, self.max_k)
        self.protocols["all"][name].update(top, batch.targets, scores, batch.users if self.keep else None)
        for segment, chosen in batch.segments.items():
            measure(self.segments[segment][name], top, chosen)
        for row, history in enumerate(batch.histories):
            scores[row, history] = -np.inf
        top = top_k_indices(scores, self.max_k)
        measure(self.protocols["explore"][name], top, batch.new)
        measure(self.protocols["cold_start"][name], top, batch.cold)

    def count(self, batch: _Batch) -> None:
        """Counts the batch's targets and how many of them repeat a history item."""
        self.targets_total += sum(len(t) for t in batch.targets)
        self.repeats += sum(len(t) - len(n) for t, n in zip(batch.targets, batch.new))

    def result(self, users: int) -> SplitResult:
        def results(groups: dict) -> dict:
            return {group: {name: m.result() for name, m in by_name.items()} for group, by_name in groups.items()}

        metrics = results(self.protocols)
        if self.segments:
            metrics["segments"] = results(self.segments)
        metrics["users"] = users
        metrics["repeat_share"] = self.repeats / max(self.targets_total, 1)
        curves = {p: {name: m.recall_curve() for name, m in by_name.items()} for p, by_name in self.protocols.items()}
        per_user = None
        if self.keep:
            per_user = {s: {name: m.per_user() for name, m in by_name.items()}
                        for s, by_name in (self.protocols | self.segments).items()}
        return SplitResult(metrics, curves, per_user)


def evaluate_split(
    scorers: Mapping[str, ScoreFn],
    split: EvalSplit,
    num_items: int,
    cold_items: np.ndarray,
    ks=(10, 20, 50, 100),
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    item_vectors: np.ndarray | None = None,
    target_segments: Mapping[str, np.ndarray] | None = None,
    keep_per_user: bool = False,
    score_budget: int = SCORE_BUDGET,
) -> SplitResult:
    """Metrics of every scorer under every protocol, plus the split's repeat share.

    At most ``batch_size`` users are scored at once, and fewer when ``batch_size`` x
    ``num_items`` would pass ``score_budget`` scores, so memory per batch stays bounded
    with a large catalogue. Scores stay float32 when a scorer gives float32 (the ranking
    only compares them); other dtypes are ranked as float64.

    Args:
        scorers: name -> a function from a batch of histories to scores ``[B, num_items]``.
        split: the users, their histories and held-out targets.
        num_items: the catalogue's size.
        cold_items: a boolean mask of the items never seen in training (``cold_start``).
        ks: the cut-offs of the metrics.
        batch_size: most users scored at once.
        progress: called with the number of users done after each batch.
        item_vectors: with them, the lists' intra-list similarity (``ils@k``) is measured.
        target_segments: name -> boolean item mask; with it the metrics have a
            ``"segments"`` entry for those and for ``repeat`` and ``new`` targets.
        keep_per_user: keep every user's metric values (``SplitResult.per_user``).
        score_budget: most scores held at once.

    Returns:
        A ``SplitResult``: the metrics, the recall curves and, when asked, per-user values.
    """
    batch_size = rows_per_batch(batch_size, num_items, score_budget)
    segment_names = ["repeat", "new", *(target_segments or {})] if target_segments is not None else []
    meter = _SplitMeter(list(scorers), num_items, ks, item_vectors, segment_names, keep_per_user)
    for start in range(0, len(split), batch_size):
        rows = range(start, min(start + batch_size, len(split)))
        batch = _Batch.of(split, rows, cold_items, target_segments)
        meter.count(batch)
        for name, score in scorers.items():
            scores = np.asarray(score(batch.histories))
            if scores.dtype != np.float32:
                scores = scores.astype(np.float64, copy=False)
            meter.update(name, scores, batch)
        if progress:
            progress(rows[-1] + 1)
    return meter.result(len(split))


def format_table(result: dict, split: str, metric_names=("recall@10", "recall@20", "recall@50", "recall@100",
                                                            "ndcg@10", "ndcg@20", "mrr", "hitrate@10",
                                                            "coverage@10", "ils@10")) -> str:
    """A plain-text table of one split's metrics, one row per (protocol, scorer)."""
    total = result.get("users_total", result["users"])
    measured = f"{result['users']} users" + ("" if total == result["users"] else f" of {total} (sample)")
    lines = [f"{split}: {measured}, repeat share of targets {result['repeat_share']:.3f}"]
    header = f"{'protocol':<11}{'scorer':<19}{'users':>6}" + "".join(f"{m:>12}" for m in metric_names)
    lines += [header, "-" * len(header)]
    for protocol in PROTOCOLS:
        for name, values in result[protocol].items():
            cells = "".join(f"{values.get(m, float('nan')):>12.4f}" for m in metric_names)
            lines.append(f"{protocol:<11}{name:<19}{values['users']:>6}{cells}")
    return "\n".join(lines)


def model_scorer(model, item_vectors: tf.Tensor, repeat: bool = True):
    """A score function for the evaluator: histories -> scores of the whole catalogue.

    ``model`` is a ``TwoTowerModel``; ``repeat`` adds its repeat-aware term.
    """
    score = tf.function(
        lambda history: model.scores(history, item_vectors, repeat=repeat),
        input_signature=[tf.TensorSpec([None, None], tf.int64)],
        reduce_retracing=True,
    )

    def scores(histories: list[np.ndarray]) -> np.ndarray:
        width = max(1, max(len(h) for h in histories))
        return score(tf.constant(pad_histories(histories, width))).numpy()

    return scores
