"""The exported models: ``tf.Module``s whose ``serve`` function is the ``serving_default`` signature.

Every model takes raw string item ids; the id-to-index lookup lives inside, and an
unknown (or empty, i.e. padding) id is ignored. Optional inputs are arguments with
defaults: TensorFlow writes them into the SignatureDef and TF Serving fills them in
when a request leaves them out.

Top-K models share these request options, applied inside the model before top-K so
that ``k`` results still come back:

- ``k``: results per request (capped by the catalogue, or by the index for ScaNN).
- ``exclude_history``: drop items already in the request's history.
- ``exclude_ids``: drop these ids (e.g. out of stock).
- ``category``: keep only items of this value of the catalogue's category field
  (an error when the catalogue has none).

Dropped items score ``EXCLUDED``; they only come back when a request asks for more
results than there are items left.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec.models import TextPipeline, TwoTowerModel

EXCLUDED = -1e30
_EMPTY = tf.constant([], tf.string)


class Catalogue(tf.Module):
    """Item ids, their lookup table, item vectors and category values, shared by every model."""

    def __init__(self, item_ids: np.ndarray, item_vectors: np.ndarray, categories: np.ndarray | None = None):
        super().__init__()
        ids = tf.constant([str(i) for i in item_ids])
        self.item_ids = tf.Variable(ids, trainable=False, name="item_ids")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(ids, tf.range(len(item_ids), dtype=tf.int64)), -1
        )
        self.item_vectors = tf.Variable(np.asarray(item_vectors, np.float32), trainable=False, name="item_vectors")
        self.has_categories = categories is not None
        values = categories if categories is not None else np.full(len(item_ids), "")
        self.categories = tf.Variable(tf.constant([str(c) for c in values]), trainable=False, name="categories")

    @property
    def size(self) -> int:
        return int(self.item_vectors.shape[0])

    def indices(self, ids: tf.Tensor) -> tf.Tensor:
        """String ids (any shape) -> item indices; -1 for unknown or empty ids."""
        return self.table.lookup(ids)

    def ids(self, indices: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.item_ids, indices)

    def keep(self, batch, history, exclude_history, exclude_ids, category) -> tf.Tensor:
        """``[B, N]``: True where an item may be returned."""
        n = self.size
        excluded = self.indices(exclude_ids)
        excluded = tf.boolean_mask(excluded, excluded >= 0)
        dropped = tf.scatter_nd(excluded[:, None], tf.ones_like(excluded, tf.int32), [n]) > 0
        keep = tf.broadcast_to(~dropped[None, :], tf.stack([batch, n]))
        if history is not None:
            rows = tf.broadcast_to(tf.range(batch, dtype=tf.int64)[:, None], tf.shape(history, out_type=tf.int64))
            valid = history >= 0
            pairs = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(history, valid)], -1)
            seen = tf.scatter_nd(pairs, tf.ones(tf.shape(pairs)[:1], tf.int32),
                                 tf.cast(tf.stack([batch, n]), tf.int64)) > 0
            keep &= ~(seen & exclude_history)
        if self.has_categories:
            keep &= (tf.equal(category, "") | tf.equal(self.categories, category))[None, :]
        else:
            tf.debugging.Assert(tf.equal(category, ""), ["this catalogue has no category field; leave category empty"])
        return keep

    def top_k(self, scores, keep, k, candidates=None):
        """Top-``k`` item indices and scores of ``scores [B, C]`` (``candidates [B, C]``: their items)."""
        tf.debugging.assert_positive(k, message="k must be a positive number of results")
        scores = tf.where(keep, scores, EXCLUDED)
        k = tf.minimum(k, tf.shape(scores)[1])
        top = tf.math.top_k(scores, k)
        indices = top.indices if candidates is None else tf.gather(candidates, top.indices, batch_dims=1)
        return tf.cast(indices, tf.int64), top.values

    def explain(self, history, results):
        """For each result, the history item whose vector scores highest with it, and that score."""
        history = tf.pad(history, [[0, 0], [0, 1]], constant_values=-1)  # an empty history explains nothing
        affinity = tf.einsum("bkd,bhd->bkh", tf.gather(self.item_vectors, results),
                             tf.gather(self.item_vectors, tf.maximum(history, 0)))
        affinity = tf.where((history >= 0)[:, None, :], affinity, EXCLUDED)
        best = tf.argmax(affinity, axis=-1, output_type=tf.int64)
        score = tf.reduce_max(affinity, axis=-1)
        found = score > EXCLUDED / 2
        because = self.ids(tf.maximum(tf.gather(history, best, batch_dims=1), 0))
        return tf.where(found, because, ""), tf.where(found, score, 0.0)


_K = tf.TensorSpec([], tf.int32, name="k")
_EXCLUDE_HISTORY = tf.TensorSpec([], tf.bool, name="exclude_history")
_EXCLUDE_IDS = tf.TensorSpec([None], tf.string, name="exclude_ids")
_CATEGORY = tf.TensorSpec([], tf.string, name="category")
_HISTORY = tf.TensorSpec([None, None], tf.string, name="history")


class QueryModel(tf.Module):
    """``history`` (recent item ids, oldest first) -> ``query_vector``."""

    def __init__(self, model: TwoTowerModel, catalogue: Catalogue):
        super().__init__()
        self.model, self.catalogue = model, catalogue

    @tf.function(input_signature=[_HISTORY])
    def serve(self, history):
        indices = self.catalogue.indices(history)
        return {"query_vector": self.model.query_vectors(indices, self.catalogue.item_vectors, training=False)}


class CandidateModel(tf.Module):
    """``text`` (and optionally ``item_id``, ``categories``) -> ``item_vector``.

    A product added after training gets its vector from its text; a known ``item_id``
    adds the trained id embedding, so catalogue items reproduce their indexed vectors.
    ``categories`` holds one column per categorical field, in config order.
    """

    def __init__(self, model: TwoTowerModel, catalogue: Catalogue, pipeline: TextPipeline,
                 categorical: dict[str, list[str]]):
        super().__init__()
        self.model, self.catalogue = model, catalogue
        self.encoder = pipeline.encoder
        self.tokenizer = pipeline.tokenizer
        self._tokenize = pipeline.tokenize
        self.categorical_tables = [
            tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(values, tf.string), tf.range(1, len(values) + 1, dtype=tf.int32)), 0)
            for values in categorical.values() if values
        ]
        self.num_categorical = len(categorical)

    def vectors(self, text, item_id, categories):
        text = tf.reshape(text, [-1])
        batch = tf.shape(text)[0]
        item_id = tf.cond(tf.size(item_id) > 0, lambda: item_id, lambda: tf.fill([batch], ""))
        codes = None
        if self.num_categorical:
            categories = tf.cond(tf.size(categories) > 0, lambda: categories,
                                 lambda: tf.fill([batch, self.num_categorical], ""))
            codes = tf.stack([table.lookup(categories[:, i]) for i, table in enumerate(self.categorical_tables)], -1)
        text_vectors = self.encoder(self._tokenize(text), training=False)
        return self.model.item_tower.embed(text_vectors, self.catalogue.indices(item_id), codes, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.string, name="item_id"),
                                  tf.TensorSpec([None, None], tf.string, name="categories")])
    def serve(self, text, item_id=_EMPTY, categories=tf.constant([[]], tf.string)):
        return {"item_vector": self.vectors(text, item_id, categories)}


class RetrieveModel(tf.Module):
    """``history`` -> top-``k`` ``item_ids`` and ``scores`` over the whole catalogue, exactly.

    Scores are the model's served scores (two-tower similarity plus the repeat-aware
    term of the request's own history), so this list is the one the evaluation ranked.
    ``because_ids`` / ``because_scores`` name, for each result, the history item whose
    vector scores highest with it ("because you bought ...").
    """

    def __init__(self, model: TwoTowerModel, catalogue: Catalogue, default_k: int, exclude_history: bool):
        super().__init__()
        self.model, self.catalogue = model, catalogue
        self.default_k = default_k
        self.default_exclude_history = exclude_history
        self.serve = self._signature()

    max_k: int | None = None
    """The most results a request may ask for (``None``: the catalogue size)."""

    def candidates(self, history):
        """The items to rank and their scores: ``(scores [B, C], items [B, C] or None)``.

        ``None`` means every catalogue item, in index order; an item of ``-1`` is no item.
        """
        return self.model.scores(history, self.catalogue.item_vectors), None

    def retrieve(self, history_ids, k, exclude_history, exclude_ids, category):
        history = self.catalogue.indices(history_ids)
        scores, candidates = self.candidates(history)
        batch = tf.shape(history)[0]
        keep = self.catalogue.keep(batch, history, exclude_history, exclude_ids, category)
        if candidates is not None:
            keep = tf.gather(keep, tf.maximum(candidates, 0), batch_dims=1) & (candidates >= 0)
        if self.max_k is not None:
            k = tf.minimum(k, self.max_k)
        results, values = self.catalogue.top_k(scores, keep, k, candidates)
        because_ids, because_scores = self.catalogue.explain(history, results)
        return {"item_ids": self.catalogue.ids(results), "scores": values,
                "because_ids": because_ids, "because_scores": because_scores}

    def _signature(self):
        @tf.function(input_signature=[_HISTORY, _K, _EXCLUDE_HISTORY, _EXCLUDE_IDS, _CATEGORY])
        def serve(history, k=tf.constant(self.default_k), exclude_history=tf.constant(self.default_exclude_history),
                  exclude_ids=_EMPTY, category=tf.constant("")):
            return self.retrieve(history, k, exclude_history, exclude_ids, category)

        return serve


class SimilarModel(tf.Module):
    """``item_id`` -> the top-``k`` most similar items by item vector (itself excluded)."""

    def __init__(self, catalogue: Catalogue, default_k: int):
        super().__init__()
        self.catalogue, self.default_k = catalogue, default_k
        self.serve = self._signature()

    def _signature(self):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"), _K, _EXCLUDE_IDS, _CATEGORY])
        def serve(item_id, k=tf.constant(self.default_k), exclude_ids=_EMPTY, category=tf.constant("")):
            items = self.catalogue.indices(item_id)
            vectors = tf.gather(self.catalogue.item_vectors, tf.maximum(items, 0))
            scores = tf.matmul(vectors, self.catalogue.item_vectors, transpose_b=True)
            batch = tf.shape(items)[0]
            itself = items[:, None]
            keep = self.catalogue.keep(batch, itself, tf.constant(True), exclude_ids, category)
            keep &= (items >= 0)[:, None]
            results, values = self.catalogue.top_k(scores, keep, k)
            return {"item_ids": self.catalogue.ids(results), "scores": values}

        return serve


class SearchModel(tf.Module):
    """Free ``query`` text -> top-``k`` items, through the item tower's text encoder.

    A visitor with no history is served from a search box. With a ``history``, the
    text vector is blended with the query tower's vector (``history_weight``), so one
    click already personalises the results.
    """

    def __init__(self, model: TwoTowerModel, catalogue: Catalogue, candidate: CandidateModel, default_k: int,
                 history_weight: float):
        super().__init__()
        self.model, self.catalogue, self.candidate = model, catalogue, candidate
        self.default_k = default_k
        self.default_history_weight = history_weight
        self.serve = self._signature()

    def _signature(self):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="query"), _K, _HISTORY,
                                      tf.TensorSpec([], tf.float32, name="history_weight"), _EXCLUDE_IDS, _CATEGORY])
        def serve(query, k=tf.constant(self.default_k), history=tf.constant([[]], tf.string),
                  history_weight=tf.constant(self.default_history_weight), exclude_ids=_EMPTY,
                  category=tf.constant("")):
            batch = tf.shape(query)[0]
            text = self.candidate.vectors(query, _EMPTY, tf.constant([[]], tf.string))
            history = tf.cond(tf.shape(history)[0] == batch, lambda: history,
                              lambda: tf.fill([batch, 1], ""))
            indices = self.catalogue.indices(history)
            personal = tf.reduce_any(indices >= 0, axis=1, keepdims=True)
            user = self.model.query_vectors(indices, self.catalogue.item_vectors, training=False)
            weight = tf.where(personal, history_weight, 0.0)
            blended = tf.math.l2_normalize((1.0 - weight) * text + weight * user, axis=-1)
            scores = tf.matmul(blended, self.catalogue.item_vectors, transpose_b=True)
            keep = self.catalogue.keep(batch, None, tf.constant(False), exclude_ids, category)
            results, values = self.catalogue.top_k(scores, keep, k)
            return {"item_ids": self.catalogue.ids(results), "scores": values}

        return serve
