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

from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from tfrec.data import EvalSplit, pad_histories
from tfrec.evaluation.metrics import RankingMetrics, unit_rows

ScoreFn = Callable[[list[np.ndarray]], np.ndarray]
PROTOCOLS = ("all", "explore", "cold_start")
SCORE_BUDGET = 1 << 24
"""Default most scores (users x items) one scorer holds at once: 128 MB as float64."""


def rows_per_batch(batch_size: int, num_items: int, score_budget: int = SCORE_BUDGET) -> int:
    """Users per evaluation batch: ``batch_size``, or fewer so that users x items stays
    within ``score_budget`` (at least one user)."""
    return max(1, min(batch_size, score_budget // max(num_items, 1)))


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row, by score then lower index.

    ``tf.math.top_k`` ranks equal scores by lower index, which is the ranking rule; it
    does every row at once, about twice as fast as a per-row partition and sort.
    """
    if np.isnan(scores).any():
        rows = np.flatnonzero(np.isnan(scores).any(axis=1))
        raise ValueError(f"{len(rows)} row(s) of scores hold NaN (first: row {rows[0]}): the scorer is broken, "
                         f"e.g. a model whose training diverged, and no ranking of them is meaningful")
    k = min(k, scores.shape[1])
    return tf.math.top_k(scores, k=k, sorted=True).indices.numpy().astype(np.int64)


def evaluate_split(
    scorers: Mapping[str, ScoreFn],
    split: EvalSplit,
    num_items: int,
    cold_items: np.ndarray,
    ks=(10, 20, 50, 100),
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    curves: dict | None = None,
    item_vectors: np.ndarray | None = None,
    target_segments: Mapping[str, np.ndarray] | None = None,
    per_user: dict | None = None,
    score_budget: int = SCORE_BUDGET,
) -> dict:
    """Metrics of every scorer under every protocol, plus the split's repeat share.

    When ``curves`` is a dict it receives ``{protocol: {scorer: [recall@1, ..., recall@max_k]}}``;
    with ``item_vectors`` the lists' intra-list similarity is measured with them. With
    ``target_segments`` (name -> boolean item mask) the result has a ``"segments"`` entry,
    ``{segment: {scorer: metrics}}``, for those and for ``repeat`` and ``new`` targets.
    When ``per_user`` is a dict it receives ``{protocol or segment: {scorer: (users, values)}}``
    (``RankingMetrics.per_user``), for bootstrapped confidence intervals.

    At most ``batch_size`` users are scored at once, and fewer when ``batch_size`` x
    ``num_items`` would pass ``score_budget`` scores, so memory per batch stays bounded
    with a large catalogue. Scores stay float32 when a scorer gives float32 (the ranking
    only compares them); other dtypes are ranked as float64.
    """
    keep = per_user is not None
    batch_size = rows_per_batch(batch_size, num_items, score_budget)
    unit = None if item_vectors is None else unit_rows(item_vectors)  # one copy shared by every scorer
    metrics = {p: {name: RankingMetrics(num_items, ks, unit_item_vectors=unit) for name in scorers}
               for p in PROTOCOLS}
    segment_masks = dict(target_segments or {})
    segment_names = ["repeat", "new", *segment_masks] if target_segments is not None else []
    segments = {s: {name: RankingMetrics(num_items, ks) for name in scorers} for s in segment_names}
    max_k = max(ks)
    targets_total = repeats = 0
    for start in range(0, len(split), batch_size):
        rows = range(start, min(start + batch_size, len(split)))
        histories = [split.histories[i] for i in rows]
        targets = [split.targets[i] for i in rows]
        new = [np.setdiff1d(t, h) for t, h in zip(targets, histories)]
        cold = [t[cold_items[t]] for t in new]
        targets_total += sum(len(t) for t in targets)
        repeats += sum(len(t) - len(n) for t, n in zip(targets, new))
        users = np.arange(rows.start, rows.stop)
        explore_rows = [i for i, t in enumerate(new) if len(t)]
        cold_rows = [i for i, t in enumerate(cold) if len(t)]
        segment_targets = {}
        if segment_names:
            segment_targets = {"repeat": [np.intersect1d(t, h) for t, h in zip(targets, histories)], "new": new}
            segment_targets |= {s: [t[mask[t]] for t in targets] for s, mask in segment_masks.items()}
        for name, score in scorers.items():
            scores = np.asarray(score(histories))
            if scores.dtype != np.float32:
                scores = scores.astype(np.float64, copy=False)
            top = top_k_indices(scores, max_k)
            metrics["all"][name].update(top, targets, scores, users if keep else None)
            for segment, chosen in segment_targets.items():
                r = [i for i, t in enumerate(chosen) if len(t)]
                segments[segment][name].update(top[r], [chosen[i] for i in r], scores[r], users[r] if keep else None)
            for row, history in enumerate(histories):
                scores[row, history] = -np.inf
            top = top_k_indices(scores, max_k)
            metrics["explore"][name].update(top[explore_rows], [new[i] for i in explore_rows], scores[explore_rows],
                                            users[explore_rows] if keep else None)
            metrics["cold_start"][name].update(top[cold_rows], [cold[i] for i in cold_rows], scores[cold_rows],
                                               users[cold_rows] if keep else None)
        if progress:
            progress(rows[-1] + 1)
    result = {p: {name: m.result() for name, m in by_name.items()} for p, by_name in metrics.items()}
    if segment_names:
        result["segments"] = {s: {name: m.result() for name, m in by_name.items()} for s, by_name in segments.items()}
    if keep:
        per_user.update({s: {name: m.per_user() for name, m in by_name.items()}
                         for s, by_name in (metrics | segments).items()})
    result["users"] = len(split)
    result["repeat_share"] = repeats / max(targets_total, 1)
    if curves is not None:
        curves.update({p: {name: m.recall_curve() for name, m in by_name.items()} for p, by_name in metrics.items()})
    return result


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
