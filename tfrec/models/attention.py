"""A transformer block whose attention knows how far apart two items are, not where they sit.

With absolute position embeddings, a causal tower trained on every position at once sees a
different picture at each position: the query at position ``p`` of a left-padded window
reads items whose embeddings say how far they are from the *end of the window*, which lies
in that query's future. Served, the query is always the last position. ``RelativeBlock``
gives attention a learned bias per head and per distance between the query and the item it
reads (Shaw et al. 2018; Raffel et al. 2020), so every training position is built like
the served query of the same items: "the item 3 steps back" means the same thing everywhere.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfrec")
class RelativeBlock(keras.layers.Layer):
    """Pre-norm transformer block: self-attention with a relative-distance bias, then a
    feed-forward layer, each with dropout and a residual connection.

    Args:
        intermediate_dim: feed-forward width.
        num_heads: attention heads (must divide the input width).
        max_distance: distances of ``max_distance - 1`` or more share one bias.
        dropout: dropout on the attention weights and on both residual branches.

    Call with ``x [B, L, d]`` and ``attention_mask [B, L, L]`` (``True``: query ``i`` may read
    item ``j``). Distances are ``i - j``; both directions have their own biases.

    Example:

    >>> block = RelativeBlock(intermediate_dim=16, num_heads=2, max_distance=4)
    >>> mask = np.tril(np.ones((3, 3), bool))[None]
    >>> block(np.zeros((1, 3, 8), "float32"), attention_mask=mask).shape
    TensorShape([1, 3, 8])
    """

    def __init__(self, intermediate_dim: int, num_heads: int, max_distance: int,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.max_distance = max_distance
        self.dropout = dropout
        self.attention_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="attention_norm")
        self.feedforward_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="feedforward_norm")
        self.attention_dropout = keras.layers.Dropout(dropout)
        self.output_dropout = keras.layers.Dropout(dropout)
        self.feedforward_dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        width = int(input_shape[-1])
        if width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide the input width ({width})")
        self.head_dim = width // self.num_heads
        self.qkv = keras.layers.Dense(3 * width, name="qkv")
        self.attention_output = keras.layers.Dense(width, name="attention_output")
        self.intermediate = keras.layers.Dense(self.intermediate_dim, activation="gelu", name="intermediate")
        self.feedforward_output = keras.layers.Dense(width, name="feedforward_output")
        self.attention_norm.build(input_shape)
        self.feedforward_norm.build(input_shape)
        self.qkv.build(input_shape)
        self.attention_output.build(input_shape)
        self.intermediate.build(input_shape)
        self.feedforward_output.build((*input_shape[:-1], self.intermediate_dim))
        # Index i - j + max_distance - 1 of the last axis: distances -(M-1) .. M-1.
        self.distance_bias = self.add_weight(
            name="distance_bias", shape=(self.num_heads, 2 * self.max_distance - 1), initializer="zeros")

    def _bias(self, length):
        steps = tf.range(length)
        distance = tf.clip_by_value(steps[:, None] - steps[None, :], 1 - self.max_distance, self.max_distance - 1)
        return tf.gather(self.distance_bias, distance + self.max_distance - 1, axis=1)  # [H, L, L]

    def call(self, x, attention_mask, training=None):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        heads = tf.reshape(self.qkv(self.attention_norm(x)), [batch, length, 3, self.num_heads, self.head_dim])
        query, key, value = tf.unstack(tf.transpose(heads, [2, 0, 3, 1, 4]))  # each [B, H, L, D]
        logits = tf.matmul(query, key, transpose_b=True) / np.sqrt(self.head_dim).astype("float32")
        logits = logits + self._bias(length)[None]
        logits = tf.where(tf.cast(attention_mask, tf.bool)[:, None], logits, -1e9)
        weights = self.attention_dropout(tf.nn.softmax(logits, axis=-1), training=training)
        attended = tf.reshape(tf.transpose(tf.matmul(weights, value), [0, 2, 1, 3]), tf.shape(x))
        x = x + self.output_dropout(self.attention_output(attended), training=training)
        hidden = self.feedforward_output(self.intermediate(self.feedforward_norm(x)))
        return x + self.feedforward_dropout(hidden, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(intermediate_dim=self.intermediate_dim, num_heads=self.num_heads,
                      max_distance=self.max_distance, dropout=self.dropout)
        return config
