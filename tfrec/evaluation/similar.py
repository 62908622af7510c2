"""Item-to-item answers measured: ``tfrec_similar``'s ranking from a customer's last item.

``tfrec_similar`` ranks the catalogue by the similarity of item vectors with one item. A model
with a text term has vectors ``[trained part, text part]`` (each of unit length), so the
similarity of two items is ``(1 - w) * trained similarity + w * text similarity``. Two
weights are candidates:

- ``equal``: ``w = 0.5``, the text part at the same weight as the trained part (the plain
  dot product of the vectors, as ``tfrec_similar`` scored before the weight was chosen);
- ``fitted``: the text term's weight ``w`` fitted on validation for ``tfrec_retrieve``.

``measure_similar`` scores each test (and validation) user's catalogue from the last item of
their history and measures the next group under the ``explore`` protocol; the candidate with
the better validation ``SIMILAR_METRIC`` is kept (a tie keeps ``equal``), recorded in
``metrics.json`` (``similar_items``), and the export's ``tfrec_similar`` scores with it
(``served_text_weight``). A model without a text part has one candidate: its trained part.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from tfrec import fileio
from tfrec.layout import METRICS_FILE

log = logging.getLogger(__name__)

SIMILAR_METRIC = "recall@10"
"""What chooses the weight, on validation, under ``explore``."""
EQUAL = 0.5
"""The text part at the same weight as the trained part."""


def similar_scale(trained_dim: int, text_dim: int, text_weight: float) -> np.ndarray:
    """Per-dimension weights ``[trained_dim + text_dim]`` of an item vector in ``tfrec_similar``'s
    score: ``1 - text_weight`` over the trained part, ``text_weight`` over the text part (all ones
    without a text part).

    Example:

    >>> similar_scale(2, 1, 0.25).tolist()
    [0.75, 0.75, 0.25]
    """
    if not text_dim:
        return np.ones(trained_dim, np.float32)
    return np.concatenate([np.full(trained_dim, 1.0 - text_weight), np.full(text_dim, text_weight)]).astype(np.float32)


def similar_scorer(item_vectors: np.ndarray, scale: np.ndarray) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Histories -> ``tfrec_similar``'s scores ``[B, N]`` of the catalogue for each history's last
    item (zeros for an empty history)."""
    item_vectors = np.asarray(item_vectors, np.float32)
    weighted = item_vectors * scale[None, :]

    def scores(histories: list[np.ndarray]) -> np.ndarray:
        queries = np.zeros((len(histories), item_vectors.shape[1]), np.float32)
        for row, history in enumerate(histories):
            if len(history):
                queries[row] = weighted[history[-1]]
        return queries @ item_vectors.T

    return scores


def candidate_weights(model) -> dict[str, float]:
    """``{"equal": 0.5, "fitted": w}`` for a model with a text part, ``{"trained": 0.0}`` without one."""
    tower = model.user_tower
    if not tower.text_dim:
        return {"trained": 0.0}
    return {"equal": EQUAL, "fitted": float(tower.text_weight.numpy())}


def similar_scorers(model, item_vectors: np.ndarray) -> dict[str, Callable]:
    """One ``similar_scorer`` per candidate weight of ``model``, by candidate name."""
    tower = model.user_tower
    return {name: similar_scorer(item_vectors, similar_scale(tower.trained_dim, tower.text_dim, w))
            for name, w in candidate_weights(model).items()}


def choose(model, measured: dict[str, dict]) -> dict:
    """The record of the choice (``metrics.json``'s ``similar_items``), from each candidate's
    ``{"valid": metrics, "test": metrics}`` under ``explore``."""
    weights = candidate_weights(model)
    order = list(weights)  # a tie keeps the first: equal weight
    best = max(order, key=lambda name: (measured[name]["valid"][SIMILAR_METRIC], -order.index(name)))
    record = {"text_weight": weights[best], "chosen": best, "candidates": weights,
              "chosen_by": f"validation, explore {SIMILAR_METRIC} of the next group ranked from each user's last "
                           "history item (a tie keeps equal weight)",
              **{split: {name: measured[name][split] for name in order} for split in ("valid", "test")}}
    log.info("tfrec_similar: text weight %s (%s), validation explore %s %s", weights[best], best, SIMILAR_METRIC,
             ", ".join(f"{n} {measured[n]['valid'][SIMILAR_METRIC]:.4f}" for n in order))
    return record


def served_text_weight(model_dir: str | os.PathLike) -> float:
    """The text weight ``tfrec_similar`` serves: the one evaluation chose (``metrics.json``), or
    equal weight when the model was not evaluated."""
    path = fileio.join(os.fspath(model_dir), METRICS_FILE)
    chosen = (fileio.read_json(path, {}) or {}).get("similar_items", {}).get("text_weight")
    if chosen is None:
        log.info("%s records no similar-items choice (run `tfrec evaluate` first): tfrec_similar weighs the text "
                 "part equally", path)
        return EQUAL
    return float(chosen)
