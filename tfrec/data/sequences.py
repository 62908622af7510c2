"""Whole training sequences for causal all-position training.

A causal user tower reads a user's training items once and gives a query at every
position; the query at the last item of group ``g`` is trained against every item of group
``g + 1``. One sequence then stands for all of a user's training windows, at the cost of one
forward pass instead of one per window.

A training example is one piece of a user's sequence:

- ``items [L]``: item indices, oldest first, left-padded with ``PAD``;
- ``pair_query [P]``, ``pair_item [P]``: the (query position, target item) pairs the piece
  trains, padded with ``-1``. The query at the last position of group ``g`` has every item of
  group ``g + 1`` as a target; those items may lie after the piece's end.

The causal mask lets position ``p`` read positions ``<= p`` only, and a query sits at the end
of its group, so no query reads its target, the rest of the target's group, or anything
later. Targets are training items only: the last training group's query has no target (its
next group is the validation item). A piece ends at its last query, so, as in serving, the
last position of a sequence holds a query.

The training part of an evaluated user's history is exactly the history of their
validation record (with its group ordinals), so sequences are read from there. Users that
only train (``short_users: train_only``) have no validation record: each of their training
windows becomes a sequence of its own (history, then its group), which trains the same
query as the window does.

A warm-started run trains only what its previous model has not: with ``first_new_group``,
the items of a user's groups that model trained on stay history, and only later groups are
targets.

A sequence longer than ``L`` is cut into pieces of ``L`` items ending ``L // 2`` items
apart. Each query is trained in exactly one piece, the first in which it lies in the last
``L // 2`` positions (or anywhere, in the first piece), so it reads at least ``L // 2``
items of context and at most ``L``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrec import features as F
from tfrec.data.readers import PAD, _columns, load_eval_split, load_stats

logger = logging.getLogger(__name__)


def query_positions(groups: np.ndarray) -> np.ndarray:
    """For items with group ordinals ``groups`` (non-decreasing), the position of the query
    that predicts each item: the last position of the previous group, ``-1`` in the first group."""
    groups = np.asarray(groups)
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64)
    # The last position of each run of equal ordinals.
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:] - 1, n - 1]
    run = np.cumsum(np.r_[True, groups[1:] != groups[:-1]]) - 1
    out = np.where(run > 0, ends[np.maximum(run - 1, 0)], -1)
    return out.astype(np.int64)


def pieces(items: np.ndarray, groups: np.ndarray, length: int, skip_repeats: bool = False,
           first_group: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cuts one sequence into ``(items [length], pair_query [P], pair_item [P])`` pieces.

    ``groups`` are the items' group ordinals. Pair query positions index the piece. With
    ``skip_repeats`` an item already present up to its query is not a target. Items of groups
    before ``first_group`` are history only, never targets. Pieces with no pair are left out.
    """
    items = np.asarray(items, np.int64)
    n = len(items)
    query_of = np.where(np.asarray(groups) >= first_group, query_positions(groups), -1)
    if skip_repeats:
        first_seen: dict[int, int] = {}
        for i, item in enumerate(items.tolist()):
            first_seen.setdefault(item, i)
        earlier = np.array([first_seen[item] for item in items.tolist()], np.int64)
        query_of = np.where(earlier <= query_of, -1, query_of)
    stride = max(1, length // 2)
    ends = [min(n, length)]
    while ends[-1] < n:
        ends.append(min(n, ends[-1] + stride))
    out = []
    owned_from = 0
    for end in ends:
        start = max(0, end - length)
        targets = np.flatnonzero((query_of >= owned_from) & (query_of < end))
        owned_from = end
        if not len(targets):
            continue
        # The piece ends at its last query, as a served history ends at the query: the last
        # position's query (the one serving reads) is trained, and no item is there for nothing.
        end = int(query_of[targets].max()) + 1
        pad = length - (end - start)
        out.append((np.r_[np.full(pad, PAD, np.int64), items[start:end]],
                    query_of[targets] - start + pad, items[targets]))
    return out


def _train_only_windows(data_dir: str | Path, evaluated: set[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training windows of users without a validation record, as (items, group ordinals)."""
    out = []
    columns = _columns(F.split_pattern(data_dir, "train"), F.train_spec())
    for user, history, targets in zip(columns[F.USER_ID], columns[F.HISTORY], columns[F.TARGETS]):
        if user.decode("utf-8") in evaluated:
            continue
        history, targets = history.astype(np.int64), targets.astype(np.int64)
        out.append((np.r_[history, targets], np.r_[np.zeros(len(history), np.int64), np.ones(len(targets), np.int64)]))
    return out


def causal_sequences(data_dir: str | Path, length: int, skip_repeats: bool = False,
                     first_new_group: Mapping[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every training piece of ``data_dir``: ``items [S, length]``, ``pair_query [S, P]``,
    ``pair_item [S, P]`` (``P``: the most pairs of any piece).

    With ``first_new_group`` (user id -> group ordinal, see ``readers.train_examples``) a
    user's items of earlier groups are history only; users it lacks, and users without a
    validation record, are trained whole.
    """
    valid = load_eval_split(data_dir, "valid")
    first = first_new_group or {}
    sources = [(history, groups, first.get(user, 0))
               for user, history, groups in zip(valid.user_ids.tolist(), valid.histories, valid.history_groups)]
    if load_stats(data_dir).get("users_train_only", 1):
        sources += [(*window, 0) for window in _train_only_windows(data_dir, set(valid.user_ids.tolist()))]
    found = [piece for history, groups, first_group in sources
             for piece in pieces(history, groups, length, skip_repeats, first_group)]
    width = max((len(q) for _, q, _ in found), default=1)
    items = np.full((len(found), length), PAD, np.int64)
    pair_query = np.full((len(found), width), -1, np.int64)
    pair_item = np.full((len(found), width), -1, np.int64)
    for row, (piece_items, queries, targets) in enumerate(found):
        items[row] = piece_items
        pair_query[row, : len(queries)] = queries
        pair_item[row, : len(targets)] = targets
    logger.info("%d training sequences of %d positions, %d targets", len(items), length, int((pair_item >= 0).sum()))
    return items, pair_query, pair_item


def sequence_batches(items: np.ndarray, pair_query: np.ndarray, pair_item: np.ndarray, batch_size: int,
                     seed: int, bucket_batches: int = 16) -> tf.data.Dataset:
    """Shuffled full batches of ``(items, pair_query, pair_item)``; the same seed gives the same batches.

    Most sequences are far shorter than the window, so batches are made of sequences of
    similar length (sorted within runs of ``bucket_batches`` shuffled batches) and cut to the
    longest of them: left padding is dropped (position embeddings count from the right, so
    a position means the same in every batch) and the pair columns are cut to the most pairs.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    order = order[: len(order) - len(order) % batch_size]
    lengths = (items >= 0).sum(axis=1)
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        rows = rows[np.argsort(-lengths[rows], kind="stable")]
        batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    pairs = (pair_item >= 0).sum(axis=1)

    def generate():
        for rows in batches:
            width = max(1, int(lengths[rows].max()))
            num_pairs = max(1, int(pairs[rows].max()))
            shift = items.shape[1] - width
            queries = pair_query[rows, :num_pairs]
            yield items[rows, shift:], np.where(queries >= 0, queries - shift, -1), pair_item[rows, :num_pairs]

    spec = tf.TensorSpec([batch_size, None], tf.int64)
    return tf.data.Dataset.from_generator(generate, output_signature=(spec, spec, spec)).prefetch(tf.data.AUTOTUNE)


def target_counts(pair_item: np.ndarray, num_items: int) -> np.ndarray:
    """How often each item is a target in the sequences."""
    return np.bincount(pair_item[pair_item >= 0], minlength=num_items).astype(np.int64)


def batch_pairs(items: tf.Tensor, pair_query: tf.Tensor, pair_item: tf.Tensor,
                sequence_negatives: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The (query, target) pairs of a batch from ``sequence_batches``, flattened.

    Returns, per pair: the index of its query in the batch's ``[B * L]`` positions, its target
    item, and its loss group. Pairs of one group are one query to the loss: none takes another's
    target as a negative. The group is the query's position with ``sequence_negatives``, so the
    user's own earlier and later items are negatives; otherwise it is the sequence, so they are
    masked (a user's later items are false negatives).
    """
    present = tf.where(pair_query >= 0)
    # Batches are cut to their longest sequence: positions index that width.
    owners = present[:, 0] * tf.shape(items, out_type=tf.int64)[1] + tf.gather_nd(pair_query, present)
    groups = owners if sequence_negatives else present[:, 0]
    return owners, tf.gather_nd(pair_item, present), groups
