"""Causal all-position training: what each query reads and what it is trained against.

A query must never read its own target, the rest of the target's group, or anything after
it; every training target of the windowed examples must be trained exactly once (and so no
validation or test item is a training target); the served query is the last position's.
"""

import collections

import numpy as np
import pytest

from tests.conftest import tiny_config
from tests.pipelines import outputs
from tfrec.data import load_eval_split, train_examples
from tfrec.data.sequences import causal_sequences, pieces, query_positions
from tfrec.models.user_tower import UserTower
from tfrec.training.warm_start import write_trained_groups


def test_query_positions_point_at_the_end_of_the_previous_group():
    np.testing.assert_array_equal(query_positions(np.array([0, 0, 1, 2, 2, 2, 3])), [-1, -1, 1, 2, 2, 2, 5])
    np.testing.assert_array_equal(query_positions(np.arange(4)), [-1, 0, 1, 2])


@pytest.mark.parametrize("length", [3, 4, 7, 50])
def test_pieces_train_each_target_once_from_the_end_of_its_previous_group(length):
    rng = np.random.default_rng(length)
    for _ in range(30):
        sizes = rng.integers(1, 6, size=rng.integers(2, 15))
        groups = np.repeat(np.arange(len(sizes)), sizes)
        items = rng.permutation(1000)[: len(groups)]  # distinct, so an item names its position
        position = {int(item): i for i, item in enumerate(items)}
        trained = collections.Counter()
        for piece_items, pair_query, pair_item in pieces(items, groups, length):
            assert piece_items.shape == (length,) and pair_query.shape == pair_item.shape
            for q, item in zip(pair_query, pair_item):
                target = position[int(item)]
                context = piece_items[: q + 1]
                context = context[context >= 0]
                # The context ends with the target's previous group: nothing of the target's
                # own group or later, and no gap; it holds at least half the window.
                end = int(np.flatnonzero(groups < groups[target])[-1]) + 1
                np.testing.assert_array_equal(context, items[end - len(context):end])
                assert len(context) >= min(length // 2, end)
                trained[target] += 1
        # Every item after the first group is a target exactly once.
        assert trained == collections.Counter(np.flatnonzero(groups > 0).tolist())


def test_repeated_items_can_be_left_out_of_the_targets():
    items, groups = np.array([5, 6, 5, 7, 6]), np.arange(5)
    (_, _, targets), = pieces(items, groups, 8, skip_repeats=True)
    np.testing.assert_array_equal(targets, [6, 7])
    (_, _, targets), = pieces(items, groups, 8)
    np.testing.assert_array_equal(targets, [6, 5, 7, 6])


def _random_distance_biases(tower, rng):
    """Relative blocks start with a zero bias; a random one makes the tests see it."""
    tower.build()
    for blocks in tower.blocks:
        for block in blocks:
            if hasattr(block, "distance_bias"):
                block.distance_bias.assign(rng.normal(size=block.distance_bias.shape).astype("float32"))


@pytest.mark.parametrize("pooling,num_layers,long_term,positions", [
    ("last", 2, False, "absolute"), ("mean", 1, True, "absolute"), ("attention", 1, False, "absolute"),
    ("mean", 0, False, "absolute"), ("last", 2, True, "relative"), ("attention", 1, False, "relative"),
    ("last", 1, True, "none")])
def test_no_position_reads_a_later_item(pooling, num_layers, long_term, positions):
    tower = UserTower(max_history=8, embedding_dim=8, num_layers=num_layers, num_heads=2, intermediate_dim=16,
                      dropout=0.0, pooling=pooling, long_term=long_term, causal=True, positions=positions)
    rng = np.random.default_rng(0)
    _random_distance_biases(tower, rng)
    x = rng.normal(size=(2, 8, 8)).astype("float32")
    mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], bool)
    served = tower(x, mask).numpy()
    base = tower.sequence(x, mask).numpy()
    for p in range(2, 7):
        changed = x.copy()
        changed[:, p + 1:] = rng.normal(size=changed[:, p + 1:].shape)
        out = tower.sequence(changed, mask).numpy()
        np.testing.assert_allclose(out[:, : p + 1], base[:, : p + 1], atol=1e-5)
        assert not np.allclose(out[:, p + 1:], base[:, p + 1:])
    # Serving reads the last position's query.
    np.testing.assert_allclose(served, base[:, -1], atol=1e-6)


def test_sequences_hold_exactly_the_training_targets(sample_data_dir):
    """Every (context, target) pair of the sequences is a training window's, and the reverse."""
    pairs = _pairs(*causal_sequences(sample_data_dir, 10))
    windows = _window_pairs(train_examples(sample_data_dir, 10, 10_000, cache=False))
    assert sum(pairs.values()) > 100
    assert pairs == windows


@pytest.mark.parametrize("negatives,members,positions", [("full", 1, "absolute"), ("sampled", 2, "relative")])
def test_causal_training_serves_the_last_position(tiny, sample_data_dir, tmp_path, negatives, members, positions):
    from tfrec.models.two_tower import load_model
    from tfrec.training.trainer import train

    config = tiny_config(tiny, "model.user_tower.causal=true", "model.user_tower.recent_items=40",
                         "data.sequences.max_history=40", f"model.members={members}",
                         f"model.user_tower.positions={positions}",
                         f"train.negatives={negatives}", "train.epochs=1", "train.steps_per_epoch=3")
    summary = train(config, sample_data_dir, tmp_path)
    assert summary["epochs_run"] == 1
    model = load_model(tmp_path)
    history = np.array([[-1, -1, -1, 3, 5, 8, 2, 1, 0, 4]])
    by_position = model.sequence_queries(history).numpy()[:, -1]
    np.testing.assert_allclose(model.query_vectors(history).numpy(), by_position, atol=1e-5)
    vectors = np.load(tmp_path / "vectors.npz")
    width = members * config.model.embedding_dim
    assert vectors["item_vectors"].shape[1] == vectors["query_vectors"].shape[1] == width
    np.testing.assert_allclose(np.linalg.norm(vectors["item_vectors"], axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("positions", ["absolute", "relative", "none"])
def test_a_window_cut_to_its_items_gives_the_same_queries(positions):
    """Batches drop their left padding; positions count from the right, so nothing changes."""
    tower = UserTower(max_history=8, embedding_dim=8, num_layers=1, num_heads=2, intermediate_dim=16,
                      dropout=0.0, pooling="last", long_term=True, causal=True, positions=positions)
    rng = np.random.default_rng(1)
    _random_distance_biases(tower, rng)
    x = rng.normal(size=(2, 8, 8)).astype("float32")
    x[:, :3] = 0
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]], bool)
    full = tower(x, mask).numpy()
    np.testing.assert_allclose(tower.sequence(x[:, 3:], mask[:, 3:]).numpy(), tower.sequence(x, mask).numpy()[:, 3:],
                               atol=1e-5)
    np.testing.assert_allclose(tower.sequence(x[:, 3:], mask[:, 3:]).numpy()[:, -1], full, atol=1e-5)


@pytest.mark.parametrize("positions", ["relative", "none"])
def test_every_position_is_trained_as_the_served_query_is_built(positions):
    """Without absolute positions, the query at position ``p`` of a training sequence is the
    served query of the history that ends there: training and serving see the same thing."""
    tower = UserTower(max_history=8, embedding_dim=8, num_layers=2, num_heads=2, intermediate_dim=16,
                      dropout=0.0, pooling="last", long_term=True, causal=True, positions=positions)
    rng = np.random.default_rng(3)
    _random_distance_biases(tower, rng)
    x = rng.normal(size=(1, 8, 8)).astype("float32")
    mask = np.array([[0, 1, 1, 1, 1, 1, 1, 1]], bool)
    at_each_position = tower.sequence(x, mask).numpy()[0]
    for p in range(1, 8):
        served = np.zeros_like(x)
        served[0, 8 - p:] = x[0, 1:p + 1]  # the history up to p, right-aligned as served
        served_mask = np.arange(8)[None] >= 8 - p
        np.testing.assert_allclose(tower(served, served_mask).numpy()[0], at_each_position[p], atol=1e-5)


def test_absolute_positions_say_how_far_the_window_end_is():
    """The contrast: with absolute positions a training query depends on where it sits."""
    tower = UserTower(max_history=8, embedding_dim=8, num_layers=1, num_heads=2, intermediate_dim=16,
                      dropout=0.0, pooling="last", long_term=False, causal=True, positions="absolute")
    tower.build()
    tower.position_embedding[0].set_weights([np.random.default_rng(4).normal(size=(8, 8)).astype("float32")])
    x = np.random.default_rng(5).normal(size=(1, 8, 8)).astype("float32")
    mask = np.ones((1, 8), bool)
    served = np.zeros_like(x)
    served[0, 4:] = x[0, :4]
    assert not np.allclose(tower(served, np.arange(8)[None] >= 4).numpy()[0], tower.sequence(x, mask).numpy()[0, 3])


def test_batches_cover_every_sequence_once_cut_to_their_longest():
    from tfrec.data.sequences import sequence_batches

    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 9, size=40)
    items = np.full((40, 8), -1)
    pair_query = np.full((40, 8), -1)
    pair_item = np.full((40, 8), -1)
    for row, n in enumerate(lengths):
        items[row, 8 - n:] = 100 * row + np.arange(n)
        pair_query[row, : n - 1] = np.arange(8 - n, 7)
        pair_item[row, : n - 1] = items[row, 8 - n + 1:]
    seen = []
    for batch_items, batch_query, batch_item in sequence_batches(items, pair_query, pair_item, 8, seed=3):
        batch_items, batch_query, batch_item = batch_items.numpy(), batch_query.numpy(), batch_item.numpy()
        assert (batch_items[:, 0] >= 0).any()  # cut to the longest sequence of the batch
        for row_items, queries, targets in zip(batch_items, batch_query, batch_item):
            for q, target in zip(queries[queries >= 0], targets[targets >= 0]):
                assert row_items[q + 1] == target  # each query still points at the item before its target
            seen.append(int(row_items[-1]) // 100)
    assert sorted(seen) == list(range(40))


def test_a_piece_ends_with_a_query_as_a_served_history_does():
    """The last position is where serving reads the query, so training must train it there."""
    for groups in (np.arange(6), np.array([0, 0, 1, 1, 1, 2, 2])):
        for piece_items, pair_query, _ in pieces(np.arange(len(groups)), groups, 4):
            assert pair_query.max() == len(piece_items) - 1


@pytest.mark.parametrize("sequence_negatives", [False, True])
def test_a_sequence_s_own_targets_are_negatives_only_when_asked(sequence_negatives):
    import tensorflow as tf

    from tfrec.data.sequences import batch_pairs
    from tfrec.tasks import RetrievalTask

    # Two sequences cut to width 4: row 0 trains positions 1, 2, 3; row 1 trains position 3.
    items = tf.constant([[4, 5, 6, 7], [-1, -1, 8, 9]], tf.int64)
    pair_query = tf.constant([[1, 2, 3], [3, -1, -1]], tf.int64)
    pair_item = tf.constant([[6, 7, 10], [11, -1, -1]], tf.int64)
    owners, targets, groups = batch_pairs(items, pair_query, pair_item, sequence_negatives)
    np.testing.assert_array_equal(owners, [1, 2, 3, 7])  # row * width + position
    np.testing.assert_array_equal(targets, [6, 7, 10, 11])
    np.testing.assert_array_equal(groups, [1, 2, 3, 7] if sequence_negatives else [0, 0, 0, 1])

    queries = tf.math.l2_normalize(tf.random.stateless_normal([4, 8], seed=[1, 2]), -1)
    logits = RetrievalTask(temperature=0.1).logits(queries, queries, targets, query_ids=groups).numpy()
    same_sequence = np.array([[0, 0, 0, 1]]).T == np.array([[0, 0, 0, 1]])
    masked = logits <= -1e8
    np.testing.assert_array_equal(masked, same_sequence & ~np.eye(4, dtype=bool) & (not sequence_negatives))


def test_items_of_groups_before_the_first_group_are_history_only():
    items, groups = np.array([5, 6, 7, 8, 9]), np.array([0, 1, 1, 2, 3])
    (piece, _, targets), = pieces(items, groups, 8, first_group=2)
    np.testing.assert_array_equal(targets, [8, 9])  # groups 2 and 3 only
    np.testing.assert_array_equal(piece[piece >= 0], [5, 6, 7, 8])  # read up to the last query
    assert pieces(items, groups, 8, first_group=4) == []


def test_a_warm_runs_windows_and_sequences_hold_the_same_new_pairs(sample_data_dir, tmp_path):
    """From each user's first new group on, the sequences and the windows train the same pairs,
    and a warm start from a model of the same data finds no window of an evaluated user new."""
    valid = load_eval_split(sample_data_dir, "valid")
    rng = np.random.default_rng(0)
    first = {user: int(rng.integers(1, groups.max() + 2)) for user, groups in
             zip(valid.user_ids.tolist(), valid.history_groups)}
    all_pairs = _pairs(*causal_sequences(sample_data_dir, 10))
    new_pairs = _pairs(*causal_sequences(sample_data_dir, 10, first_new_group=first))
    windows = _window_pairs(train_examples(sample_data_dir, 10, 10_000, cache=False, first_new_group=first))
    assert 0 < sum(new_pairs.values()) < sum(all_pairs.values())
    assert new_pairs == windows

    path = str(tmp_path / "trained_groups.npz")
    write_trained_groups(path, valid)
    with np.load(path) as saved:
        seen = dict(zip(saved["user_ids"].tolist(), saved["groups"].tolist()))
    left = train_examples(sample_data_dir, 10, 10_000, cache=False, first_new_group=seen)
    evaluated = set(valid.user_ids.tolist())
    train_only = sum(1 for user in outputs.split(sample_data_dir, "train") if user["user_id"][0] not in evaluated)
    assert sum(1 for _ in left) == train_only  # users it never saw are trained whole


def _window_pairs(examples) -> collections.Counter:
    """(last 3 history items, target) of every training window."""
    windows = collections.Counter()
    for history, targets in examples.as_numpy_iterator():
        history = history[history >= 0]
        for target in targets[targets >= 0]:
            windows[(tuple(history[-3:]), int(target))] += 1
    return windows


def _pairs(items, pair_query, pair_item) -> collections.Counter:
    """(last 3 context items, target) of every pair of the sequences."""
    pairs = collections.Counter()
    for row_items, queries, targets in zip(items, pair_query, pair_item):
        for q, target in zip(queries[queries >= 0], targets[targets >= 0]):
            context = row_items[: q + 1]
            context = context[context >= 0]
            pairs[(tuple(context[-3:]), int(target))] += 1
    return pairs
