"""Fitting the text term's weight on validation, after training.

A model whose towers carry the fixed text part (``model.text_term``) scores
``(1 - w) * two-tower similarity + w * zero-shot text similarity``. Training leaves w at 0;
``fit_text_weight`` then tries each weight of ``WEIGHTS`` on the validation users, under the
``explore`` protocol and the early-stopping metric, and keeps the best. Only the query side
changes with w, so the catalogue's vectors are computed once.
"""

from __future__ import annotations

import logging

import numpy as np

from tfrec.data import EvalSplit
from tfrec.evaluation.ranking import evaluate_split, model_scorer
from tfrec.topk import SCORE_BUDGET

log = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
"""Text weights tried on validation (0: the two-tower score alone)."""


def fit_text_weight(model, split: EvalSplit, metric: str, batch_size: int = 256,
                    score_budget: int = SCORE_BUDGET, weights=WEIGHTS) -> dict[float, float]:
    """Sets the user tower's ``text_weight`` to the weight with the best validation ``metric``.

    Args:
        model: a trained ``TwoTowerModel`` whose user tower has a text part (``text_dim > 0``).
        split: the validation users to measure on.
        metric: an ``explore`` metric of the evaluation, e.g. ``"ndcg@10"``.
        batch_size: users scored at once.
        score_budget: most users x items scores held at once.
        weights: the weights tried, in order; a tie keeps the earlier (smaller) one.

    Returns:
        ``{weight: validation metric}`` for every weight tried.
    """
    ks = sorted({int(metric.split("@")[1]) if "@" in metric else 10, 10})
    item_vectors = model.item_vectors()
    measured = {}
    for weight in weights:
        model.user_tower.text_weight.assign(weight)
        scorer = model_scorer(model, item_vectors, repeat=False)
        result = evaluate_split({"model": scorer}, split, model.num_items, np.zeros(model.num_items, bool), ks,
                                batch_size, score_budget=score_budget)
        measured[weight] = float(result.metrics["explore"]["model"][metric])
    best = max(measured, key=lambda w: (measured[w], -w))
    model.user_tower.text_weight.assign(best)
    log.info("Text term fitted on %d validation users: weight %.2f (explore %s %s)", len(split), best, metric,
             ", ".join(f"{w:.1f}: {v:.4f}" for w, v in measured.items()))
    return measured
