"""Fitting the text term's weight and decay on validation, after training.

A model whose towers carry the fixed text part (``model.text_term``) scores
``(1 - w) * two-tower similarity + w * zero-shot text similarity``, where the text query
weighs the item ``a`` places from the most recent by ``d ** a``. Training leaves w at 0;
``fit_text_weight`` then tries each pair of ``WEIGHTS`` and ``DECAYS`` on the validation users,
under the ``explore`` protocol and the early-stopping metric, and keeps the best.

Per batch of users the user tower runs once, for the trained part; each decay's text query
is a weighted sum of the history's text vectors, and each pair's scores are a weighted sum
of the two similarities.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfrec.data import EvalSplit
from tfrec.data.readers import pad_histories
from tfrec.evaluation.baselines import TEXT_RECENT_DECAYS
from tfrec.evaluation.ranking import evaluate_split
from tfrec.topk import SCORE_BUDGET

log = logging.getLogger(__name__)

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Text weights tried on validation (0: the two-tower score alone)."""

DECAYS = TEXT_RECENT_DECAYS
"""Text query decays tried on validation (1: the plain mean of the recent items), the same
grid as the ``text_recent`` baseline's: the coarser grid's edge, 0.3, was picked in most runs."""


def _pairs(weights, decays) -> list[tuple[float, float]]:
    """Every (weight, decay), with weight 0 once (the decay changes nothing there)."""
    return [(w, d) for w in weights for d in decays if w or d == decays[0]]


def weighted_scorers(model, item_vectors: tf.Tensor, weights, decays=(1.0,)) -> dict:
    """One score function per (text weight, decay) (``{(w, d): histories -> scores}``) that
    share the work of a batch: the trained similarities and each decay's text similarities
    are computed for the first pair asked and reused while the batch (the same ``histories``
    object) is the same.

    Leaves the model's ``text_weight`` at 0 and ``text_decay`` at the last decay.
    """
    tower = model.user_tower
    trained, text = item_vectors[:, :tower.trained_dim], item_vectors[:, tower.trained_dim:]
    signature = [tf.TensorSpec([None, None], tf.int64)]

    @tf.function(input_signature=signature, reduce_retracing=True)
    def trained_queries(history):
        return model.query_vectors(history, item_vectors, training=False)[:, :tower.trained_dim]

    @tf.function(input_signature=signature, reduce_retracing=True)
    def inputs(history):
        return model.history_vectors(history, item_vectors)

    batch = {}

    def similarities(histories):
        if batch.get("histories") is not histories:
            width = max(1, max(len(h) for h in histories))
            padded = tf.constant(pad_histories(histories, width))
            tower.text_weight.assign(0.0)
            vectors, known = inputs(padded)
            text_sims = {}
            for decay in decays:
                tower.text_decay.assign(decay)
                query = tf.math.l2_normalize(tower.text_query(vectors, known), axis=-1, epsilon=1e-12)
                text_sims[decay] = tf.matmul(query, text, transpose_b=True)
            batch.update(histories=histories, trained=tf.matmul(trained_queries(padded), trained, transpose_b=True),
                         text=text_sims)
        return batch

    def scorer(weight, decay):
        def score(histories):
            sims = similarities(histories)
            return ((1.0 - weight) * sims["trained"] + weight * sims["text"][decay]).numpy()
        return score

    return {(w, d): scorer(w, d) for w, d in _pairs(weights, decays)}


def fit_text_weight(model, split: EvalSplit, metric: str, batch_size: int = 256,
                    score_budget: int = SCORE_BUDGET, weights=WEIGHTS, decays=DECAYS) -> dict[str, float]:
    """Sets the user tower's ``text_weight`` and ``text_decay`` to the pair with the best
    validation ``metric``.

    Args:
        model: a trained ``TwoTowerModel`` whose user tower has a text part (``text_dim > 0``).
        split: the validation users to measure on.
        metric: an ``explore`` metric of the evaluation, e.g. ``"ndcg@10"``.
        batch_size: users scored at once.
        score_budget: most users x items scores held at once.
        weights: the weights tried; a tie keeps the smaller weight.
        decays: the decays tried; a tie keeps the larger decay (1 first: the plain mean).

    Returns:
        ``{"w/d": validation metric}`` for every pair tried (weight 0 once, with the first decay).
    """
    ks = sorted({int(metric.split("@")[1]) if "@" in metric else 10, 10})
    scorers = weighted_scorers(model, model.item_vectors(), weights, decays)
    names = {pair: f"{pair[0]:g}/{pair[1]:g}" for pair in scorers}
    result = evaluate_split({names[pair]: score for pair, score in scorers.items()}, split, model.num_items,
                            np.zeros(model.num_items, bool), ks, batch_size, score_budget=score_budget)
    measured = {pair: float(result.metrics["explore"][names[pair]][metric]) for pair in scorers}
    weight, decay = max(measured, key=lambda pair: (measured[pair], -pair[0], pair[1]))
    model.user_tower.text_weight.assign(weight)
    model.user_tower.text_decay.assign(decay)
    log.info("Text term fitted on %d validation users: weight %.1f, decay %.1f (explore %s %.4f; weight 0: %s)",
             len(split), weight, decay, metric, measured[(weight, decay)], measured.get((0.0, decays[0]), "-"))
    return {names[pair]: value for pair, value in measured.items()}
