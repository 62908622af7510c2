"""Exact evaluation: every user against the full catalogue, under both protocols.

- ``all``: every item of the held-out group is a target; history items may be ranked.
- ``explore``: the user's history items leave the ranking and the targets (discovery);
  users left with no target are skipped and counted.
- ``cold_start``: as ``explore``, with only targets that never occur in training.

Every scorer (the model and each baseline) scores the same batch of users, so the
numbers in one table come from the same split, the same users and the same ranking
rule (score, ties by lower item index).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from tfrec.data import EvalSplit
from tfrec.evaluation.metrics import RankingMetrics

ScoreFn = Callable[[list[np.ndarray]], np.ndarray]
PROTOCOLS = ("all", "explore", "cold_start")


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best items per row, by score then lower index."""
    k = min(k, scores.shape[1])
    out = np.empty((scores.shape[0], k), np.int64)
    for row, s in enumerate(scores):
        if k < len(s):
            threshold = np.partition(s, len(s) - k)[len(s) - k]
            candidates = np.flatnonzero(s >= threshold)
        else:
            candidates = np.arange(len(s))
        order = np.lexsort((candidates, -s[candidates]))
        out[row] = candidates[order[:k]]
    return out


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
) -> dict:
    """Metrics of every scorer under every protocol, plus the split's repeat share.

    When ``curves`` is a dict it receives ``{protocol: {scorer: [recall@1, ..., recall@max_k]}}``;
    with ``item_vectors`` the lists' intra-list similarity is measured with them.
    """
    metrics = {p: {name: RankingMetrics(num_items, ks, item_vectors=item_vectors) for name in scorers}
               for p in PROTOCOLS}
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
        explore_rows = [i for i, t in enumerate(new) if len(t)]
        cold_rows = [i for i, t in enumerate(cold) if len(t)]
        for name, score in scorers.items():
            scores = np.asarray(score(histories), np.float64)
            metrics["all"][name].update(top_k_indices(scores, max_k), targets, scores)
            for row, history in enumerate(histories):
                scores[row, history] = -np.inf
            top = top_k_indices(scores, max_k)
            metrics["explore"][name].update(top[explore_rows], [new[i] for i in explore_rows], scores[explore_rows])
            metrics["cold_start"][name].update(top[cold_rows], [cold[i] for i in cold_rows], scores[cold_rows])
        if progress:
            progress(rows[-1] + 1)
    result = {p: {name: m.result() for name, m in by_name.items()} for p, by_name in metrics.items()}
    result["users"] = len(split)
    result["repeat_share"] = repeats / max(targets_total, 1)
    if curves is not None:
        curves.update({p: {name: m.recall_curve() for name, m in by_name.items()} for p, by_name in metrics.items()})
    return result


def format_table(result: dict, split: str, metric_names=("recall@10", "recall@20", "recall@50", "recall@100",
                                                            "ndcg@10", "ndcg@20", "mrr", "hitrate@10",
                                                            "coverage@10", "ils@10")) -> str:
    """A plain-text table of one split's metrics, one row per (protocol, scorer)."""
    lines = [f"{split}: {result['users']} users, repeat share of targets {result['repeat_share']:.3f}"]
    header = f"{'protocol':<11}{'scorer':<19}{'users':>6}" + "".join(f"{m:>12}" for m in metric_names)
    lines += [header, "-" * len(header)]
    for protocol in PROTOCOLS:
        for name, values in result[protocol].items():
            cells = "".join(f"{values.get(m, float('nan')):>12.4f}" for m in metric_names)
            lines.append(f"{protocol:<11}{name:<19}{values['users']:>6}{cells}")
    return "\n".join(lines)
