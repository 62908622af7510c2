"""The ScaNN searcher and the exact search it is measured against.

The primitives both ``tfrec index`` (``serving.index``) and its tuner
(``serving.index_tuning``) use: building a seeded ScaNN searcher from one point of the
settings space, searching it, recall of one result list against another, and timing by
the median of repeats. The exact top-K they are measured against is ``tfrec.topk``'s.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec.config import IndexConfig

RECALL_AT = 10
SEED = 0
"""Seed of the tree's k-means and of the hashing's sampling and codebooks."""
TRAINING_SAMPLE = 100_000
"""Items the tree and the hashing are trained on."""
MIN_PARTITION = 50
"""ScaNN's default smallest tree partition (lowered for trees with few items per leaf)."""
TIMING_REPEATS = 3
"""A speed is the median of this many timed passes."""


def _scann_ops():
    from scann.scann_ops.py import scann_ops

    return scann_ops


# ------------------------------------------------------------------ building and searching


def index_params(settings: IndexConfig, num_leaves: int, num_leaves_to_search: int, reorder: int,
                 brute_force: bool = False) -> dict[str, Any]:
    """One point of the settings space, in the form ``search.json`` stores it."""
    return {"num_leaves": int(num_leaves), "num_leaves_to_search": int(num_leaves_to_search),
            "dimensions_per_block": settings.dimensions_per_block,
            "anisotropic_quantization_threshold": settings.anisotropic_quantization_threshold,
            "reorder": int(reorder), "brute_force": bool(brute_force)}


def _seeded_config(builder, seed: int) -> str:
    """The builder's ScaNN config with its training seeds set."""
    from google.protobuf import text_format
    from scann.proto import scann_pb2

    config = text_format.Parse(builder.create_config(), scann_pb2.ScannConfig())
    if config.HasField("partitioning"):
        config.partitioning.clustering_seed = seed
    if config.HasField("hash"):
        config.hash.asymmetric_hash.clustering_seed = seed
        config.hash.asymmetric_hash.sampling_seed = seed
    return text_format.MessageToString(config)


def _min_partition(sample: int, num_leaves: int) -> int:
    """ScaNN's k-means re-seeds clusters smaller than this: a quarter of the mean, at most 50.

    A floor near the mean cluster size (ScaNN's default 50 with few items per leaf) keeps
    re-seeding clusters and leaves a poor tree.
    """
    return max(1, min(MIN_PARTITION, sample // (4 * num_leaves)))


def build_searcher(vectors: np.ndarray, k: int, params: dict[str, Any], seed: int = SEED):
    """A ScaNN searcher (TF ops) over ``vectors`` by dot product, its training seeded.

    ``brute_force``: ScaNN's exact scorer. ``num_leaves`` 1: no tree, every item's hash is
    scored. Otherwise a k-means tree of ``num_leaves`` partitions. Hashed scores are
    re-scored exactly for the best ``reorder`` candidates.
    """
    scann_ops = _scann_ops()
    db = tf.constant(vectors, tf.float32)
    builder = scann_ops.builder(db, k, "dot_product")
    sample = min(len(vectors), TRAINING_SAMPLE)
    if params["brute_force"]:
        builder = builder.score_brute_force()
    else:
        if params["num_leaves"] > 1:
            leaves = params["num_leaves"]
            builder = builder.tree(num_leaves=leaves, num_leaves_to_search=params["num_leaves_to_search"],
                                   training_sample_size=sample, min_partition_size=_min_partition(sample, leaves))
        builder = builder.score_ah(params["dimensions_per_block"], training_sample_size=sample,
                                   anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"])
        builder = builder.reorder(params["reorder"])
    return scann_ops.create_searcher(db, _seeded_config(builder, seed))


def search(searcher, queries, k: int, params: dict[str, Any]) -> np.ndarray:
    """Top-``k`` item indices of each query, ``[Q, k]``, searched the way the exported model searches."""
    queries = tf.convert_to_tensor(queries, tf.float32)
    if params["brute_force"]:
        result = searcher.search_batched(queries, final_num_neighbors=k)
    else:
        result = searcher.search_batched(
            queries, final_num_neighbors=k, pre_reorder_num_neighbors=max(params["reorder"], k),
            leaves_to_search=params["num_leaves_to_search"] if params["num_leaves"] > 1 else None,
        )
    return result.indices.numpy()


def recall_against(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact list found in the approximate one."""
    found = (exact[:, :, None] == approximate[:, None, :]).any(axis=2)
    return float(found.mean())


def timed(fn, repeats: int = TIMING_REPEATS) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls of ``fn``, and the first call's result."""
    times, first = [], None
    for i in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
        first = result if i == 0 else first
    return float(np.median(times)), first
