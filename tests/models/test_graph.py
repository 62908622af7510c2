"""The item graph of the training split and its propagation, against direct NumPy computations."""

import itertools

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfrec.data import load_eval_split
from tfrec.data.graph import item_graph, normalized, propagate, top_neighbours, training_histories, transition_counts
from tfrec.models.towers import ItemTower


def _pairs_by_loop(histories, groups) -> set[tuple[int, int]]:
    """Item pairs of consecutive groups of one customer, both ways, an item never with itself."""
    pairs = set()
    for items, ordinals in zip(histories, groups):
        by_group = {}
        for item, ordinal in zip(items.tolist(), ordinals.tolist()):
            by_group.setdefault(ordinal, set()).add(item)
        ordered = [by_group[g] for g in sorted(by_group)]
        for before, after in zip(ordered, ordered[1:]):
            pairs |= {(a, b) for a in before for b in after if a != b}
            pairs |= {(b, a) for a in before for b in after if a != b}
    return pairs


def test_the_graph_holds_the_training_transitions_and_nothing_of_validation_or_test(sample_data_dir):
    valid, test = load_eval_split(sample_data_dir, "valid"), load_eval_split(sample_data_dir, "test")
    num_items = 1 + max(int(h.max()) for h in [*valid.histories, *valid.targets, *test.targets] if len(h))
    matrix = item_graph(sample_data_dir, num_items, neighbours=num_items)  # nothing pruned
    edges = matrix.tocoo()
    found = {(r, c) for r, c in zip(edges.row.tolist(), edges.col.tolist()) if r != c}
    assert found == _pairs_by_loop(*training_histories(sample_data_dir))
    # Items bought only in a validation or test group have no edge, though a transition leads to them.
    trained = set(np.concatenate(training_histories(sample_data_dir)[0]).tolist())
    held_out_only = set(np.concatenate([*valid.targets, *test.targets]).tolist()) - trained
    assert held_out_only
    degrees = np.diff(matrix.tocsr().indptr)  # the self-loop is every item's one entry without an edge
    assert all(degrees[item] == 1 for item in held_out_only)
    assert np.allclose(matrix.toarray(), matrix.toarray().T)


def test_transitions_are_counted_once_per_group_pair_and_both_ways():
    histories = [np.array([0, 1, 2, 2, 3]), np.array([1, 2])]
    groups = [np.array([0, 0, 1, 1, 2]), np.array([0, 1])]
    counts = transition_counts(histories, groups, 5).toarray()
    expected = np.zeros((5, 5))
    for a, b in [(0, 2), (1, 2), (2, 3), (1, 2)]:
        expected[a, b] += 1
        expected[b, a] += 1
    np.testing.assert_array_equal(counts, expected)


def test_each_item_keeps_its_most_frequent_neighbours_then_the_graph_is_symmetric():
    counts = sp.csr_matrix(np.array([[0, 5, 3, 3], [5, 0, 1, 0], [3, 1, 0, 0], [3, 0, 0, 0]], np.float32))
    kept = top_neighbours(counts, neighbours=2).toarray()
    # Row 0 keeps 1 and 2 (3 ties with 2 and loses on the column); row 3 keeps 0, so 0-3 is an edge.
    expected = np.array([[0, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(kept, expected)


def test_normalisation_and_propagation_equal_numpy():
    rng = np.random.default_rng(0)
    adjacency = np.triu((rng.random((6, 6)) < 0.4).astype(np.float32), 1)
    adjacency = adjacency + adjacency.T
    adjacency[5, :] = adjacency[:, 5] = 0  # an item with no edge
    looped = adjacency + np.eye(6)
    scale = np.diag(1 / np.sqrt(looped.sum(1)))
    expected = scale @ looped @ scale
    matrix = normalized(sp.csr_matrix(adjacency))
    np.testing.assert_allclose(matrix.toarray(), expected, rtol=1e-6)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    mean = (x + expected @ x + expected @ expected @ x) / 3
    np.testing.assert_allclose(propagate(matrix, x, hops=2), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(propagate(matrix, x, hops=2)[5], x[5], rtol=1e-6)  # kept as it is


def _tower(graph: str, matrix, text) -> ItemTower:
    tower = ItemTower(num_items=6, embedding_dim=4, text_dim=3, hidden_dim=8, graph=graph, graph_hops=2,
                      graph_edges=matrix.nnz, seed=1)
    tower.set_catalogue(text_vectors=text)
    tower.set_graph(matrix)
    return tower


def test_the_item_tower_propagates_the_id_table_as_numpy_does():
    rng = np.random.default_rng(1)
    adjacency = sp.csr_matrix(np.array([[0, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0],
                                        [0, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0], [0] * 6], np.float32))
    matrix = normalized(adjacency)
    tower = _tower("ids", matrix, rng.normal(size=(6, 3)))
    table = rng.normal(size=(6, 4)).astype(np.float32)
    tower.id_embedding[0].embeddings.assign(table)
    np.testing.assert_allclose(tower.propagated(table).numpy(), propagate(matrix, table, 2), rtol=1e-5, atol=1e-6)
    # The tower's vectors are the text part plus the propagated id vector of each item.
    indices = np.arange(6)
    text_only = tower._embed_member(0, tower.text_features(indices), -np.ones(6, np.int32), None, False)
    assert not np.allclose(tower(indices).numpy(), text_only.numpy())
    expected = tower.projection[0](tower.hidden[0](tower.text_features(indices))) + propagate(matrix, table, 2)
    np.testing.assert_allclose(tower(indices).numpy(), expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_with_text_propagation_catalogue_items_read_their_propagated_text_and_new_ones_their_own():
    rng = np.random.default_rng(2)
    adjacency = np.zeros((6, 6), np.float32)
    for a, b in itertools.combinations(range(4), 2):
        adjacency[a, b] = adjacency[b, a] = 1
    matrix = normalized(sp.csr_matrix(adjacency))
    text = rng.normal(size=(6, 3)).astype(np.float32)
    tower = _tower("text", matrix, text)
    indices = np.arange(6, dtype=np.int32)
    smoothed = tower.embed(tf.constant(propagate(matrix, text, 2)), -np.ones(6, np.int32))
    np.testing.assert_allclose(tower(indices).numpy(), smoothed.numpy(), rtol=1e-5, atol=1e-6)
    # Item 5 has no edge: its vector is the same whether it is a catalogue item or new text.
    own = tower.embed(tf.constant(text), -np.ones(6, np.int32)).numpy()
    np.testing.assert_allclose(tower(indices).numpy()[5], own[5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(tower(indices).numpy()[0], own[0])
