"""The item tower: items from their text, ids, categories and the item graph.

``ItemTower`` maps item indices to L2-normalised vectors. The text vector of an item
(from a frozen, cached pretrained encoder, or from a trainable encoder over the item's
stored token ids) goes through a small MLP; an optional per-item id embedding and
categorical embeddings are added. Id embeddings start at zero and are dropped per item
during training, so an item never seen in training (cold start) gets a vector from its
text alone, in the same space.

``UserTower`` (``tfrec.models.user_tower``) reads those vectors for a user's history.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from tfrec.models.ensemble import each_member, join_members


def _rows(embedding: keras.layers.Embedding, ids):
    """``embedding(ids)``, read from the table row by row.

    Keras' lookup reads the whole table, then gathers. When the same step then updates rows of
    the table in place (``train.optimizer: lazy_adam``), TensorFlow must first copy the whole
    table, because that read still refers to it: a cost in proportion to the catalogue at every
    step. A gather on the variable itself reads only the rows.
    """
    return tf.gather(embedding.embeddings.value, ids)


def l2_normalize(x):
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)


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
            vectors = tf.concat([vectors, l2_normalize(text_vectors)], axis=-1)
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
        return l2_normalize(x)

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
