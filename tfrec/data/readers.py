"""Readers for a data directory written by ``tfrec preprocess``.

Training examples stream through ``tf.data`` (parse, shuffle, batch, prefetch); the
catalogue and the evaluation splits are small (one record per item or per user) and
are read whole into NumPy, which the exact evaluator and the baselines work on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec import features as F
from tfrec import fileio, layout
from tfrec.errors import TfrecError

PAD = -1
"""Item index used to pad histories; never a real item."""


def _files(pattern: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise TfrecError(f"no files match {pattern}: is this the output folder of `tfrec preprocess`?")
    return files


def _records(pattern: str, spec: dict[str, Any]) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(_files(pattern), compression_type="GZIP").map(
        lambda record: tf.io.parse_single_example(record, spec),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


READ_BATCH = 4096
"""Records parsed at once by the whole-split readers (one Python step per batch, not per record)."""


def _columns(pattern: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Every record of the files, read a batch at a time, as ``{key: per-record values}``:
    one array per key for fixed-length features, and a list of arrays, one per record,
    for ragged ones. Records keep their order in the files."""
    ragged = {k for k, v in spec.items() if isinstance(v, tf.io.RaggedFeature)}

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        return {**{k: v for k, v in parsed.items() if k not in ragged},
                **{f"{k}/values": parsed[k].flat_values for k in ragged},
                **{f"{k}/splits": parsed[k].row_splits for k in ragged}}

    data = (tf.data.TFRecordDataset(_files(pattern), compression_type="GZIP").batch(READ_BATCH)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    out: dict[str, list] = {k: [] for k in spec}
    for batch in data.as_numpy_iterator():
        for key in spec:
            if key in ragged:
                out[key] += np.split(batch[f"{key}/values"], batch[f"{key}/splits"][1:-1])
            else:
                out[key].append(batch[key])
    return {k: (v if k in ragged else np.concatenate(v) if v else np.zeros(0, object)) for k, v in out.items()}


def load_stats(data_dir: str | os.PathLike) -> dict[str, Any]:
    path = fileio.join(data_dir, layout.STATS_FILE)
    try:
        return json.loads(fileio.read_text(path))
    except FileNotFoundError:
        raise TfrecError(f"{path} not found: is {data_dir} the output folder of `tfrec preprocess`?") from None


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Every item, in index order."""

    ids: np.ndarray
    """Item ids (str), ``ids[i]`` is the item of index ``i``."""
    texts: np.ndarray
    """Product texts (str)."""
    counts: np.ndarray
    """Training-target counts (int64), the in-batch sampling frequency."""
    categorical: dict[str, np.ndarray]
    """Field -> values (str, "" when missing)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def cold_start(self) -> np.ndarray:
        """Boolean mask of items that never occur as a training target."""
        return self.counts == 0

    def index_of(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.ids)}


def load_catalogue(data_dir: str | os.PathLike, categorical_fields: tuple[str, ...] | list[str] = ()) -> Catalogue:
    """Reads ``items.tfrecord.gz`` into index order and checks it is complete."""
    path = fileio.join(data_dir, layout.ITEMS_FILE)
    columns = _columns(path, F.item_spec(categorical_fields))
    if not len(columns[F.ITEM_INDEX]):
        raise TfrecError(f"{path} holds no items")
    order = np.argsort(columns[F.ITEM_INDEX].astype(np.int64), kind="stable")
    indices = columns[F.ITEM_INDEX].astype(np.int64)[order]
    if not np.array_equal(indices, np.arange(len(order))):
        raise TfrecError(f"{path}: item indices are not 0..{len(order) - 1}")

    def strings(key: str) -> np.ndarray:
        return np.array([value.decode("utf-8") for value in columns[key][order]], dtype=object)

    return Catalogue(
        ids=strings(F.ITEM_ID),
        texts=strings(F.ITEM_TEXT),
        counts=columns[F.ITEM_COUNT].astype(np.int64)[order],
        categorical={f: strings(F.categorical_key(f)) for f in categorical_fields},
    )


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """The validation or test users: their histories and held-out items."""

    user_ids: np.ndarray
    histories: list[np.ndarray]
    """Item indices, oldest first, the whole past of the user."""
    history_groups: list[np.ndarray]
    """Group ordinal of each history item."""
    targets: list[np.ndarray]
    """Distinct item indices of the held-out group."""

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, rows: np.ndarray | list[int]) -> EvalSplit:
        return EvalSplit(
            user_ids=self.user_ids[rows],
            histories=[self.histories[i] for i in rows],
            history_groups=[self.history_groups[i] for i in rows],
            targets=[self.targets[i] for i in rows],
        )


def sample_users(split: EvalSplit, max_users: int | None, seed: int) -> EvalSplit:
    """At most ``max_users`` users of ``split``, drawn at random without replacement (fixed by
    ``seed``), in the split's order; the split itself when it is no larger."""
    if max_users is None or len(split) <= max_users:
        return split
    rows = np.random.default_rng(seed).choice(len(split), max_users, replace=False)
    return split.subset(np.sort(rows))


def load_eval_split(data_dir: str | os.PathLike, split: str) -> EvalSplit:
    """Reads the ``valid`` or ``test`` records, sorted by user id (deterministic)."""
    columns = _columns(F.split_pattern(data_dir, split), F.eval_spec())
    users = columns[F.USER_ID]
    order = sorted(range(len(users)), key=users.__getitem__)
    return EvalSplit(
        user_ids=np.array([users[i].decode("utf-8") for i in order], dtype=object),
        histories=[columns[F.HISTORY][i].astype(np.int64) for i in order],
        history_groups=[columns[F.HISTORY_GROUP][i].astype(np.int64) for i in order],
        targets=[columns[F.TARGETS][i].astype(np.int64) for i in order],
    )


def pad_histories(histories: list[np.ndarray], length: int) -> np.ndarray:
    """Keeps the ``length`` most recent items of each history, left-padded with ``PAD``.

    Left padding puts the most recent item in the last column whatever the history's
    length, which is where the user tower reads it.
    """
    out = np.full((len(histories), length), PAD, dtype=np.int64)
    for row, history in enumerate(histories):
        recent = history[-length:]
        if len(recent):
            out[row, length - len(recent):] = recent
    return out


def _left_pad(history: tf.Tensor, length: int) -> tf.Tensor:
    recent = history[-length:]
    return tf.concat([tf.fill([length - tf.shape(recent)[0]], tf.constant(PAD, tf.int64)), recent], 0)


def _is_new_window(first_new_group: Mapping[str, int]):
    users = list(first_new_group)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(users, tf.string),
                                            tf.constant([first_new_group[u] for u in users], tf.int64)),
        default_value=0)

    def is_new(example):
        group = example[F.TARGET_GROUP]
        return (group < 0) | (group >= table.lookup(example[F.USER_ID]))

    return is_new


def train_examples(data_dir: str | os.PathLike, max_history: int, max_targets: int, skip_repeats: bool = False,
                   cache: bool = True, first_new_group: Mapping[str, int] | None = None) -> tf.data.Dataset:
    """``(history [max_history], targets [max_targets])`` per training window, in file order.

    Histories are left-padded, targets right-padded, both with ``PAD``. A window whose
    group has more than ``max_targets`` items becomes several examples with the same
    history, so every batch has the same shape and no item is lost. With
    ``skip_repeats``, targets already in the window's history are left out (and windows
    left without any target dropped).

    With ``first_new_group`` (user id -> group ordinal), a user's windows whose targets are
    an earlier group are left out: what a warm-started run's previous model trained on
    already (``trained_groups``). Users it lacks, and windows of data written before the
    target group was recorded, are kept.
    """

    def targets_of(example):
        history, targets = example[F.HISTORY], example[F.TARGETS]
        if skip_repeats:
            repeat = tf.reduce_any(tf.equal(targets[:, None], history[None, :]), axis=1)
            targets = tf.boolean_mask(targets, ~repeat)
        return _left_pad(history, max_history), targets

    def chunks(history, targets):
        pieces = (tf.shape(targets)[0] + max_targets - 1) // max_targets
        padded = tf.pad(targets, [[0, pieces * max_targets - tf.shape(targets)[0]]], constant_values=PAD)
        return tf.data.Dataset.from_tensor_slices(
            (tf.repeat(history[None, :], pieces, axis=0), tf.reshape(padded, [pieces, max_targets]))
        )

    ds = _records(F.split_pattern(data_dir, "train"), F.train_spec())
    if first_new_group:
        ds = ds.filter(_is_new_window(first_new_group))
    ds = (
        ds.map(targets_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .flat_map(chunks)
    )
    return ds.cache() if cache else ds


def shuffled_batches(
    examples: tf.data.Dataset, batch_size: int, shuffle_buffer: int, seed: int
) -> tf.data.Dataset:
    """Shuffled full batches; the same seed gives the same batches.

    Trainers pass ``seed + epoch``, so a run resumed at epoch ``e`` sees exactly the
    batches the interrupted run would have seen.
    """
    return (
        examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
