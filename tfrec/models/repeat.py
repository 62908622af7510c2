"""The repeat-aware term: shops where customers buy the same things again.

In a shop with repeat purchases, "buy it again" is a strong list: an item's chance of
being bought next rises with how often and how recently it occurs in the customer's
history. ``RepeatTerm`` turns that into a score added to the two-tower similarity:

    score[b, i] = scale * sim[b, i] + sum_f w_f * feature_f(i, history_b)

with features ``log(1 + count)`` and ``exp(-p / s)`` for a few recency scales ``s``,
where ``p`` is how many items ago the item last occurred (0 = the latest item). Items
absent from the history get no term. It reads only the request's own history, so it
needs no per-user state and is computed inside the exported retrieval model, which then
serves exactly the scores that were evaluated.

``scale`` and ``w`` are fitted on the validation split after training (``fit``), by
maximising the softmax likelihood of the held-out items over the full catalogue.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfrec.topk import rows_per_batch

DEFAULT_RECENCY_SCALES = (2.0, 20.0, 200.0)


@keras.saving.register_keras_serializable(package="tfrec")
class RepeatTerm(keras.layers.Layer):
    """``(similarity [B, N], history [B, H]) -> scores [B, N]``; histories left-padded with -1.

    Example:

    The catalogue size is read from ``similarity``, so items added to the catalogue
    after training are scored like the others.

    >>> term = RepeatTerm()
    >>> term(np.zeros((1, 4), "float32"), np.array([[-1, 2, 1, 2]])).shape
    TensorShape([1, 4])
    """

    def __init__(self, recency_scales=DEFAULT_RECENCY_SCALES, initial_scale: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.recency_scales = [float(s) for s in recency_scales]
        self.initial_scale = initial_scale

    @property
    def num_features(self) -> int:
        return 1 + len(self.recency_scales)

    def build(self, similarity_shape=None, history_shape=None):
        self.scale = self.add_weight(
            name="scale", shape=(), initializer=keras.initializers.Constant(self.initial_scale)
        )
        self.feature_weights = self.add_weight(
            name="feature_weights", shape=(self.num_features,), initializer="zeros"
        )

    def features(self, history: tf.Tensor, num_items: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Sparse features of each (row, item) pair of the histories.

        Returns ``(pairs [M, 2] int64 of (row, item), values [M, num_features])``.
        """
        history = tf.cast(history, tf.int64)
        num_items = tf.cast(num_items, tf.int64)
        shape = tf.shape(history, out_type=tf.int64)
        length = shape[1]
        rows = tf.broadcast_to(tf.range(shape[0])[:, None], shape)
        ago = tf.broadcast_to(length - 1 - tf.range(length)[None, :], shape)
        valid = history >= 0
        keys = tf.boolean_mask(rows * num_items + history, valid)
        ago = tf.cast(tf.boolean_mask(ago, valid), tf.float32)
        unique, slot = tf.unique(keys)
        n = tf.shape(unique)[0]
        count = tf.math.unsorted_segment_sum(tf.ones_like(ago), slot, n)
        latest = tf.math.unsorted_segment_min(ago, slot, n)
        values = tf.stack(
            [tf.math.log1p(count)] + [tf.exp(-latest / s) for s in self.recency_scales], axis=-1
        )
        pairs = tf.stack([unique // num_items, unique % num_items], axis=-1)
        return pairs, values

    def repeat_scores(self, history: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
        """The term alone, dense, of ``shape`` ``[B, N]``."""
        shape = tf.cast(shape, tf.int64)
        pairs, values = self.features(history, shape[1])
        return tf.scatter_nd(pairs, tf.linalg.matvec(values, self.feature_weights), shape)

    def candidate_scores(self, similarity: tf.Tensor, history: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """``call`` restricted to ``candidates [B, C]`` (item indices), given their similarities ``[B, C]``.

        Costs ``O((B * (C + H)) log)`` time and linear memory instead of a dense ``[B, N]``:
        what a server needs after an approximate index has picked the candidates of a large
        catalogue. Each candidate finds its (row, item) key among the history's sparse
        features by binary search.
        """
        candidates = tf.cast(candidates, tf.int64)
        history = tf.cast(history, tf.int64)
        num_items = tf.maximum(tf.reduce_max(candidates), tf.reduce_max(history)) + 1
        pairs, values = self.features(history, num_items)
        keys = pairs[:, 0] * num_items + pairs[:, 1]
        order = tf.argsort(keys)
        sorted_keys = tf.gather(keys, order)
        term = tf.gather(tf.linalg.matvec(values, self.feature_weights), order)
        rows = tf.range(tf.shape(candidates, out_type=tf.int64)[0])[:, None]
        wanted = tf.reshape(rows * num_items + candidates, [-1])
        slot = tf.minimum(tf.searchsorted(sorted_keys, wanted, out_type=tf.int64),
                          tf.maximum(tf.size(keys, tf.int64) - 1, 0))
        padded = tf.concat([term, [0.0]], 0)  # an empty history has no features: slot 0 reads the 0
        found = tf.concat([sorted_keys, [-1]], 0)
        hit = tf.equal(tf.gather(found, slot), wanted) & (tf.reshape(candidates, [-1]) >= 0)
        term = tf.reshape(tf.where(hit, tf.gather(padded, slot), 0.0), tf.shape(candidates))
        return self.scale * tf.cast(similarity, tf.float32) + term

    def call(self, similarity, history):
        similarity = tf.convert_to_tensor(similarity, tf.float32)
        return self.scale * similarity + self.repeat_scores(history, tf.shape(similarity))

    def fit(self, similarity, histories: np.ndarray, targets: list[np.ndarray],
            steps: int = 300, batch_size: int = 512, learning_rate: float = 0.05, seed: int = 0,
            score_budget: int | None = None) -> float:
        """Fits ``scale`` and the feature weights; returns the final mean negative log-likelihood.

        Args:
            similarity: two-tower similarities ``[U, N]`` of the fitting users, or a function
                of row indices returning those rows' ``[len(rows), N]`` (so that a large
                catalogue never needs every user's row at once).
            histories: their histories ``[U, H]`` (left-padded with -1).
            targets: their held-out items.
            score_budget: with it, each step draws fewer than ``batch_size`` users when
                ``batch_size x N`` would pass it (the step's softmax is that big).
        """
        if not self.built:
            self.build()
        width = max(len(t) for t in targets)
        padded = np.full((len(targets), width), -1, np.int64)
        for row, t in enumerate(targets):
            padded[row, :len(t)] = t
        optimizer = keras.optimizers.Adam(learning_rate)
        variables = [self.scale, self.feature_weights]
        rng = np.random.default_rng(seed)
        rows_of = similarity if callable(similarity) else (lambda rows: similarity[rows])
        num_items = int(np.shape(rows_of(np.zeros(1, np.int64)))[1])
        if score_budget is not None:
            batch_size = rows_per_batch(batch_size, num_items, score_budget)
        # The histories' features do not change while fitting: computed once, a ragged row per user.
        pairs, values = self.features(tf.constant(histories), num_items)
        items = tf.RaggedTensor.from_value_rowids(pairs[:, 1], pairs[:, 0], nrows=len(histories))
        values = tf.RaggedTensor.from_value_rowids(values, pairs[:, 0], nrows=len(histories))

        @tf.function(reduce_retracing=True)
        def step(sim, pair_rows, pair_items, pair_values, tgt):
            with tf.GradientTape() as tape:
                term = tf.scatter_nd(tf.stack([pair_rows, pair_items], -1),
                                     tf.linalg.matvec(pair_values, self.feature_weights), tf.shape(sim, tf.int64))
                log_probs = tf.nn.log_softmax(self.scale * sim + term, axis=-1)
                mask = tf.cast(tgt >= 0, tf.float32)
                picked = tf.gather(log_probs, tf.maximum(tgt, 0), batch_dims=1)
                per_user = -tf.reduce_sum(picked * mask, 1) / tf.reduce_sum(mask, 1)
                loss = tf.reduce_mean(per_user)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        loss = np.nan
        for _ in range(steps):
            rows = rng.choice(len(targets), size=min(batch_size, len(targets)), replace=False)
            step_items, step_values = tf.gather(items, rows), tf.gather(values, rows)
            loss = float(step(tf.constant(rows_of(rows), tf.float32), step_items.value_rowids(),
                              step_items.flat_values, step_values.flat_values, tf.constant(padded[rows])))
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            recency_scales=self.recency_scales,
            initial_scale=self.initial_scale,
        )
        return config
