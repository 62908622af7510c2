"""``tfrec_retrieve_scann``: the retrieve model with the ScaNN index inside.

The query tower's vector searches the index (ScaNN's TF ops); the candidates it returns
are re-scored exactly (dot products with their item vectors) and, when the model has a
repeat-aware term, the request's own history items join them, so an item the term lifts
is ranked even when the index did not return it. The served scores are then those of
``tfrec_retrieve`` for every item the list holds.

Request options (exclusions, category) apply to the ``index.k`` candidates before top-K;
a filter that leaves fewer than ``k`` of them returns fewer real results (the rest score
``EXCLUDED``). A model server needs ScaNN's ops to load this model: in Python,
``import scann`` before ``tf.saved_model.load``.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from serving.index import load_search_params, load_searcher_state
from serving.signatures import Catalogue, RetrieveModel
from tfrec.models import TwoTowerModel


def first_occurrences(items: tf.Tensor) -> tf.Tensor:
    """``[B, C]``: True where an item (``>= 0``) does not occur earlier in its row."""
    same = tf.equal(items[:, :, None], items[:, None, :])
    width = tf.shape(items)[1]
    earlier = tf.range(width)[None, :] < tf.range(width)[:, None]  # [i, j]: j comes before i
    seen_before = tf.reduce_any(same & earlier[None], axis=-1)
    return (items >= 0) & ~seen_before


class RetrieveScannModel(RetrieveModel):
    """``history`` -> top-``k`` ``item_ids`` and ``scores`` through the ScaNN index (``k <= index.k``)."""

    def __init__(self, model: TwoTowerModel, catalogue: Catalogue, index_dir: str | Path, default_k: int,
                 exclude_history: bool):
        params = load_search_params(index_dir)
        self.scann_state = load_searcher_state(index_dir)
        self.search_params = params
        self.index_k = int(params["k"])
        super().__init__(model, catalogue, min(default_k, self.index_k), exclude_history)
        self.max_k = self.index_k

    def search(self, queries: tf.Tensor) -> tf.Tensor:
        from scann.scann_ops.py import scann_ops

        searcher = scann_ops.searcher_from_module(self.scann_state)
        p = self.search_params
        if p["brute_force"]:
            result = searcher.search_batched(queries, final_num_neighbors=self.index_k)
        else:
            result = searcher.search_batched(
                queries, final_num_neighbors=self.index_k,
                pre_reorder_num_neighbors=max(int(p["reorder"]), self.index_k),
                leaves_to_search=int(p["num_leaves_to_search"]) if p["num_leaves"] > 1 else None,
            )
        return tf.cast(result.indices, tf.int64)

    def candidates(self, history):
        queries = self.model.query_vectors(history, self.catalogue.item_vectors, training=False)
        items = self.search(queries)
        if self.model.repeat_term is not None:
            items = tf.concat([items, history], axis=1)
            items = tf.where(first_occurrences(items), items, -1)
        vectors = tf.gather(self.catalogue.item_vectors, tf.maximum(items, 0))
        similarity = tf.einsum("bd,bcd->bc", queries, vectors)
        if self.model.repeat_term is not None:
            return self.model.repeat_term.candidate_scores(similarity, history, items), items
        return similarity, items
