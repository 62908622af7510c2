"""The two towers: items from their text, users from their recent items.

``ItemTower`` maps item indices to L2-normalised vectors. The text vector of an item
(from a frozen, cached pretrained encoder, or from a trainable encoder over the item's
stored token ids) goes through a small MLP; an optional per-item id embedding and
categorical embeddings are added. Id embeddings start at zero and are dropped per item
during training, so an item never seen in training (cold start) gets a vector from its
text alone, in the same space.

``UserTower`` reads the item vectors of a user's history (left-padded, most recent last)
with position embeddings and keras-hub ``TransformerEncoder`` blocks, then pools. It has
no per-user table: any history, of a known or a brand-new user, gives a vector.
"""

from __future__ import annotations

import functools

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tfrec.models.attention import RelativeBlock
from tfrec.models.ensemble import each_member, join_members, split_members


def _rows(embedding: keras.layers.Embedding, ids):
    """``embedding(ids)``, read from the table row by row.

    Keras' lookup reads the whole table, then gathers. When the same step then updates rows of
    the table in place (``train.optimizer: lazy_adam``), TensorFlow must first copy the whole
    table, because that read still refers to it: a cost in proportion to the catalogue at every
    step. A gather on the variable itself reads only the rows.
    """
    return tf.gather(embedding.embeddings.value, ids)


def _l2_normalize(x):
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)


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
class ItemTower(keras.layers.Layer):
    """Item index (any shape, ``-1`` = padding) -> item vector ``[..., output_dim]``.

    The catalogue's content (text vectors or token ids, categorical codes) is stored in
    non-trainable weights, set once with ``set_catalogue`` and saved with the model.

    Args:
        num_items: catalogue size.
        embedding_dim: output size.
        text_dim: size of the text encoder's vectors.
        text_encoder: a layer mapping token ids ``[M, S]`` to ``[M, text_dim]`` when the
            encoder is trained with the model; ``None`` when text vectors are precomputed.
        token_length: ``S``, the stored token ids per item (with ``text_encoder``).
        categorical_sizes: for each categorical field, its number of codes (code 0 is
            "missing").
        use_id_embedding: add a per-item trainable vector (initialised at zero).
        id_dropout: probability of dropping an item's id vector during training.
        hidden_dim: width of the MLP over the text vector.
        members: independently initialised copies of the trainable parts (a trainable
            ``text_encoder`` is one, shared by every member). Each member's
            vector is L2-normalised; the tower returns their concatenation scaled by
            ``1 / sqrt(members)``, so a dot product of two such vectors is the mean of the
            members' cosines: an ensemble that is still a single two-tower model.
        text_part: append each item's fixed text vector, L2-normalised, after the trained
            part (frozen text vectors only). A ``UserTower`` with ``text_dim`` reads it to add
            a zero-shot text similarity, with a weight fitted on validation, to every score.
        graph: propagation over the item–item graph (``tfrec.data.graph``), set with
            ``set_graph``: ``none``; ``text``, the text vectors the MLP reads are the propagated
            ones (fixed text vectors only; the text part stays the item's own); ``ids``, the id
            vector of an item is read from the id table propagated over the graph, at every call.
        graph_hops: propagation steps (mean over hops 0..K).
        graph_edges: the stored graph's number of entries (self-loops included).

    Example:

    >>> tower = ItemTower(num_items=3, embedding_dim=4, text_dim=5)
    >>> tower.set_catalogue(text_vectors=np.eye(3, 5, dtype="float32"))
    >>> tower(np.array([[0, 2, -1]])).shape
    TensorShape([1, 3, 4])
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        text_dim: int,
        text_encoder: keras.layers.Layer | None = None,
        token_length: int | None = None,
        categorical_sizes: list[int] | tuple[int, ...] = (),
        categorical_dim: int = 16,
        use_id_embedding: bool = True,
        id_dropout: float = 0.1,
        hidden_dim: int = 256,
        members: int = 1,
        text_part: bool = False,
        graph: str = "none",
        graph_hops: int = 2,
        graph_edges: int = 0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if text_encoder is not None and token_length is None:
            raise ValueError("a trainable text_encoder needs token_length")
        if text_encoder is not None and text_part:
            raise ValueError("text_part needs fixed text vectors: a trainable text_encoder has none")
        if graph not in ("none", "text", "ids"):
            raise ValueError(f"graph must be none, text or ids, got {graph!r}")
        if graph == "text" and text_encoder is not None:
            raise ValueError("graph=text propagates fixed text vectors: a trainable text_encoder has none")
        if graph == "ids" and not use_id_embedding:
            raise ValueError("graph=ids propagates the id embeddings: use_id_embedding must be on")
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.text_dim = text_dim
        self.text_encoder = text_encoder
        self.token_length = token_length
        self.categorical_sizes = list(categorical_sizes)
        self.categorical_dim = categorical_dim
        self.use_id_embedding = use_id_embedding
        self.id_dropout = id_dropout
        self.hidden_dim = hidden_dim
        self.members = members
        self.text_part = text_part
        self.graph = graph
        self.graph_hops = graph_hops
        self.graph_edges = graph_edges
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        each = functools.partial(each_member, members)

        self.hidden = each(lambda m: keras.layers.Dense(hidden_dim, activation="gelu", name=f"text_hidden{m}"))
        self.projection = each(lambda m: keras.layers.Dense(embedding_dim, name=f"text_projection{m}"))
        self.id_embedding = each(lambda m: keras.layers.Embedding(
            num_items, embedding_dim, embeddings_initializer="zeros", name=f"id_embedding{m}")
        ) if use_id_embedding else None
        self.categorical_embeddings = each(lambda m: [
            keras.layers.Embedding(size, categorical_dim, name=f"categorical_{i}{m}")
            for i, size in enumerate(self.categorical_sizes)
        ])
        self.categorical_projection = each(lambda m: keras.layers.Dense(
            embedding_dim, use_bias=False, name=f"categorical_projection{m}")
        ) if self.categorical_sizes else None

    @property
    def trained_dim(self) -> int:
        """Size of the vectors' trained part: ``members * embedding_dim``."""
        return self.members * self.embedding_dim

    @property
    def output_dim(self) -> int:
        """Size of the tower's vectors: the trained part, then ``text_dim`` with ``text_part``."""
        return self.trained_dim + (self.text_dim if self.text_part else 0)

    def build(self, input_shape=None):
        if self.text_encoder is None:
            self.text_vectors = self.add_weight(
                name="text_vectors", shape=(self.num_items, self.text_dim),
                initializer="zeros", trainable=False,
            )
        else:
            self.catalogue_tokens = self.add_weight(
                name="catalogue_tokens", shape=(self.num_items, self.token_length),
                initializer="zeros", dtype="int32", trainable=False,
            )
        if self.categorical_sizes:
            self.catalogue_categorical = self.add_weight(
                name="catalogue_categorical", shape=(self.num_items, len(self.categorical_sizes)),
                initializer="zeros", dtype="int32", trainable=False,
            )
        if self.graph != "none":
            self._build_graph()
        if self.text_encoder is not None and not self.text_encoder.built:
            self.text_encoder.build((None, self.token_length))
        for k in range(self.members):
            self.hidden[k].build((None, self.text_dim))
            self.projection[k].build((None, self.hidden_dim))
            if self.id_embedding is not None:
                self.id_embedding[k].build((None,))
            for embedding in self.categorical_embeddings[k]:
                embedding.build((None,))
            if self.categorical_projection is not None:
                self.categorical_projection[k].build((None, self.categorical_dim * len(self.categorical_sizes)))

    def _build_graph(self):
        for name, dtype in (("graph_rows", "int32"), ("graph_columns", "int32"), ("graph_values", "float32")):
            setattr(self, name, self.add_weight(name=name, shape=(self.graph_edges,), initializer="zeros",
                                                dtype=dtype, trainable=False))
        if self.graph == "text":
            self.graph_text_shift = self.add_weight(
                name="graph_text_shift", shape=(self.num_items, self.text_dim), initializer="zeros", trainable=False)

    def set_graph(self, matrix) -> None:
        """Stores the propagation matrix (a ``scipy.sparse`` ``[num_items, num_items]`` with
        ``graph_edges`` entries, ``tfrec.data.graph.normalized``); with ``graph=text``, after
        ``set_catalogue``, also the shift from each text vector to its propagated one."""
        from tfrec.data.graph import propagate

        if not self.built:
            self.build()
        matrix = matrix.tocoo()
        if matrix.nnz != self.graph_edges or matrix.shape != (self.num_items, self.num_items):
            raise ValueError(f"the graph has {matrix.nnz} entries over {matrix.shape}; this tower was built "
                             f"for {self.graph_edges} over {self.num_items} items")
        self.graph_rows.assign(matrix.row.astype(np.int32))
        self.graph_columns.assign(matrix.col.astype(np.int32))
        self.graph_values.assign(matrix.data.astype(np.float32))
        if self.graph == "text":
            text = np.asarray(self.text_vectors.numpy())
            self.graph_text_shift.assign(propagate(matrix.tocsr(), text, self.graph_hops) - text)

    def propagated(self, table: tf.Tensor) -> tf.Tensor:
        """The mean over hops ``0..graph_hops`` of the stored matrix's powers times ``table [num_items, d]``."""
        matrix = tf.SparseTensor(
            tf.stack([tf.cast(self.graph_rows, tf.int64), tf.cast(self.graph_columns, tf.int64)], axis=1),
            tf.convert_to_tensor(self.graph_values), [self.num_items, self.num_items])
        total = current = table
        for _ in range(self.graph_hops):
            current = tf.sparse.sparse_dense_matmul(matrix, current)
            total = total + current
        return total / float(self.graph_hops + 1)

    def set_catalogue(self, text_vectors=None, tokens=None, categorical=None) -> None:
        """Stores the catalogue's text vectors (or token ids) and categorical codes."""
        if not self.built:
            self.build()
        if self.text_encoder is None:
            if text_vectors is None:
                raise ValueError("this tower reads precomputed text vectors: pass text_vectors")
            self.text_vectors.assign(np.asarray(text_vectors, np.float32))
        else:
            if tokens is None:
                raise ValueError("this tower encodes text itself: pass tokens")
            self.catalogue_tokens.assign(np.asarray(tokens, np.int32))
        if self.categorical_sizes:
            self.catalogue_categorical.assign(np.asarray(categorical, np.int32))

    # -- pieces, also used by the exported candidate model --------------------------

    def text_features(self, indices: tf.Tensor, training=None) -> tf.Tensor:
        """Text vectors ``[M, text_dim]`` of catalogue items ``[M]``."""
        if self.text_encoder is None:
            return tf.gather(self.text_vectors, indices)
        return self.text_encoder(tf.gather(self.catalogue_tokens, indices), training=training)

    def categorical_codes(self, indices: tf.Tensor) -> tf.Tensor | None:
        if not self.categorical_sizes:
            return None
        return tf.gather(self.catalogue_categorical, indices)

    def embed(self, text_vectors, indices, categorical_codes=None, training=None) -> tf.Tensor:
        """Combines text vectors ``[M, text_dim]`` with the id (``-1``: none) and categorical parts."""
        read = text_vectors
        if self.graph == "text":  # catalogue items read their propagated text vector
            read = text_vectors + self._known(indices, text_vectors.dtype) * tf.gather(
                self.graph_text_shift, tf.clip_by_value(indices, 0, self.num_items - 1))
        vectors = join_members([self._embed_member(k, read, indices, categorical_codes, training)
                                for k in range(self.members)])
        if self.text_part:
            vectors = tf.concat([vectors, _l2_normalize(text_vectors)], axis=-1)
        return vectors

    def _known(self, indices, dtype):
        """``[M, 1]``: 1 for catalogue items, 0 for -1 or an item added after training."""
        return tf.cast((indices >= 0) & (indices < self.num_items), dtype)[:, None]

    def _id_vectors(self, k, indices):
        rows = tf.clip_by_value(indices, 0, self.num_items - 1)
        if self.graph == "ids":
            return tf.gather(self.propagated(self.id_embedding[k].embeddings), rows)
        return _rows(self.id_embedding[k], rows)

    def _embed_member(self, k, text_vectors, indices, categorical_codes, training):
        x = self.projection[k](self.hidden[k](text_vectors))
        if self.id_embedding is not None:
            # Items outside the trained catalogue (-1, or added after training) have no id vector.
            known = self._known(indices, x.dtype)
            if training and self.id_dropout > 0:
                keep = keras.random.uniform(tf.shape(known), seed=self.seed_generator) >= self.id_dropout
                known = known * tf.cast(keep, x.dtype)
            x = x + known * self._id_vectors(k, indices)
        if self.categorical_sizes:
            parts = [emb(categorical_codes[:, i]) for i, emb in enumerate(self.categorical_embeddings[k])]
            x = x + self.categorical_projection[k](tf.concat(parts, axis=-1))
        return _l2_normalize(x)

    def call(self, indices, training=None):
        indices = tf.convert_to_tensor(indices)
        flat = tf.reshape(tf.cast(indices, tf.int32), [-1])
        valid = flat >= 0
        unique, position = tf.unique(tf.maximum(flat, 0))
        vectors = self.embed(
            self.text_features(unique, training=training),
            unique,
            self.categorical_codes(unique),
            training=training,
        )
        out = tf.gather(vectors, position) * tf.cast(valid, vectors.dtype)[:, None]
        return tf.reshape(out, tf.concat([tf.shape(indices), [self.output_dim]], 0))

    def all_vectors(self, batch_size: int = 16384) -> tf.Tensor:
        """Vectors of the whole catalogue ``[num_items, output_dim]`` (inference)."""
        chunks = [
            self(tf.range(start, min(start + batch_size, self.num_items)), training=False)
            for start in range(0, self.num_items, batch_size)
        ]
        return tf.concat(chunks, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_items=self.num_items,
            embedding_dim=self.embedding_dim,
            text_dim=self.text_dim,
            text_encoder=keras.saving.serialize_keras_object(self.text_encoder) if self.text_encoder else None,
            token_length=self.token_length,
            categorical_sizes=self.categorical_sizes,
            categorical_dim=self.categorical_dim,
            use_id_embedding=self.use_id_embedding,
            id_dropout=self.id_dropout,
            hidden_dim=self.hidden_dim,
            members=self.members,
            text_part=self.text_part,
            graph=self.graph,
            graph_hops=self.graph_hops,
            graph_edges=self.graph_edges,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("text_encoder") is not None:
            config["text_encoder"] = keras.saving.deserialize_keras_object(config["text_encoder"])
        return cls(**config)


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
        return tf.concat([(1.0 - weight) * queries, weight * _l2_normalize(text_queries)], axis=-1)

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
            return _l2_normalize(self.projection[k](tf.concat(outputs, axis=-1)))

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
            return _l2_normalize(self.projection[k](tf.concat(parts, axis=-1)))

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
