"""``tfrec index``: the catalogue's item vectors in a ScaNN index, measured against exact top-K.

The index is built with ScaNN's TensorFlow ops (tree partitioning, anisotropic
asymmetric hashing, exact re-scoring of the best candidates), so it can travel inside
an exported SavedModel. Its parameters come from ``index`` in the config or, where
unset, from the catalogue size: ``sqrt(N)`` leaves, a tenth of them searched, and
``max(4 k, 200)`` candidates re-scored exactly.

Every build is measured on held-out queries (the test users' query vectors written by
``tfrec train``): recall@10 of the index against exact brute-force top-K and the
queries per second of both, timed in the same run. When recall@10 falls under
``index.recall_target`` the search is widened (more leaves, more re-scored candidates)
until it holds, or the build fails with the list of what was tried.

An index folder holds::

    scann/              the ScaNN searcher's state, a SavedModel (needs ``import scann``)
    catalogue.npz       item ids, vectors and category values, in index order
    items.tsv           item ids and texts
    search.json         the search parameters the measurement settled on
    index_report.json   the measurement, for people and for the run report

``tfrec index --add FILE`` embeds new products from their text with the trained item
tower (no retraining), appends them to the catalogue and rebuilds the index, so the
next export serves them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import CompressionTypes, FileSystems

from serving.items import read_items, write_items
from tfrec.config import Config, IndexConfig
from tfrec.data import Catalogue, load_catalogue
from tfrec.errors import TfrecError
from tfrec.layout import (
    CATALOGUE_DIR,
    CATEGORICAL_VOCAB_FILE,
    INDEX_CATALOGUE_FILE,
    INDEX_REPORT_FILE,
    SCANN_DIR,
    SEARCH_FILE,
    VECTORS_FILE,
)
from tfrec.models import load_model, serving_text_pipeline
from tfrec.models.two_tower import categorical_codes

RECALL_AT = 10
MAX_WIDENINGS = 8
BRUTE_FORCE_BELOW = 256
"""Catalogues smaller than this are searched exhaustively (no tree, no hashing)."""


def _scann_ops():
    from scann.scann_ops.py import scann_ops

    return scann_ops


# ------------------------------------------------------------------ catalogue


class IndexCatalogue:
    """The items an index holds, in index order: ids, texts, vectors, category values."""

    def __init__(self, ids: np.ndarray, texts: np.ndarray, vectors: np.ndarray,
                 categorical: dict[str, np.ndarray]):
        self.ids = np.asarray(ids, dtype=object)
        self.texts = np.asarray(texts, dtype=object)
        self.vectors = np.asarray(vectors, np.float32)
        self.categorical = {k: np.asarray(v, dtype=object) for k, v in categorical.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, folder: Path) -> None:
        np.savez(folder / INDEX_CATALOGUE_FILE, ids=self.ids.astype(str), vectors=self.vectors,
                 **{f"cat_{k}": v.astype(str) for k, v in self.categorical.items()})
        write_items(folder, self.ids, self.texts)

    @classmethod
    def load(cls, folder: str | Path) -> IndexCatalogue:
        folder = Path(folder)
        path = folder / INDEX_CATALOGUE_FILE
        if not path.exists():
            raise TfrecError(f"{path} not found: is {folder} the output folder of `tfrec index`?")
        arrays = np.load(path)
        texts = read_items(folder)
        ids = arrays["ids"].astype(object)
        categorical = {k[len("cat_"):]: arrays[k].astype(object) for k in arrays.files if k.startswith("cat_")}
        return cls(ids, np.array([texts.get(i, "") for i in ids], dtype=object), arrays["vectors"], categorical)

    def extended(self, ids: list[str], texts: list[str], vectors: np.ndarray,
                 categorical: dict[str, list[str]]) -> IndexCatalogue:
        return IndexCatalogue(
            np.concatenate([self.ids, np.asarray(ids, dtype=object)]),
            np.concatenate([self.texts, np.asarray(texts, dtype=object)]),
            np.concatenate([self.vectors, vectors.astype(np.float32)]),
            {k: np.concatenate([v, np.asarray(categorical[k], dtype=object)]) for k, v in self.categorical.items()},
        )


# ------------------------------------------------------------------ building


def default_params(num_items: int, settings: IndexConfig) -> dict[str, Any]:
    """Index parameters: the configured ones, the rest derived from the catalogue size."""
    leaves = settings.num_leaves or max(1, int(round(math.sqrt(num_items))))
    leaves = min(leaves, max(1, num_items // 50))  # ScaNN wants partitions of 50+ points
    searched = settings.num_leaves_to_search or max(1, int(math.ceil(leaves / 10)))
    return {
        "num_leaves": leaves,
        "num_leaves_to_search": min(searched, leaves),
        "dimensions_per_block": settings.dimensions_per_block,
        "anisotropic_quantization_threshold": settings.anisotropic_quantization_threshold,
        "reorder": settings.reorder or max(4 * settings.k, 200),
        "brute_force": num_items < BRUTE_FORCE_BELOW,
    }


def build_searcher(vectors: np.ndarray, k: int, params: dict[str, Any]):
    """A ScaNN searcher (TF ops) over ``vectors`` by dot product."""
    builder = _scann_ops().builder(tf.constant(vectors, tf.float32), k, "dot_product")
    if params["brute_force"]:
        return builder.score_brute_force().build()
    if params["num_leaves"] > 1:
        builder = builder.tree(num_leaves=params["num_leaves"], num_leaves_to_search=params["num_leaves_to_search"],
                               training_sample_size=min(len(vectors), 250_000))
    builder = builder.score_ah(params["dimensions_per_block"],
                               anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"],
                               training_sample_size=min(len(vectors), 250_000))
    return builder.reorder(params["reorder"]).build()


def search(searcher, queries: np.ndarray, k: int, params: dict[str, Any]) -> np.ndarray:
    """Top-``k`` item indices of each query through the index, ``[Q, k]``."""
    if params["brute_force"]:
        result = searcher.search_batched(tf.constant(queries, tf.float32), final_num_neighbors=k)
    else:
        result = searcher.search_batched(
            tf.constant(queries, tf.float32), final_num_neighbors=k,
            pre_reorder_num_neighbors=max(params["reorder"], k),
            leaves_to_search=params["num_leaves_to_search"] if params["num_leaves"] > 1 else None,
        )
    return result.indices.numpy()


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` by dot product (TF matmul + top_k), ``[Q, k]``."""
    scores = tf.matmul(tf.constant(queries, tf.float32), tf.constant(vectors, tf.float32), transpose_b=True)
    return tf.math.top_k(scores, k).indices.numpy()


def recall_against(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact list found in the approximate one."""
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approximate, exact)]))


def _median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def measure(searcher, queries: np.ndarray, vectors: np.ndarray, params: dict[str, Any], k: int,
            single_queries: int = 200) -> dict[str, Any]:
    """Recall@10 of the index against exact top-K, and queries/s of both, timed alike."""
    at = min(RECALL_AT, len(vectors))
    exact = exact_top_k(queries, vectors, at)
    recall = recall_against(search(searcher, queries, at, params), exact)
    batched_scann = _median_seconds(lambda: search(searcher, queries, k, params))
    batched_exact = _median_seconds(lambda: exact_top_k(queries, vectors, k))
    few = queries[:single_queries]

    def one_by_one(fn):
        return lambda: [fn(few[i:i + 1]) for i in range(len(few))]

    single_scann = _median_seconds(one_by_one(lambda q: search(searcher, q, k, params)))
    single_exact = _median_seconds(one_by_one(lambda q: exact_top_k(q, vectors, k)))
    return {
        f"recall@{RECALL_AT}_vs_exact": recall,
        "queries": len(queries),
        "scann_batched_qps": len(queries) / batched_scann,
        "exact_batched_qps": len(queries) / batched_exact,
        "scann_single_qps": len(few) / single_scann,
        "exact_single_qps": len(few) / single_exact,
        "scann_over_exact_batched": batched_exact / batched_scann,
        "scann_over_exact_single": single_exact / single_scann,
    }


def widen(params: dict[str, Any], num_items: int) -> dict[str, Any] | None:
    """The next, wider search; ``None`` when it is already exhaustive."""
    leaves, searched, reorder = params["num_leaves"], params["num_leaves_to_search"], params["reorder"]
    if params["brute_force"] or (searched >= leaves and reorder >= num_items):
        return None
    return {**params, "num_leaves_to_search": min(leaves, searched * 2), "reorder": min(num_items, reorder * 2)}


def tuned_searcher(vectors: np.ndarray, queries: np.ndarray, settings: IndexConfig, verbose: bool = True):
    """Builds the index, measures it, widens its search until recall@10 holds.

    Returns ``(searcher, params, report)``; raises ``TfrecError`` when no tried setting
    reaches ``settings.recall_target``.
    """
    k = min(settings.k, len(vectors))
    params = default_params(len(vectors), settings)
    started = time.perf_counter()
    searcher = build_searcher(vectors, k, params)
    build_seconds = time.perf_counter() - started
    tries = []
    while True:
        result = measure(searcher, queries, vectors, params, k)
        recall = result[f"recall@{RECALL_AT}_vs_exact"]
        tries.append({"num_leaves_to_search": params["num_leaves_to_search"], "reorder": params["reorder"],
                      "recall": round(recall, 4)})
        if verbose:
            print(f"  leaves {params['num_leaves_to_search']}/{params['num_leaves']}, re-scored {params['reorder']}: "
                  f"recall@{RECALL_AT} {recall:.4f}, {result['scann_batched_qps']:,.0f} queries/s "
                  f"(exact {result['exact_batched_qps']:,.0f})")
        if recall >= settings.recall_target:
            break
        wider = widen(params, len(vectors))
        if wider is None or len(tries) > MAX_WIDENINGS:
            raise TfrecError(
                f"the ScaNN index reaches recall@{RECALL_AT} {recall:.4f} against exact search, under "
                f"index.recall_target {settings.recall_target}; tried {tries}. Raise index.num_leaves_to_search "
                "or index.reorder, lower index.dimensions_per_block, or lower the target"
            )
        params = wider
    report = {
        "items": len(vectors),
        "dimensions": int(vectors.shape[1]),
        "k": k,
        **{key: value for key, value in params.items()},
        "build_seconds": build_seconds,
        **result,
        "recall_target": settings.recall_target,
        "tries": tries,
    }
    return searcher, params, report


def save_searcher(searcher, folder: Path) -> None:
    """Writes the searcher's state as a SavedModel (loading it needs ``import scann``)."""
    tf.saved_model.save(searcher.serialize_to_module(), str(folder),
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))


def load_searcher_state(index_dir: str | Path) -> tf.Module:
    """The saved searcher state, as a fresh module that can be saved again inside an export."""
    scann_ops = _scann_ops()
    loaded = tf.saved_model.load(str(Path(index_dir) / SCANN_DIR))
    names = ("scann_config", "serialized_partitioner", "datapoint_to_token", "ah_codebook", "hashed_dataset",
             "int8_dataset", "int8_multipliers", "dp_norms", "dataset")
    return scann_ops.ScannState([getattr(loaded, name).read_value() for name in names])


def load_search_params(index_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(index_dir) / SEARCH_FILE).read_text())


# ------------------------------------------------------------------ new items


def read_new_items(config: Config, path: Path) -> tuple[list[str], list[str], dict[str, list[str]], list[dict]]:
    """Reads new products (the catalogue's columns) with the pipeline's row rules.

    Returns ids, texts, categorical values and the rejected rows with their reasons.
    """
    from pipelines import sources
    from pipelines.rows import CatalogueParser, Rejected, Rejection
    from tfrec.config import CatalogueConfig

    data = config.data
    item_column = data.catalogue.item_id if data.catalogue else data.interactions.columns.item_id
    delimiter = data.catalogue.delimiter if data.catalogue else data.interactions.delimiter
    section = CatalogueConfig(paths=[str(path)], item_id=item_column, delimiter=delimiter)
    parser = CatalogueParser(section, data.items)
    fmt = sources.detect_format(str(path), "auto")
    sources.check_columns(str(path), fmt, delimiter, parser.columns, "the new items file")
    ids, texts, rejected = [], [], []
    categorical: dict[str, list[str]] = {f: [] for f in data.items.categorical_fields}
    seen: set[str] = set()
    compression = CompressionTypes.UNCOMPRESSED if fmt == "parquet" else CompressionTypes.AUTO
    with FileSystems.open(str(path), compression_type=compression) as stream:
        for record in sources.read_records(stream, str(path), fmt, delimiter, parser.columns):
            if isinstance(record, Rejection):
                rejected.append(record._asdict())
                continue
            try:
                row = parser(record)
                if row.item_id in seen:
                    raise Rejected("duplicate_item", f"{item_column}={row.item_id!r} occurs earlier in the file")
            except Rejected as e:
                rejected.append(Rejection(record.source, record.line, e.reason, e.detail, record.raw)._asdict())
                continue
            seen.add(row.item_id)
            ids.append(row.item_id)
            texts.append(row.item.text)
            for field, value in zip(data.items.categorical_fields, row.item.categorical):
                categorical[field].append(value)
    return ids, texts, categorical, rejected


def embed_new_items(config: Config, model_dir: Path, texts: list[str], categorical: dict[str, list[str]]) -> np.ndarray:
    """Item vectors of new products from their text alone (no id vector: they were never trained)."""
    model = load_model(model_dir)
    pipeline = serving_text_pipeline(config, model_dir, model)
    text_vectors = pipeline.encode(texts, verbose=False)
    codes = None
    if categorical:
        vocabularies = json.loads((model_dir / CATEGORICAL_VOCAB_FILE).read_text())
        items = Catalogue(ids=np.array(texts, dtype=object), texts=np.array(texts, dtype=object),
                          counts=np.zeros(len(texts), np.int64),
                          categorical={f: np.array(v, dtype=object) for f, v in categorical.items()})
        codes = tf.constant(categorical_codes(items, vocabularies))
    indices = tf.fill([len(texts)], -1)
    return model.item_tower.embed(tf.constant(text_vectors), indices, codes, training=False).numpy()


# ------------------------------------------------------------------ the stage


def _queries(model_dir: Path, limit: int, dimensions: int) -> np.ndarray:
    """Held-out queries: the test users' query vectors (padded with random unit vectors if few)."""
    queries = np.load(model_dir / VECTORS_FILE)["query_vectors"][:limit]
    if len(queries) < min(limit, 100):
        rng = np.random.default_rng(0)
        extra = rng.normal(size=(min(limit, 100) - len(queries), dimensions)).astype(np.float32)
        queries = np.concatenate([queries, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    return queries.astype(np.float32)


def _write_folder(output: Path, catalogue: IndexCatalogue, searcher, params: dict, report: dict) -> None:
    """Writes every file of the index folder into a staging folder, then swaps it in."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        save_searcher(searcher, staging / SCANN_DIR)
        catalogue.save(staging)
        (staging / SEARCH_FILE).write_text(json.dumps({**params, "k": report["k"]}, indent=1))
        (staging / INDEX_REPORT_FILE).write_text(json.dumps(report, indent=1))
        keep = {p.name for p in staging.iterdir()}
        output.mkdir(exist_ok=True)
        for name in keep:
            target = output / name
            if target.is_dir():
                old = output / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.rename(target, old)
                os.rename(staging / name, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_index(config: Config, model_dir: str | Path, output: str | Path, add_items: str | Path | None = None) -> dict:
    """Builds (or, with ``add_items``, extends and rebuilds) the index; returns its report."""
    model_dir, output = Path(model_dir), Path(output)
    started = time.time()
    if add_items is None:
        print(f"== index: {model_dir} -> {output}")
        model = load_model(model_dir)
        items = load_catalogue(model_dir / CATALOGUE_DIR, config.data.items.categorical_fields)
        catalogue = IndexCatalogue(items.ids, items.texts, model.item_vectors().numpy(), items.categorical)
        added = {}
    else:
        add_items = Path(add_items)
        print(f"== index: adding the products of {add_items} to {output}")
        catalogue = IndexCatalogue.load(output)
        ids, texts, categorical, rejected = read_new_items(config, add_items)
        existing = sorted(set(ids) & set(catalogue.ids))
        if existing:
            raise TfrecError(f"{add_items}: {len(existing)} item id(s) are already in the index (first: "
                             f"{existing[0]!r}); `--add` only takes new products")
        for r in rejected:
            print(f"  rejected {r['source']}:{r['line']}: {r['reason']} ({r['detail']})")
        if not ids:
            raise TfrecError(f"{add_items}: no product to add ({len(rejected)} row(s) rejected)")
        vectors = embed_new_items(config, model_dir, texts, categorical)
        catalogue = catalogue.extended(ids, texts, vectors, categorical)
        added = {"added_items": len(ids), "added_from": str(add_items), "rejected_rows": len(rejected),
                 "rejected": rejected[:100]}
        print(f"  {len(ids):,} new products embedded from their text ({len(rejected):,} rows rejected)")
    queries = _queries(model_dir, config.index.eval_queries, catalogue.vectors.shape[1])
    print(f"Building a ScaNN index over {len(catalogue):,} items of dimension {catalogue.vectors.shape[1]}, "
          f"measured on {len(queries):,} held-out queries")
    searcher, params, report = tuned_searcher(catalogue.vectors, queries, config.index)
    report.update(added)
    _write_folder(output, catalogue, searcher, params, report)
    print(f"Index written to {output} in {time.time() - started:.0f}s: recall@{RECALL_AT} "
          f"{report[f'recall@{RECALL_AT}_vs_exact']:.4f} against exact search, "
          f"{report['scann_over_exact_batched']:.1f}x the exact queries/s (batched)")
    return report
