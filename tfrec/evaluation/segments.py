"""Confidence intervals and segments of one evaluated split.

From the per-user metric values ``evaluate_split`` keeps, this adds to the split's
metrics (all with 95% paired-bootstrap intervals over users, ``tfrec.evaluation.bootstrap``):

- ``ci``: ``{protocol: {scorer: {metric: [low, high]}}}``;
- ``vs_baselines``: ``{protocol: {baseline: {metric: {"difference", "ci", "significant"}}}}``,
  the model minus each baseline on the same users;
- ``vs_protocols``: ``{scorer: {metric: {...}}}``, ``all`` minus ``explore`` for each scorer;
- ``segments``: ``{kind: {segment: {"users", "too_few_users", "metrics", "ci", "vs_baselines",
  "best"}}}`` under the ``all`` protocol, for these kinds:

  ``history_length``     users by the length of their history (quartiles of the split)
  ``target_popularity``  held-out items by training frequency: ``head`` (the most frequent
                         items, together a third of the training targets), ``torso`` (the
                         next third), ``tail`` (the rest that occur in training)
  ``target_history``     held-out items the user had bought before (``repeat``) or not (``new``)
  ``cold_start``         the ``cold_start`` protocol's users and values (new held-out items that
                         are never a training target; past items left out of the ranking)

A segment's ``best`` scorer (by Recall@20) is named only when it is significantly ahead of
the runner-up; a segment with fewer than ``min_users`` users is flagged ``too_few_users``
and has none. Coverage is a catalogue-wide figure, not a mean over users, and has no interval.
"""

from __future__ import annotations

import math

import numpy as np

from tfrec.data import EvalSplit
from tfrec.evaluation.bootstrap import PairedBootstrap

MODEL = "model"
POPULARITY_BANDS = ("head", "torso", "tail")
TARGET_KINDS = {"target_popularity": POPULARITY_BANDS, "target_history": ("repeat", "new"),
                "cold_start": ("cold_start",)}
BEST_BY = "recall@20"
"""The metric that names a segment's best scorer (the first cut-off when there is no 20)."""


def target_segments(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Item masks of the popularity bands (``head``, ``torso``, ``tail``), from training counts;
    items never a training target are in none of them (they are the cold-start slice)."""
    counts = np.asarray(train_counts, np.int64)
    order = np.argsort(-counts, kind="stable")
    share = np.cumsum(counts[order]) / max(counts.sum(), 1)
    # An item's band is that of the share of targets held by the items before it.
    before = np.concatenate([[0.0], share[:-1]])
    band = np.empty(len(counts), np.int64)
    band[order] = np.minimum((before * 3).astype(np.int64), 2)
    return {name: (band == i) & (counts > 0) for i, name in enumerate(POPULARITY_BANDS)}


def history_quartiles(split: EvalSplit) -> dict[str, np.ndarray]:
    """User masks of the history-length quartiles, labelled by their range of lengths."""
    lengths = np.array([len(h) for h in split.histories])
    if not len(lengths):
        return {}
    edges = np.unique(np.quantile(lengths, [0.25, 0.5, 0.75]).astype(np.int64))
    bins = np.searchsorted(edges, lengths, side="left")
    out = {}
    for b in range(len(edges) + 1):
        mask = bins == b
        if mask.any():
            low, high = lengths[mask].min(), lengths[mask].max()
            out[f"{low}–{high} items" if low != high else f"{low} items"] = mask
    return out


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class _Slice:
    """One user set with every scorer's per-user values, and their resampled means."""

    def __init__(self, boot: PairedBootstrap, by_scorer: dict, user_mask: np.ndarray | None = None):
        self.scorers = list(by_scorer)
        users, values = by_scorer[self.scorers[0]]
        keep = np.ones(len(users), bool) if user_mask is None else user_mask[users]
        self.users = int(keep.sum())
        self.names = [m for m in values if m != "users"] if self.users else []
        self.means: dict[str, dict[str, float]] = {}
        self.samples = self.observed = None
        if not self.users:
            return
        stacked = np.column_stack([by_scorer[s][1][m][keep] for s in self.scorers for m in self.names])
        self.samples = boot.means(users[keep], stacked)  # [resamples, scorers x metrics]
        self.observed = stacked.mean(0)
        self.means = {s: dict(zip(self.names, self.observed[self._columns(s, self.names)].tolist()))
                      for s in self.scorers}

    def _columns(self, scorer: str, metrics: list[str]) -> list[int]:
        base = self.scorers.index(scorer) * len(self.names)
        return [base + self.names.index(m) for m in metrics]

    def ci(self, boot: PairedBootstrap) -> dict:
        if self.samples is None:
            return {}
        low, high = boot.intervals(self.samples)
        return {s: {m: [_clean(low[c]), _clean(high[c])] for m, c in zip(self.names, self._columns(s, self.names))}
                for s in self.scorers}

    def vs(self, boot: PairedBootstrap, other: _Slice, scorer_a: str, scorer_b: str) -> dict:
        """``scorer_a`` here minus ``scorer_b`` in ``other``, per metric both have, paired by resample."""
        common = [m for m in self.names if m in other.names]
        if not common or scorer_a not in self.scorers or scorer_b not in other.scorers:
            return {}
        a, b = self._columns(scorer_a, common), other._columns(scorer_b, common)
        low, high = boot.intervals(self.samples[:, a] - other.samples[:, b])
        observed = self.observed[a] - other.observed[b]
        return {m: {"difference": _clean(d), "ci": [_clean(lo), _clean(hi)],
                    "significant": bool(lo > 0 or hi < 0)}
                for m, d, lo, hi in zip(common, observed, low, high)}

    def vs_baselines(self, boot: PairedBootstrap) -> dict:
        return {s: self.vs(boot, self, MODEL, s) for s in self.scorers if s != MODEL and self.samples is not None}


def _segment(boot: PairedBootstrap, piece: _Slice, min_users: int, best_by: str) -> dict:
    too_few = piece.users < min_users
    best = None
    if not too_few and len(piece.means) > 1:
        ranked = sorted(piece.means, key=lambda s: piece.means[s].get(best_by, float("nan")), reverse=True)
        lead = piece.vs(boot, piece, ranked[0], ranked[1]).get(best_by)
        best = ranked[0] if lead and lead["significant"] and lead["difference"] > 0 else None
    return {"users": piece.users, "too_few_users": too_few, "metrics": piece.means, "ci": piece.ci(boot),
            "vs_baselines": piece.vs_baselines(boot), "best": best}


def analyse_split(per_user: dict, split: EvalSplit, num_resamples: int, seed: int, min_users: int,
                  level: float = 0.95, segments: bool = True) -> dict:
    """``ci``, ``vs_baselines``, ``vs_protocols`` and, with ``segments``, ``segments`` of one split
    (see the module doc).

    ``per_user``: ``evaluate_split(..., keep_per_user=True).per_user`` (with target segments,
    for ``segments``).
    """
    boot = PairedBootstrap(len(split), num_resamples, seed, level)
    protocols = {p: _Slice(boot, per_user[p]) for p in ("all", "explore", "cold_start")}
    out = {
        "bootstrap": {"resamples": num_resamples, "level": level, "seed": seed, "unit": "user"},
        "ci": {p: piece.ci(boot) for p, piece in protocols.items()},
        "vs_baselines": {p: piece.vs_baselines(boot) for p, piece in protocols.items()},
        "vs_protocols": {s: protocols["all"].vs(boot, protocols["explore"], s, s) for s in protocols["all"].scorers},
    }
    if not segments:
        return out
    names = protocols["all"].names
    best_by = BEST_BY if BEST_BY in names else next(m for m in names if m.startswith("recall@"))
    found: dict[str, dict] = {"history_length": {}}
    for label, mask in history_quartiles(split).items():
        found["history_length"][label] = _segment(boot, _Slice(boot, per_user["all"], mask), min_users, best_by)
    for kind, labels in TARGET_KINDS.items():
        found[kind] = {label: _segment(boot, _Slice(boot, per_user[label]), min_users, best_by)
                       for label in labels if label in per_user}
    out["segments"] = found
    return out
