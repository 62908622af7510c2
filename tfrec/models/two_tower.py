"""The two-tower retrieval model and how it is built from a config and a catalogue."""

from __future__ import annotations

import os
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from tfrec import fileio
from tfrec.config import Config
from tfrec.data import Catalogue
from tfrec.errors import TfrecError
from tfrec.layout import CATEGORICAL_VOCAB_FILE, MODEL_FILE, TEXT_CACHE_DIR, TEXT_VOCAB_FILE
from tfrec.models.repeat import RepeatTerm
from tfrec.models.text import (
    TextPipeline,
    cached_text_vectors,
    pretrained_pipeline,
    scratch_pipeline,
    word_piece_vocabulary,
)
from tfrec.models.towers import ItemTower
from tfrec.models.user_tower import UserTower


@keras.saving.register_keras_serializable(package="tfrec")
class TwoTowerModel(keras.Model):
    """A query tower over recent items and a candidate tower over item content.

    ``call((history, target))`` returns ``(query vectors, candidate vectors)`` for
    training; ``scores`` ranks the whole catalogue for a batch of histories, with the
    repeat-aware term when the model has one.

    Args:
        item_tower: an ``ItemTower``.
        user_tower: a ``UserTower``; its ``max_history`` most recent items are read.
        repeat_term: a ``RepeatTerm`` or ``None``.
    """

    def __init__(self, item_tower: ItemTower, user_tower: UserTower,
                 repeat_term: RepeatTerm | None = None, **kwargs):
        super().__init__(**kwargs)
        self.item_tower = item_tower
        self.user_tower = user_tower
        self.repeat_term = repeat_term

    @property
    def max_history(self) -> int:
        return self.user_tower.max_history

    @property
    def num_items(self) -> int:
        return self.item_tower.num_items

    def build(self, input_shape=None):
        for layer in (self.item_tower, self.user_tower, self.repeat_term):
            if layer is not None and not layer.built:
                layer.build()

    def query_vectors(self, history, item_vectors=None, training=None):
        """History ``[B, H]`` (left-padded with -1, any H) -> query vectors ``[B, d]``.

        History items are embedded by the item tower, or looked up in ``item_vectors``
        (the item tower's output for a catalogue, possibly grown after training): at
        inference both give the same vectors, the lookup is cheaper.
        """
        return self.user_tower(*self.history_vectors(history, item_vectors, training=training), training=training)

    def history_vectors(self, history, item_vectors=None, training=None):
        """History ``[B, H]`` -> the user tower's inputs: the last ``max_history`` items'
        vectors ``[B, max_history, d]`` (zero where padded) and which are items."""
        history = tf.convert_to_tensor(history)
        recent = history[:, -self.max_history:]
        pad = self.max_history - tf.shape(recent)[1]
        recent = tf.pad(recent, [[0, 0], [pad, 0]], constant_values=-1)
        known = recent >= 0
        if item_vectors is None:
            vectors = self.item_tower(recent, training=training)
        else:
            vectors = tf.gather(item_vectors, tf.maximum(recent, 0)) * tf.cast(known, item_vectors.dtype)[..., None]
        return vectors, known

    def sequence_queries(self, items, training=None):
        """Causal user towers: items ``[B, L]`` (left-padded with -1) -> the query at every
        position ``[B, L, d]``, each reading that position and the ones before it."""
        items = tf.convert_to_tensor(items)
        return self.user_tower.sequence(self.item_tower(items, training=training), items >= 0, training=training)

    def call(self, inputs, training=None):
        history, target = inputs
        return self.query_vectors(history, training=training), self.item_tower(target, training=training)

    def item_vectors(self) -> tf.Tensor:
        """The whole catalogue's vectors ``[N, d]``."""
        return self.item_tower.all_vectors()

    def scores(self, history, item_vectors, repeat: bool = True) -> tf.Tensor:
        """Scores ``[B, N]`` of every catalogue item; ``repeat`` adds the repeat-aware term."""
        item_vectors = tf.convert_to_tensor(item_vectors)
        queries = self.query_vectors(history, item_vectors, training=False)
        similarity = tf.matmul(queries, item_vectors, transpose_b=True)
        if repeat and self.repeat_term is not None:
            return self.repeat_term(similarity, history)
        return similarity

    def get_config(self):
        config = super().get_config()
        config.update(
            item_tower=keras.saving.serialize_keras_object(self.item_tower),
            user_tower=keras.saving.serialize_keras_object(self.user_tower),
            repeat_term=keras.saving.serialize_keras_object(self.repeat_term) if self.repeat_term else None,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("item_tower", "user_tower", "repeat_term"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


# ------------------------------------------------------------------------- building


def categorical_vocabularies(catalogue: Catalogue) -> dict[str, list[str]]:
    """Per categorical field, its sorted non-empty values; code ``i + 1`` is value ``i``."""
    return {field: sorted({v for v in values if v}) for field, values in catalogue.categorical.items()}


def categorical_codes(catalogue: Catalogue, vocabularies: dict[str, list[str]]) -> np.ndarray:
    columns = []
    for field, vocabulary in vocabularies.items():
        code = {value: i + 1 for i, value in enumerate(vocabulary)}
        columns.append([code.get(v, 0) for v in catalogue.categorical[field]])
    return np.array(columns, np.int32).T.reshape(len(catalogue), len(vocabularies))


def text_pipeline(config: Config, model_dir: str | os.PathLike, catalogue: Catalogue | None = None) -> TextPipeline:
    """The model's tokenizer and text encoder, as configured.

    A scratch encoder's WordPiece vocabulary is computed from the catalogue once and
    kept in ``model_dir`` so every later stage tokenizes the same way.
    """
    encoder = config.model.text_encoder
    if encoder.kind == "pretrained":
        layers = {"frozen": None, "last_n": encoder.fine_tune_layers, "all": -1}[encoder.fine_tune]
        return pretrained_pipeline(encoder, trainable_layers=layers)
    vocab_path = fileio.join(model_dir, TEXT_VOCAB_FILE)
    if fileio.exists(vocab_path):
        vocabulary = fileio.read_text(vocab_path).split("\n")
    else:
        if catalogue is None:
            raise FileNotFoundError(f"{vocab_path}: the scratch text encoder's vocabulary is missing")
        vocabulary = word_piece_vocabulary(catalogue.texts, encoder.scratch.vocabulary_size)
        fileio.write_text(vocab_path, "\n".join(vocabulary))
    return scratch_pipeline(encoder, vocabulary)


def serving_text_pipeline(config: Config, model_dir: str | os.PathLike, model: TwoTowerModel) -> TextPipeline:
    """The tokenizer and text encoder that embed *new* text the way the model embeds its items.

    A frozen model's item texts were encoded by the pretrained encoder, so new text goes
    through a fresh copy of it; a model that trained its encoder uses its own.
    """
    encoder = model.item_tower.text_encoder
    settings = config.model.text_encoder
    if settings.kind == "scratch":
        vocabulary = fileio.read_text(fileio.join(model_dir, TEXT_VOCAB_FILE)).split("\n")
        return scratch_pipeline(settings, vocabulary, encoder=encoder)
    pipeline = pretrained_pipeline(settings)
    if encoder is not None:
        pipeline.encoder = encoder
    return pipeline


def build_model(config: Config, catalogue: Catalogue, model_dir: str | os.PathLike,
                pipeline: TextPipeline | None = None,
                known_text_vectors: Mapping[str, np.ndarray] | None = None,
                graph=None) -> TwoTowerModel:
    """A fresh model for ``catalogue``, with its text content stored in the item tower.

    ``known_text_vectors``: text -> vector from this same (frozen) encoder, e.g. a warm
    start's previous model; only the other texts are encoded. ``graph``: the propagation
    matrix of the training split (``tfrec.data.graph.item_graph``), needed when
    ``model.graph.propagate`` is on.
    """
    model_dir = os.fspath(model_dir)
    m = config.model
    unresolved = [key for key in ("members", "embedding_dim") if getattr(m, key) == "auto"]
    if unresolved:
        raise TfrecError(f"model.{unresolved[0]} is `auto`: choose it from the shop's data first "
                         f"(tfrec.config.derived.resolve(config, stats))")
    if m.graph.propagate != "none" and graph is None:
        raise TfrecError(f"model.graph.propagate is {m.graph.propagate}: the model needs the training split's "
                         f"item graph (tfrec.data.graph.item_graph)")
    pipeline = pipeline or text_pipeline(config, model_dir, catalogue)
    frozen = m.text_encoder.kind == "pretrained" and m.text_encoder.fine_tune == "frozen"
    vocabularies = categorical_vocabularies(catalogue)
    fileio.write_json(fileio.join(model_dir, CATEGORICAL_VOCAB_FILE), vocabularies)

    item_tower = ItemTower(
        num_items=len(catalogue),
        embedding_dim=m.embedding_dim,
        text_dim=pipeline.encoder.output_dim,
        text_encoder=None if frozen else pipeline.encoder,
        token_length=None if frozen else m.text_encoder.sequence_length,
        categorical_sizes=[len(v) + 1 for v in vocabularies.values()],
        categorical_dim=m.categorical_dim,
        use_id_embedding=m.item_id_embedding,
        id_dropout=m.item_dropout,
        members=m.members,
        text_part=frozen and m.text_term,
        graph=m.graph.propagate,
        graph_hops=m.graph.hops,
        graph_edges=graph.nnz if m.graph.propagate != "none" else 0,
        seed=config.train.seed,
        name="item_tower",
    )
    user_tower = UserTower(
        max_history=config.data.sequences.max_history,
        embedding_dim=m.embedding_dim,
        num_layers=m.user_tower.num_layers,
        num_heads=m.user_tower.num_heads,
        intermediate_dim=m.user_tower.intermediate_dim,
        dropout=m.user_tower.dropout,
        pooling=m.user_tower.pooling,
        recent_items=m.user_tower.recent_items,
        long_term=m.user_tower.long_term,
        positions=m.user_tower.positions,
        members=m.members,
        causal=m.user_tower.causal,
        text_dim=pipeline.encoder.output_dim if frozen and m.text_term else 0,
        name="user_tower",
    )
    repeat_term = (
        RepeatTerm(initial_scale=1.0 / config.train.temperature, name="repeat_term")
        if m.repeat_term else None
    )
    model = TwoTowerModel(item_tower, user_tower, repeat_term, name="two_tower")
    model.build()
    codes = categorical_codes(catalogue, vocabularies) if vocabularies else None
    if frozen:
        vectors = cached_text_vectors(pipeline, list(catalogue.texts), fileio.join(model_dir, TEXT_CACHE_DIR),
                                      known=known_text_vectors)
        item_tower.set_catalogue(text_vectors=vectors, categorical=codes)
    else:
        tokens = pipeline.tokenize(tf.constant(list(catalogue.texts))).numpy()
        item_tower.set_catalogue(tokens=tokens, categorical=codes)
    if m.graph.propagate != "none":
        item_tower.set_graph(graph)
    return model


def load_model(model_dir: str | os.PathLike) -> TwoTowerModel:
    path = fileio.join(model_dir, MODEL_FILE)
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir} the output folder of `tfrec train`?")
    try:
        return keras.saving.load_model(path, compile=False)
    except ValueError as error:
        if "could not be loaded" not in str(error):
            raise
        raise TfrecError(f"{path}: its weights do not fit the towers its config describes (a model "
                         f"written before the towers had ensemble members, or a damaged file); "
                         f"train the model again") from error
