"""Fitting the text term's weight on validation, after training.

A model whose towers carry the fixed text part (``model.text_term``) scores
``(1 - w) * two-tower similarity + w * zero-shot text similarity``. Training leaves w at 0;
``fit_text_weight`` then tries each weight of ``WEIGHTS`` on the validation users, under the
``explore`` protocol and the early-stopping metric, and keeps the best.

The query at weight w is the query at 0.5 with its trained part scaled by ``2 (1 - w)`` and its
text part by ``2 w``, so the user tower runs once per batch of users for all the weights, and
the catalogue's vectors once in all.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfrec.data import EvalSplit
from tfrec.data.readers import pad_histories
from tfrec.evaluation.ranking import evaluate_split
from tfrec.topk import SCORE_BUDGET

log = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
"""Text weights tried on validation (0: the two-tower score alone)."""


def weighted_scorers(model, item_vectors: tf.Tensor, weights) -> dict:
    """One score function per text weight (``{weight: histories -> scores}``) that share the
    user tower's pass: the queries of a batch are computed for the first weight asked and
    reused by the others while the batch (the same ``histories`` object) is the same.

    Leaves the model's ``text_weight`` at 0.5.
    """
    tower = model.user_tower
    queries = tf.function(lambda history: model.query_vectors(history, item_vectors, training=False),
                          input_signature=[tf.TensorSpec([None, None], tf.int64)], reduce_retracing=True)
    batch = {}

    def halves(histories):
        if batch.get("histories") is not histories:
            width = max(1, max(len(h) for h in histories))
            tower.text_weight.assign(0.5)
            batch.update(histories=histories, queries=queries(tf.constant(pad_histories(histories, width))))
        return batch["queries"]

    def scorer(weight):
        scale = tf.concat([tf.fill([tower.trained_dim], 2.0 * (1.0 - weight)),
                           tf.fill([tower.text_dim], 2.0 * weight)], 0)
        return lambda histories: tf.matmul(halves(histories) * scale, item_vectors, transpose_b=True).numpy()

    return {weight: scorer(weight) for weight in weights}


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
    scorers = weighted_scorers(model, model.item_vectors(), weights)
    result = evaluate_split({str(w): score for w, score in scorers.items()}, split, model.num_items,
                            np.zeros(model.num_items, bool), ks, batch_size, score_budget=score_budget)
    measured = {w: float(result.metrics["explore"][str(w)][metric]) for w in weights}
    best = max(measured, key=lambda w: (measured[w], -w))
    model.user_tower.text_weight.assign(best)
    log.info("Text term fitted on %d validation users: weight %.2f (explore %s %s)", len(split), best, metric,
             ", ".join(f"{w:.1f}: {v:.4f}" for w, v in measured.items()))
    return measured
