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

Items *removed* from the catalogue (sold out, delisted: ``tfrec index --remove``) are
never returned by any model: they rank below every other item, a result that would be
one comes back as ``""`` scoring ``EXCLUDED``, and a "because" explanation never names
one. They keep their rows (a restored item comes back with its vector) and still count
in a history. Which items are removed is a variable of the catalogue, so a new version
that changes them is the previous one with new variable values: the same graph.

Every model bounds its own cost, so stock TF Serving is protected as well as ``tfrec
serve``: a history is cut to its most recent ``max_history`` items inside the model, and
a request a model cannot answer (an unknown item as the whole request, inputs whose
batch sizes differ, a ``k`` beyond the index, a NaN weight) fails with
``INVALID_ARGUMENT`` and a message, never with a silent guess.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfrec.models import TextPipeline, TwoTowerModel

EXCLUDED = -1e30
_REMOVED = 2 * EXCLUDED
"""What a removed item scores inside ``top_k``: below every excluded item, so it is picked last."""
EXPLAINED_RESULTS = 100
"""Results per row given a ``because``: explaining every result of a large ``k`` would cost a row's
results times its history in memory (for a whole catalogue and a long history, gigabytes per request)."""
REMOVED_VARIABLE = "removed"
"""The name of the catalogue's removed-items variable (``tfrec index --remove`` rewrites it)."""
_EMPTY = tf.constant([], tf.string)


def input_meanings() -> dict[str, str]:
    """What each signature input means, for the model card and docs/reference/signatures.md."""
    return {
        "history": "recent item ids of each user, oldest first, one row per user; pad shorter rows on the left "
                   "with \"\" (unknown ids are ignored too); only the most recent export.max_history items are read",
        "text": "product text (the configured text fields joined with spaces), one per item",
        "item_id": "catalogue item id; in tfrec_candidate optional (\"\" or left out: text only), one per text",
        "categories": "one row per text, one column per categorical field in config order (\"\": unknown)",
        "query": "free search text, one per request row",
        "k": "results per row; at most the catalogue size (tfrec_retrieve_scann: at most index.k, else an error)",
        "exclude_history": "drop items already in the row's history",
        "exclude_ids": "item ids never to return (e.g. out of stock), applied to every row",
        "category": "return only items of this value of export.category_field (\"\": no filter)",
        "history_weight": "in [0, 1]: share of the history's query vector blended with the text's vector",
    }


def output_meanings() -> dict[str, str]:
    """What each signature output means, with its score scale."""
    return {
        "query_vector": "the user's query vector (L2-normalised); its dot product with an item_vector is the "
                        "two-tower similarity in [-1, 1]",
        "item_vector": "the item's vector (L2-normalised), comparable with query vectors and the index",
        "item_ids": "top-k item ids per row, best first (\"\" where only removed items are left to fill it)",
        "scores": "served score per result, higher is better: tfrec_retrieve(_scann): the repeat-aware score "
                  "(scale x similarity + history term, unbounded); tfrec_similar / tfrec_search: cosine "
                  "similarity in [-1, 1]; an excluded item that fills a short list scores -1e30",
        "because_ids": f"per result, the history item whose vector is closest to it (\"\": none, and for every "
                       f"result after the first {EXPLAINED_RESULTS})",
        "because_scores": "the dot product of that history item's vector with the result's, in [-1, 1]",
    }


class ServingModule(tf.Module):
    """Base of every exported model: keeps Keras objects out of the SavedModel's object graph.

    A SavedModel's restore op fills the variables its object graph tracks; its functions
    read the variables they captured. A Keras 3 variable wraps a ``tf.Variable``, and when
    the Keras variable itself is tracked, ``tf.saved_model.save`` exports it as a second
    variable: the restore op fills that copy while the functions read the wrapped one,
    which nothing restores. ``tf.saved_model.load`` rebinds the functions to the restored
    objects and hides this; a graph-mode loader (TF Serving, ``saved_model_cli run``, the
    C, C++, Java and Go APIs) runs the graph as written and answers "Could not find
    variable". So Keras objects are held with :meth:`hold`, outside the object graph,
    and the module tracks the ``tf.Variable`` under each of their variables: every
    variable is saved once, and the restore op fills exactly what the functions read.
    """

    def __init__(self):
        super().__init__()
        self.tf_variables = []

    def hold(self, **objects) -> None:
        """Sets ``objects`` as attributes without tracking them; tracks their variables' ``tf.Variable``s."""
        tracked = {id(v) for v in self.tf_variables}
        for name, value in objects.items():
            object.__setattr__(self, name, value)
            for variable in getattr(value, "variables", None) or []:
                inner = variable.value if isinstance(variable, keras.Variable) else variable
                if id(inner) not in tracked:
                    tracked.add(id(inner))
                    self.tf_variables.append(inner)


def recent(history: tf.Tensor, max_history: int) -> tf.Tensor:
    """The most recent ``max_history`` items of each (left-padded) history: what a model reads."""
    return history[:, -max_history:]


def same_batch(batch: tf.Tensor, tensor: tf.Tensor, what: str, main: str) -> tf.Tensor:
    """``tensor`` after checking that its batch size equals ``batch`` (the main input's)."""
    check = tf.debugging.assert_equal(
        tf.shape(tensor)[0], batch,
        message=f"{what} must have one row per {main} (the batch sizes differ)")
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


class ServingCatalogue(tf.Module):
    """Item ids, their lookup table, item vectors and category values, shared by every model."""

    def __init__(self, item_ids: np.ndarray, item_vectors: np.ndarray, categories: np.ndarray | None = None,
                 removed: np.ndarray | None = None):
        """``removed``: ``[N]`` booleans, True for items no model may return (default: none)."""
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
        removed = np.zeros(len(item_ids), bool) if removed is None else np.asarray(removed, bool)
        self.removed = tf.Variable(removed, trainable=False, name=REMOVED_VARIABLE)

    @property
    def size(self) -> int:
        return int(self.item_vectors.shape[0])

    def indices(self, ids: tf.Tensor) -> tf.Tensor:
        """String ids (any shape) -> item indices; -1 for unknown or empty ids."""
        return self.table.lookup(ids)

    def ids(self, indices: tf.Tensor) -> tf.Tensor:
        """Item indices -> string ids; ``""`` for a removed item."""
        return tf.where(tf.gather(self.removed, indices), "", tf.gather(self.item_ids, indices))

    def keep(self, batch, history, exclude_history, exclude_ids, category) -> tf.Tensor:
        """``[B, N]``: True where an item may be returned."""
        n = self.size
        excluded = self.indices(exclude_ids)
        excluded = tf.boolean_mask(excluded, excluded >= 0)
        dropped = (tf.scatter_nd(excluded[:, None], tf.ones_like(excluded, tf.int32), [n]) > 0) | self.removed
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
        items = tf.range(tf.shape(scores)[1])[None, :] if candidates is None else tf.maximum(candidates, 0)
        scores = tf.where(tf.gather(self.removed, items), _REMOVED, scores)
        k = tf.minimum(k, tf.shape(scores)[1])
        top = tf.math.top_k(scores, k)
        indices = top.indices if candidates is None else tf.gather(candidates, top.indices, batch_dims=1)
        return tf.cast(indices, tf.int64), tf.maximum(top.values, EXCLUDED)

    def explain(self, history, results):
        """For each of the first ``EXPLAINED_RESULTS`` results, the history item whose vector scores
        highest with it, and that score (``""`` and 0 for the results after them)."""
        history = tf.pad(history, [[0, 0], [0, 1]], constant_values=-1)  # an empty history explains nothing
        unexplained = tf.maximum(tf.shape(results)[1] - EXPLAINED_RESULTS, 0)
        results = results[:, :EXPLAINED_RESULTS]
        affinity = tf.einsum("bkd,bhd->bkh", tf.gather(self.item_vectors, results),
                             tf.gather(self.item_vectors, tf.maximum(history, 0)))
        named = (history >= 0) & ~tf.gather(self.removed, tf.maximum(history, 0))
        affinity = tf.where(named[:, None, :], affinity, EXCLUDED)
        best = tf.argmax(affinity, axis=-1, output_type=tf.int64)
        score = tf.reduce_max(affinity, axis=-1)
        found = score > EXCLUDED / 2
        because = self.ids(tf.maximum(tf.gather(history, best, batch_dims=1), 0))
        rest = [[0, 0], [0, unexplained]]
        return (tf.pad(tf.where(found, because, ""), rest, constant_values=""),
                tf.pad(tf.where(found, score, 0.0), rest))


_K = tf.TensorSpec([], tf.int32, name="k")
_EXCLUDE_HISTORY = tf.TensorSpec([], tf.bool, name="exclude_history")
_EXCLUDE_IDS = tf.TensorSpec([None], tf.string, name="exclude_ids")
_CATEGORY = tf.TensorSpec([], tf.string, name="category")
_HISTORY = tf.TensorSpec([None, None], tf.string, name="history")


class QueryModel(ServingModule):
    """``history`` (recent item ids, oldest first) -> ``query_vector``."""

    def __init__(self, model: TwoTowerModel, catalogue: ServingCatalogue, max_history: int):
        super().__init__()
        self.hold(model=model)
        self.catalogue = catalogue
        self.max_history = max_history

    @tf.function(input_signature=[_HISTORY])
    def serve(self, history):
        indices = self.catalogue.indices(recent(history, self.max_history))
        return {"query_vector": self.model.query_vectors(indices, self.catalogue.item_vectors, training=False)}


class CandidateModel(ServingModule):
    """``text`` (and optionally ``item_id``, ``categories``) -> ``item_vector``.

    A product added after training gets its vector from its text; a known ``item_id``
    adds the trained id embedding, so catalogue items reproduce their indexed vectors.
    ``categories`` holds one column per categorical field, in config order.
    """

    def __init__(self, model: TwoTowerModel, catalogue: ServingCatalogue, pipeline: TextPipeline,
                 categorical: dict[str, list[str]]):
        super().__init__()
        self.hold(model=model, encoder=pipeline.encoder, tokenizer=pipeline.tokenizer, tokenize=pipeline.tokenize)
        self.catalogue = catalogue
        self.categorical_tables = [
            tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(values, tf.string), tf.range(1, len(values) + 1, dtype=tf.int32)), 0)
            for values in categorical.values() if values
        ]
        self.num_categorical = len(categorical)

    def vectors(self, text, item_id, categories):
        text = tf.reshape(text, [-1])
        batch = tf.shape(text)[0]
        item_id = tf.cond(tf.size(item_id) > 0, lambda: same_batch(batch, item_id, "item_id", "text"),
                          lambda: tf.fill([batch], ""))
        codes = None
        if self.num_categorical:
            categories = tf.cond(tf.size(categories) > 0, lambda: same_batch(batch, categories, "categories", "text"),
                                 lambda: tf.fill([batch, self.num_categorical], ""))
            width = tf.debugging.assert_equal(
                tf.shape(categories)[1], self.num_categorical,
                message=f"categories needs one column per categorical field ({self.num_categorical})")
            with tf.control_dependencies([width]):
                codes = tf.stack([table.lookup(categories[:, i])
                                  for i, table in enumerate(self.categorical_tables)], -1)
        else:
            tf.debugging.assert_equal(tf.size(categories), 0,
                                      message="this catalogue has no categorical fields; leave categories empty")
        text_vectors = self.encoder(self.tokenize(text), training=False)
        return self.model.item_tower.embed(text_vectors, self.catalogue.indices(item_id), codes, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.string, name="item_id"),
                                  tf.TensorSpec([None, None], tf.string, name="categories")])
    def serve(self, text, item_id=_EMPTY, categories=tf.constant([[]], tf.string)):
        return {"item_vector": self.vectors(text, item_id, categories)}


class RetrieveModel(ServingModule):
    """``history`` -> top-``k`` ``item_ids`` and ``scores`` over the whole catalogue, exactly.

    Scores are the model's served scores (two-tower similarity plus the repeat-aware
    term of the request's own history), so this list is the one the evaluation ranked.
    ``because_ids`` / ``because_scores`` name, for each result, the history item whose
    vector scores highest with it ("because you bought ...").
    """

    def __init__(self, model: TwoTowerModel, catalogue: ServingCatalogue, default_k: int, exclude_history: bool,
                 max_history: int):
        super().__init__()
        self.hold(model=model)
        self.catalogue = catalogue
        self.max_history = max_history
        self.default_k = default_k
        self.default_exclude_history = exclude_history
        self.serve = self._signature()

    def candidates(self, history):
        """The items to rank and their scores: ``(scores [B, C], items [B, C] or None)``.

        ``None`` means every catalogue item, in index order; an item of ``-1`` is no item.
        """
        return self.model.scores(history, self.catalogue.item_vectors), None

    def check_k(self, k):
        """``k`` after the model's own checks (none here: ``k`` is capped by the catalogue's size)."""
        return k

    def retrieve(self, history_ids, k, exclude_history, exclude_ids, category):
        k = self.check_k(k)
        history = self.catalogue.indices(recent(history_ids, self.max_history))
        scores, candidates = self.candidates(history)
        batch = tf.shape(history)[0]
        keep = self.catalogue.keep(batch, history, exclude_history, exclude_ids, category)
        if candidates is not None:
            keep = tf.gather(keep, tf.maximum(candidates, 0), batch_dims=1) & (candidates >= 0)
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
    """``item_id`` -> the top-``k`` most similar items by item vector (itself excluded).

    ``scale`` (``[D]``, default all ones) weighs each dimension of the item's vector: with a
    text part, ``tfrec.evaluation.similar.similar_scale`` of the text weight evaluation chose,
    so the served ranking is the evaluated one.
    """

    def __init__(self, catalogue: ServingCatalogue, default_k: int, scale: np.ndarray | None = None):
        super().__init__()
        self.catalogue, self.default_k = catalogue, default_k
        dim = int(catalogue.item_vectors.shape[1])
        scale = np.ones(dim, np.float32) if scale is None else np.asarray(scale, np.float32)
        if scale.shape != (dim,):
            raise ValueError(f"scale has shape {scale.shape}; the item vectors have {dim} values")
        self.scale = tf.Variable(scale, trainable=False, name="similar_scale")
        self.serve = self._signature()

    def _signature(self):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"), _K, _EXCLUDE_IDS, _CATEGORY])
        def serve(item_id, k=tf.constant(self.default_k), exclude_ids=_EMPTY, category=tf.constant("")):
            items = self.catalogue.indices(item_id)
            tf.debugging.Assert(tf.reduce_all(items >= 0), [
                "every item_id must be a catalogue item; unknown:", tf.boolean_mask(item_id, items < 0)], summarize=5)
            vectors = tf.gather(self.catalogue.item_vectors, tf.maximum(items, 0)) * self.scale[None, :]
            scores = tf.matmul(vectors, self.catalogue.item_vectors, transpose_b=True)
            batch = tf.shape(items)[0]
            itself = items[:, None]
            keep = self.catalogue.keep(batch, itself, tf.constant(True), exclude_ids, category)
            keep &= (items >= 0)[:, None]
            results, values = self.catalogue.top_k(scores, keep, k)
            return {"item_ids": self.catalogue.ids(results), "scores": values}

        return serve


class SearchModel(ServingModule):
    """Free ``query`` text -> top-``k`` items, through the item tower's text encoder.

    A visitor with no history is served from a search box. With a ``history``, the
    text vector is blended with the query tower's vector (``history_weight``), so one
    click already personalises the results.
    """

    def __init__(self, model: TwoTowerModel, catalogue: ServingCatalogue, candidate: CandidateModel, default_k: int,
                 history_weight: float, max_history: int):
        super().__init__()
        self.hold(model=model)
        self.catalogue, self.candidate = catalogue, candidate
        self.max_history = max_history
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
            tf.debugging.assert_all_finite(history_weight, "history_weight must be a finite number")
            tf.debugging.assert_less_equal(tf.abs(history_weight - 0.5), 0.5,
                                           message="history_weight must lie in [0, 1]")
            text = self.candidate.vectors(query, _EMPTY, tf.constant([[]], tf.string))
            history = tf.cond(tf.size(history) > 0, lambda: same_batch(batch, history, "history", "query"),
                              lambda: tf.fill([batch, 1], ""))
            indices = self.catalogue.indices(recent(history, self.max_history))
            personal = tf.reduce_any(indices >= 0, axis=1, keepdims=True)
            user = self.model.query_vectors(indices, self.catalogue.item_vectors, training=False)
            weight = tf.where(personal, history_weight, 0.0)
            blended = tf.math.l2_normalize((1.0 - weight) * text + weight * user, axis=-1)
            scores = tf.matmul(blended, self.catalogue.item_vectors, transpose_b=True)
            keep = self.catalogue.keep(batch, None, tf.constant(False), exclude_ids, category)
            results, values = self.catalogue.top_k(scores, keep, k)
            return {"item_ids": self.catalogue.ids(results), "scores": values}

        return serve
