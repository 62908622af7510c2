"""The contract between the preprocessing pipeline and everything that reads its output.

The Beam pipeline writes records with the ``*_example`` functions below; the tf.data
readers parse them with the ``*_spec`` functions. Both import this one module, so the
two sides cannot drift apart.

A data directory (``tfrec preprocess --output DIR``) holds:

========================  =============================================================
``items.tfrecord.gz``     one record per catalogue item (``item_spec``)
``vocab/items.txt``       item ids, line ``i`` is the item of index ``i``
``train/*.tfrecord.gz``   one record per training group: the history before it -> its items
``valid/*.tfrecord.gz``   one record per user: history before the validation group, its items
``test/*.tfrecord.gz``    one record per user: history before the test group, its items
                          (the test history is the validation history plus the validation group)
``stats.json``            row accounting, dataset sizes, history-length percentiles
``rejected/*.jsonl``      every rejected input row with its source, line and reason
``config.yaml``           the configuration that produced the directory
========================  =============================================================

Item indices are integers ``0..num_items-1`` in sorted item-id order. Histories are
item indices, oldest first. Training histories are capped at ``max_history`` items;
evaluation histories are complete (the repeat baseline and the ``explore`` protocol
need every past item), and models truncate them themselves. A training record holds
every item of its group as ``targets``: all of them share one history, so a trainer
computes the query once for the whole group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from tfrec import fileio
from tfrec.layout import SHARD_SUFFIX, SPLITS

# Item records.
ITEM_ID = "item_id"
ITEM_INDEX = "item_index"
ITEM_TEXT = "text"
ITEM_COUNT = "train_count"
"""Times the item is a training target: the in-batch sampling frequency used by logQ."""
CATEGORICAL_PREFIX = "cat_"

# Example records.
USER_ID = "user_id"
HISTORY = "history"
HISTORY_GROUP = "history_group"
"""Evaluation records only: the group ordinal (0 = the user's first group) of each history item."""
TARGETS = "targets"
TARGET_GROUP = "target_group"
"""Training records only: the group ordinal of the window's targets (1 = the user's second group;
-1 in data written before it was recorded)."""



def categorical_key(field: str) -> str:
    return CATEGORICAL_PREFIX + field


def split_pattern(data_dir: str | os.PathLike, split: str) -> str:
    """The glob of a split's TFRecord shards."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return fileio.join(data_dir, split, f"*{SHARD_SUFFIX}")


# ------------------------------------------------------------------ writing side


def _bytes(values: Sequence[str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values]))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _serialize(features: dict[str, tf.train.Feature]) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def item_example(
    item_id: str, index: int, text: str, count: int, categorical: dict[str, str] | None = None
) -> bytes:
    features = {
        ITEM_ID: _bytes([item_id]),
        ITEM_INDEX: _ints([index]),
        ITEM_TEXT: _bytes([text]),
        ITEM_COUNT: _ints([count]),
    }
    for field, value in (categorical or {}).items():
        features[categorical_key(field)] = _bytes([value])
    return _serialize(features)


def train_example(user_id: str, history: Sequence[int], targets: Sequence[int], target_group: int) -> bytes:
    return _serialize(
        {USER_ID: _bytes([user_id]), HISTORY: _ints(history), TARGETS: _ints(targets),
         TARGET_GROUP: _ints([target_group])}
    )


def eval_example(
    user_id: str, history: Sequence[int], history_group: Sequence[int], targets: Sequence[int]
) -> bytes:
    if len(history) != len(history_group):
        raise ValueError("history and history_group must have the same length")
    return _serialize(
        {
            USER_ID: _bytes([user_id]),
            HISTORY: _ints(history),
            HISTORY_GROUP: _ints(history_group),
            TARGETS: _ints(targets),
        }
    )


# ------------------------------------------------------------------ reading side


def item_spec(categorical_fields: Sequence[str] = ()) -> dict[str, tf.io.FixedLenFeature]:
    spec = {
        ITEM_ID: tf.io.FixedLenFeature([], tf.string),
        ITEM_INDEX: tf.io.FixedLenFeature([], tf.int64),
        ITEM_TEXT: tf.io.FixedLenFeature([], tf.string),
        ITEM_COUNT: tf.io.FixedLenFeature([], tf.int64),
    }
    for field in categorical_fields:
        spec[categorical_key(field)] = tf.io.FixedLenFeature([], tf.string, default_value="")
    return spec


def train_spec() -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    return {
        USER_ID: tf.io.FixedLenFeature([], tf.string),
        HISTORY: tf.io.RaggedFeature(tf.int64),
        TARGETS: tf.io.RaggedFeature(tf.int64),
        TARGET_GROUP: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }


def eval_spec() -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    return {
        USER_ID: tf.io.FixedLenFeature([], tf.string),
        HISTORY: tf.io.RaggedFeature(tf.int64),
        HISTORY_GROUP: tf.io.RaggedFeature(tf.int64),
        TARGETS: tf.io.RaggedFeature(tf.int64),
    }
