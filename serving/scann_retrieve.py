"""``tfrec_retrieve_scann``: the retrieve model with the ScaNN index inside.

The query tower's vector searches the index (ScaNN's TF ops); the candidates it returns
are re-scored exactly (dot products with their item vectors) and, when the model has a
repeat-aware term, the request's own history items join them, so an item the term lifts
is ranked even when the index did not return it. The served scores are then those of
``tfrec_retrieve`` for every item the list holds.

Request options (exclusions, category) apply to the ``index.k`` candidates before top-K;
a filter that leaves fewer than ``k`` of them returns fewer real results (the rest score
``EXCLUDED``). A request for more than ``index.k`` results fails with ``INVALID_ARGUMENT``
naming ``index.k``: the index was built to return that many, and fewer results without a
word would look like a short catalogue. A model server needs ScaNN's ops to load this model: in Python,
``import scann`` before ``tf.saved_model.load``.
"""

from __future__ import annotations

import os

import tensorflow as tf

from serving.index import load_search_params, load_searcher_state
from serving.signatures import RetrieveModel, ServingCatalogue
from tfrec.models import TwoTowerModel


def first_occurrences(items: tf.Tensor) -> tf.Tensor:
    """``[B, C]``: True where an item (``>= 0``) does not occur earlier in its row.

    Linear in ``B * C`` (one ``tf.unique`` over (row, item) keys), so a long history
    costs memory in proportion to its length.
    """
    items = tf.cast(items, tf.int64)
    shape = tf.shape(items, out_type=tf.int64)
    width = tf.maximum(tf.reduce_max(items) + 2, 1)
    keys = tf.reshape(tf.range(shape[0])[:, None] * width + items + 1, [-1])
    _, slot = tf.unique(keys, out_idx=tf.int64)
    position = tf.range(tf.size(keys, out_type=tf.int64))
    first = tf.math.unsorted_segment_min(position, slot, tf.reduce_max(slot) + 1)
    return (items >= 0) & tf.reshape(tf.equal(tf.gather(first, slot), position), shape)


class RetrieveScannModel(RetrieveModel):
    """``history`` -> top-``k`` ``item_ids`` and ``scores`` through the ScaNN index (``k <= index.k``)."""

    def __init__(self, model: TwoTowerModel, catalogue: ServingCatalogue, index_dir: str | os.PathLike, default_k: int,
                 exclude_history: bool, max_history: int):
        params = load_search_params(index_dir)
        self.scann_state = load_searcher_state(index_dir)
        self.search_params = params
        self.index_k = int(params["k"])
        super().__init__(model, catalogue, min(default_k, self.index_k), exclude_history, max_history)

    def check_k(self, k):
        check = tf.debugging.assert_less_equal(
            k, self.index_k, message=f"k is larger than the index returns (index.k = {self.index_k}); "
                                     "ask for fewer results or rebuild the index with a larger index.k")
        with tf.control_dependencies([check]):
            return tf.identity(k)

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
