"""The item–item graph of the training split, for LightGCN-style propagation.

Two items are neighbours when one was bought in the group (basket, invoice, session)
right after a group holding the other, by the same customer, within the training part of
the customer's history: the transitions the item co-occurrence baseline counts, taken both
ways. Each item keeps its ``neighbours`` most frequent ones (ties: the lower index), and the
kept edges are made symmetric, so an item has at most ``neighbours`` edges of its own plus
the ones of items that kept it: the graph grows with the catalogue, not with its square.

The training part of an evaluated customer's history is the history of their validation
record; customers without one (``short_users: train_only``) bring their training windows.
Nothing a customer did in their validation or test group adds an edge.

The propagation matrix is the symmetrically normalised graph with a self-loop on every item,
``D^-1/2 (A + I) D^-1/2`` (``D``: the row sums of ``A + I``), and the propagated
representation is the mean over hops ``0..K`` of ``matrix^k x``. The self-loop keeps an item
without edges (a cold item, or one added after training) at its own representation, so it
is served as it was indexed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tfrec.data.readers import load_eval_split, load_stats
from tfrec.data.sequences import _train_only_windows

log = logging.getLogger(__name__)


def training_histories(data_dir: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every customer's training items (oldest first) and their group ordinals: the histories
    of the validation records, then the windows of customers who only train."""
    valid = load_eval_split(data_dir, "valid")
    histories, groups = list(valid.histories), list(valid.history_groups)
    if load_stats(data_dir).get("users_train_only", 1):
        for items, ordinals in _train_only_windows(data_dir, set(valid.user_ids.tolist())):
            histories.append(items)
            groups.append(ordinals)
    return histories, groups


def transition_counts(histories: list[np.ndarray], groups: list[np.ndarray], num_items: int) -> sp.csr_matrix:
    """``[num_items, num_items]``: how often item ``j`` is in the group after one holding item
    ``i``, plus the other way round (symmetric; items repeated in the next group excluded).

    Args:
        histories: per customer, item indices, oldest first.
        groups: per customer, the group ordinal of each item (non-decreasing).
        num_items: the catalogue's size.
    """
    lengths = np.array([len(h) for h in histories], np.int64)
    if not lengths.sum():
        return sp.csr_matrix((num_items, num_items), dtype=np.float32)
    items = np.concatenate(histories).astype(np.int64)
    ordinals = np.concatenate(groups).astype(np.int64)
    users = np.repeat(np.arange(len(histories)), lengths)
    starts = np.r_[True, (users[1:] != users[:-1]) | (ordinals[1:] != ordinals[:-1])]
    group = np.cumsum(starts) - 1  # a global id per (customer, group), in order
    num_groups = int(group[-1]) + 1
    members = sp.csr_matrix((np.ones(len(items), np.float32), (group, items)), shape=(num_groups, num_items))
    members.data[:] = 1.0  # an item counted once per group
    owner = users[np.flatnonzero(starts)]
    followed = np.flatnonzero(owner[:-1] == owner[1:])  # groups with a next group of the same customer
    counts = (members[followed].T @ members[followed + 1]).tocsr()
    counts = (counts + counts.T).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts


def top_neighbours(counts: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """The symmetric 0/1 graph of each row's ``neighbours`` largest entries (ties: lower column)."""
    counts = counts.tocsr()
    counts.sort_indices()
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    order = np.lexsort((-counts.data, rows))  # by row, then largest first; stable on the column
    rank = np.arange(len(order)) - counts.indptr[rows[order]]
    keep = order[rank < neighbours]
    kept = sp.csr_matrix((np.ones(len(keep), np.float32), (rows[keep], counts.indices[keep])), shape=counts.shape)
    return kept.maximum(kept.T).tocsr()


def normalized(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2``, ``D`` the row sums of ``A + I`` (``A`` symmetric, non-negative)."""
    looped = (sp.csr_matrix(adjacency, dtype=np.float64) + sp.identity(adjacency.shape[0], format="csr"))
    scale = sp.diags(1.0 / np.sqrt(np.asarray(looped.sum(1)).ravel()))
    return (scale @ looped @ scale).astype(np.float32).tocsr()


def propagate(matrix: sp.spmatrix, x: np.ndarray, hops: int) -> np.ndarray:
    """The mean of ``matrix^k x`` over ``k = 0..hops`` (LightGCN's layer combination)."""
    x = np.asarray(x, np.float32)
    total, current = x.copy(), x
    for _ in range(hops):
        current = matrix @ current
        total += current
    return total / (hops + 1)


def item_graph(data_dir: str | Path, num_items: int, neighbours: int) -> sp.csr_matrix:
    """The propagation matrix (``normalized``) of ``data_dir``'s training split, each item keeping
    its ``neighbours`` most frequent transitions.

    Example:

    >>> matrix = normalized(top_neighbours(transition_counts(
    ...     [np.array([0, 1, 2])], [np.array([0, 1, 2])], 3), neighbours=5))
    >>> propagate(matrix, np.eye(3, dtype="float32"), hops=1).shape
    (3, 3)
    """
    histories, groups = training_histories(data_dir)
    graph = top_neighbours(transition_counts(histories, groups, num_items), neighbours)
    degrees = np.diff(graph.indptr)
    log.info(f"Item graph from the training split: {graph.nnz:,} edges over {num_items:,} items, "
             f"{int((degrees == 0).sum()):,} items without one, at most {int(degrees.max(initial=0))} per item")
    return normalized(graph)
