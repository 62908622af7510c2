"""The user tower: users from their recent items.

``UserTower`` reads the item vectors of a user's history (left-padded, most recent last)
with position embeddings and keras-hub ``TransformerEncoder`` blocks, then pools. It has
no per-user table: any history, of a known or a brand-new user, gives a vector.
"""

from __future__ import annotations

import functools

import keras
import keras_hub
import tensorflow as tf

from tfrec.models.attention import RelativeBlock
from tfrec.models.ensemble import each_member, join_members, split_members
from tfrec.models.towers import l2_normalize


def _decay_kernel(length, decay, dtype):
    """``[L, L]``: ``decay ** (p - j)`` where ``j <= p``, else 0 (row p weighs the items up to p by age)."""
    positions = tf.range(length)
    age = tf.cast(positions[:, None] - positions[None, :], dtype)
    return tf.where(age >= 0, tf.pow(tf.cast(decay, dtype), tf.maximum(age, 0.0)), tf.zeros_like(age))


def _causal_mean(x, weights):
    """Mean of the unmasked rows ``<= p`` of ``x [B, L, d]`` at every position ``p`` (0 before any)."""
    total = tf.cumsum(x * weights[..., None], axis=1)
    count = tf.cumsum(weights, axis=1)[..., None]
    return total / tf.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="tfrec")
class UserTower(keras.layers.Layer):
    """History item vectors ``[B, L, output_dim]`` + mask ``[B, L]`` -> user vector ``[B, output_dim]``.

    Two views of the history are combined, as in short- and long-term sequential
    matching models:

    - **recent**: the last ``recent_items`` item vectors through transformer blocks, pooled
      (``last``, ``attention`` or ``mean``). Histories are left-padded, so the most recent
      item is always at the last position.
    - **long-term** (``long_term=True``): the mean of every item vector of the history,
      up to ``max_history`` items: what the customer buys in general.

    The two are concatenated, projected and L2-normalised. A history with no known item
    still gets a vector (its last position is unmasked), which acts like a popularity
    query.

    ``positions`` says how the transformer knows order: ``absolute`` position embeddings
    counted from the most recent item, ``relative`` (a learned attention bias per distance,
    see ``RelativeBlock``) or ``none``. In a causal tower trained on every position at once,
    only ``relative`` and ``none`` build each training position as the served query of the
    same items is built. ``members`` copies of the tower read the matching members
    of the item vectors (see ``ItemTower``); their outputs are concatenated the same way.

    With ``text_dim``, the item vectors end with a fixed text part (``ItemTower(text_part=True)``)
    and the query ends with the text query: the L2-normalised sum of the recent items' text
    parts, the item ``a`` places from the most recent weighted ``text_decay ** a`` (1: the
    plain mean). With the non-trainable ``text_weight`` w, the query is
    ``[(1 - w) * trained part, w * text query]``, so a score is
    ``(1 - w) * two-tower similarity + w * zero-shot text similarity``. Training leaves w at 0
    and trains the trained part alone; w and the decay are fitted on validation afterwards.

    Example:

    >>> import numpy as np
    >>> tower = UserTower(max_history=6, embedding_dim=8, num_layers=1, num_heads=2,
    ...                   intermediate_dim=16, recent_items=4)
    >>> tower(np.zeros((2, 6, 8), "float32"), np.array([[0, 0, 1, 1, 1, 1], [1] * 6], bool)).shape
    TensorShape([2, 8])
    """

    def __init__(
        self,
        max_history: int,
        embedding_dim: int,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_dim: int = 256,
        dropout: float = 0.1,
        pooling: str = "last",
        recent_items: int | None = None,
        long_term: bool = True,
        causal: bool = False,
        positions: str = "absolute",
        members: int = 1,
        text_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in ("last", "attention", "mean"):
            raise ValueError(f"pooling must be last, attention or mean, got {pooling!r}")
        if positions not in ("absolute", "relative", "none"):
            raise ValueError(f"positions must be absolute, relative or none, got {positions!r}")
        self.max_history = max_history
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.pooling = pooling
        self.recent_items = min(recent_items or max_history, max_history)
        self.long_term = long_term
        self.causal = causal
        self.positions = positions
        self.members = members
        self.text_dim = text_dim

        each = functools.partial(each_member, members)

        def block(name):
            if positions == "relative":
                return RelativeBlock(intermediate_dim, num_heads, self.recent_items, dropout=dropout, name=name)
            return keras_hub.layers.TransformerEncoder(intermediate_dim, num_heads, dropout=dropout,
                                                       activation="gelu", normalize_first=True, name=name)

        self.position_embedding = each(
            lambda m: keras_hub.layers.PositionEmbedding(self.recent_items, name=f"position_embedding{m}")
        ) if positions == "absolute" else None
        self.input_norm = each(lambda m: keras.layers.LayerNormalization(epsilon=1e-5, name=f"input_norm{m}"))
        self.input_dropout = keras.layers.Dropout(dropout)
        self.blocks = each(lambda m: [block(f"block_{i}{m}") for i in range(num_layers)])
        self.output_norm = each(lambda m: keras.layers.LayerNormalization(epsilon=1e-5, name=f"output_norm{m}"))
        self.attention_query = each(
            lambda m: keras.layers.Dense(1, use_bias=False, name=f"attention_query{m}")
        ) if pooling == "attention" else None
        self.projection = each(lambda m: keras.layers.Dense(embedding_dim, name=f"projection{m}"))

    @property
    def trained_dim(self) -> int:
        """Size of the vectors' trained part: ``members * embedding_dim``."""
        return self.members * self.embedding_dim

    @property
    def output_dim(self) -> int:
        """Size of the tower's vectors (and of the item vectors it reads): the trained part,
        then ``text_dim``."""
        return self.trained_dim + self.text_dim

    def build(self, item_vectors_shape=None, mask_shape=None):
        if self.text_dim:
            self.text_weight = self.add_weight(name="text_weight", shape=(), initializer="zeros",
                                               trainable=False)
            self.text_decay = self.add_weight(name="text_decay", shape=(), initializer="ones",
                                              trainable=False)
        shape = (None, self.recent_items, self.embedding_dim)
        for k in range(self.members):
            if self.position_embedding is not None:
                self.position_embedding[k].build(shape)
            self.input_norm[k].build(shape)
            for block in self.blocks[k]:
                block.build(shape)
            self.output_norm[k].build(shape)
            if self.attention_query is not None:
                self.attention_query[k].build(shape)
            self.projection[k].build((None, self.embedding_dim * (2 if self.long_term else 1)))

    def _each_member(self, fn, item_vectors):
        """Runs ``fn(k, member k's item vectors)`` for every member; concatenates the results
        (each L2-normalised) scaled by ``1 / sqrt(members)``, as the item tower does."""
        trained = item_vectors[..., :self.trained_dim]
        return join_members([fn(k, x) for k, x in enumerate(split_members(trained, self.members))])

    def _with_text(self, queries, text_queries):
        """``[(1 - w) * queries, w * unit text queries]``, or ``queries`` without a text part."""
        if not self.text_dim:
            return queries
        weight = tf.cast(self.text_weight, queries.dtype)
        return tf.concat([(1.0 - weight) * queries, weight * l2_normalize(text_queries)], axis=-1)

    def load_own_variables(self, store):
        if self.text_dim and len(store.keys()) == 1:
            # Saved before ``text_decay`` existed: its text query was the plain mean (decay 1).
            self.text_weight.assign(store["0"])
            return
        super().load_own_variables(store)

    def _text_parts(self, item_vectors):
        return item_vectors[..., self.trained_dim:][:, -self.recent_items:]

    def text_query(self, item_vectors, mask):
        """The text query ``[B, text_dim]`` of a whole history (not normalised): the recent
        items' text parts, weighted ``text_decay ** age`` and by ``mask``."""
        parts = self._text_parts(item_vectors)
        mask = tf.cast(mask[:, -self.recent_items:], parts.dtype)
        age = tf.cast(tf.range(tf.shape(parts)[1] - 1, -1, -1), parts.dtype)  # 0: the most recent
        weights = tf.pow(tf.cast(self.text_decay, parts.dtype), age)[None, :] * mask
        return tf.reduce_sum(parts * weights[..., None], 1)

    def _recent(self, k, item_vectors, mask, training=None):
        """Member ``k``'s pooled transformer output over the most recent items."""
        x = item_vectors[:, -self.recent_items:]
        mask = mask[:, -self.recent_items:]
        if self.positions == "absolute":
            x = x + self.position_embedding[k](x)
        x = self.input_dropout(self.input_norm[k](x), training=training)
        attend = tf.broadcast_to(mask[:, None, :], [tf.shape(mask)[0], tf.shape(mask)[1], tf.shape(mask)[1]])
        for block in self.blocks[k]:
            x = block(x, attention_mask=attend, training=training)
        x = self.output_norm[k](x)
        weights = tf.cast(mask, x.dtype)
        if self.pooling == "last":
            return x[:, -1]
        if self.pooling == "mean":
            return tf.reduce_sum(x * weights[..., None], 1) / tf.reduce_sum(weights, 1, keepdims=True)
        logits = tf.squeeze(self.attention_query[k](x), -1) + (1.0 - weights) * -1e9
        return tf.reduce_sum(x * tf.nn.softmax(logits, axis=-1)[..., None], 1)

    def sequence(self, item_vectors, mask, training=None):
        """Causal towers: the query at every position ``[B, L, output_dim]`` of the last
        ``recent_items`` items (``L`` may be fewer: a left-padded window with its padding cut);
        position ``p`` reads positions ``<= p`` only.

        Padded positions attend to themselves only, so every row is defined; their queries
        are meaningless and are never trained.
        """
        if not self.causal:
            raise ValueError("sequence() needs a causal user tower (causal=True)")
        if not self.built:
            self.build()
        mask = tf.cast(mask[:, -self.recent_items:], tf.bool)
        length = tf.shape(mask)[1]
        lower = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
        attend = (lower[None] & mask[:, None, :]) | tf.eye(length, dtype=tf.bool)[None]
        weights = tf.cast(mask, item_vectors.dtype)

        def member(k, x):
            x = x[:, -self.recent_items:]
            h = x
            if self.positions == "absolute":
                # Positions count from the right: a window cut shorter than ``recent_items`` (its
                # left padding dropped) puts each item at the same position as the full window does.
                h = x + self.position_embedding[k](x, start_index=self.recent_items - length)
            h = self.input_dropout(self.input_norm[k](h), training=training)
            for block in self.blocks[k]:
                h = block(h, attention_mask=attend, training=training)
            h = self.output_norm[k](h)
            if self.pooling == "last":
                outputs = [h]
            elif self.pooling == "mean":
                outputs = [_causal_mean(h, weights)]
            else:
                logits = tf.squeeze(self.attention_query[k](h), -1)
                pair = tf.where(attend, logits[:, None, :], -1e9)
                outputs = [tf.matmul(tf.nn.softmax(pair, axis=-1), h)]
            if self.long_term:
                outputs.append(_causal_mean(x, weights))
            return l2_normalize(self.projection[k](tf.concat(outputs, axis=-1)))

        queries = self._each_member(member, item_vectors)
        if not self.text_dim:
            return queries
        kernel = _decay_kernel(length, self.text_decay, item_vectors.dtype)[None] * weights[:, None, :]
        return self._with_text(queries, tf.matmul(kernel, self._text_parts(item_vectors)))

    def call(self, item_vectors, mask, training=None):
        if self.causal:
            # The query of the whole history is the last position's, exactly as in training.
            return self.sequence(item_vectors, mask, training=training)[:, -1]
        mask = tf.cast(mask, tf.bool)
        # Keep the last position visible so an all-padding history still has a query.
        length = tf.shape(mask)[1]
        mask = mask | tf.equal(tf.range(length), length - 1)[None, :]

        def member(k, x):
            parts = [self._recent(k, x, mask, training=training)]
            if self.long_term:
                weights = tf.cast(mask, x.dtype)[..., None]
                parts.append(tf.reduce_sum(x * weights, 1) / tf.reduce_sum(weights, 1))
            return l2_normalize(self.projection[k](tf.concat(parts, axis=-1)))

        queries = self._each_member(member, item_vectors)
        if not self.text_dim:
            return queries
        return self._with_text(queries, self.text_query(item_vectors, mask))

    def get_config(self):
        config = super().get_config()
        config.update(
            max_history=self.max_history,
            embedding_dim=self.embedding_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            pooling=self.pooling,
            recent_items=self.recent_items,
            long_term=self.long_term,
            causal=self.causal,
            positions=self.positions,
            members=self.members,
            text_dim=self.text_dim,
        )
        return config
