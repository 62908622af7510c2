"""``tfrec index``: the catalogue's item vectors in a ScaNN index, measured against exact top-K.

The index is built with ScaNN's TensorFlow ops (tree partitioning, anisotropic
asymmetric hashing, exact re-scoring of the best candidates), so it can travel inside
an exported SavedModel. Its settings are tuned for speed (``serving.index_tuning``):
several trees, leaves searched and re-scored candidates, and ScaNN's exact brute-force
scorer, are measured on held-out queries (the test users' query vectors written by
``tfrec train``) against exact brute-force top-K, in the same run; the fastest setting
whose recall@10 reaches ``index.recall_target`` is kept, and every try is reported.
Settings given in ``index`` of the config are kept as given. Builds are seeded.

An index folder holds::

    scann/              the ScaNN searcher's state, a SavedModel (needs ``import scann``)
    catalogue.npz       item ids, vectors and category values, in index order
    items.tsv           item ids and texts
    search.json         the search parameters the tuning chose (read by the export)
    index_report.json   the measurement of the choice and every try, for people and the run report

``tfrec index --add FILE`` embeds new products from their text with the trained item
tower (no retraining), appends them to the catalogue and rebuilds the index, so the
next export serves them.
"""

from __future__ import annotations

import json
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
from tfrec.models import load_model, serving_text_pipeline
from tfrec.models.two_tower import CATEGORICAL_VOCAB_FILE, categorical_codes
from tfrec.training.trainer import CATALOGUE_DIR, VECTORS_FILE

SCANN_DIR = "scann"
CATALOGUE_FILE = "catalogue.npz"
SEARCH_FILE = "search.json"
REPORT_FILE = "index_report.json"
RECALL_AT = 10
SEED = 0
"""Seed of the tree's k-means and of the hashing's sampling and codebooks."""
TRAINING_SAMPLE = 100_000
"""Items the tree and the hashing are trained on."""
MIN_PARTITION = 50
"""ScaNN's default smallest tree partition (lowered for trees with few items per leaf)."""
EXACT_SCORES_AT_ONCE = 1 << 27
"""Scores exact search holds at once (512 MB of float32): queries are scored in chunks."""
TIMING_REPEATS = 3
"""A speed is the median of this many timed passes."""


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
        np.savez(folder / CATALOGUE_FILE, ids=self.ids.astype(str), vectors=self.vectors,
                 **{f"cat_{k}": v.astype(str) for k, v in self.categorical.items()})
        write_items(folder, self.ids, self.texts)

    @classmethod
    def load(cls, folder: str | Path) -> IndexCatalogue:
        folder = Path(folder)
        path = folder / CATALOGUE_FILE
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


class ExactSearch:
    """Exact top-``k`` by dot product (TF matmul + top_k), in query chunks that bound its memory."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = tf.constant(vectors, tf.float32)
        self.rows = max(1, EXACT_SCORES_AT_ONCE // len(vectors))

    def __call__(self, queries, k: int) -> np.ndarray:
        queries = tf.convert_to_tensor(queries, tf.float32)
        return np.concatenate([
            tf.math.top_k(tf.matmul(queries[i:i + self.rows], self.vectors, transpose_b=True), k).indices.numpy()
            for i in range(0, int(queries.shape[0]), self.rows)])


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` by dot product, ``[Q, k]``."""
    return ExactSearch(vectors)(queries, k)


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


def save_searcher(searcher, folder: Path, params: dict[str, Any] | None = None) -> None:
    """Writes the searcher's state as a SavedModel (loading it needs ``import scann``).

    With ``params``, the state's own default search becomes theirs, so a searcher loaded
    from it searches as the tuning chose even when a caller passes no search settings.
    """
    state = searcher.serialize_to_module()
    if params is not None and not params["brute_force"]:
        from scann.proto import scann_pb2

        stored = state.scann_config.numpy()
        config = scann_pb2.ScannConfig.FromString(stored.reshape(-1)[0])
        if config.HasField("partitioning"):
            config.partitioning.query_spilling.max_spill_centers = params["num_leaves_to_search"]
        if config.HasField("exact_reordering"):
            config.exact_reordering.approx_num_neighbors = params["reorder"]
        state.scann_config.assign(np.array([config.SerializeToString()], dtype=object).reshape(stored.shape))
    tf.saved_model.save(state, str(folder), options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))


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
    from tfrec.config import Catalogue as CatalogueSection

    data = config.data
    item_column = data.catalogue.item_id if data.catalogue else data.interactions.columns.item_id
    delimiter = data.catalogue.delimiter if data.catalogue else data.interactions.delimiter
    section = CatalogueSection(paths=[str(path)], item_id=item_column, delimiter=delimiter)
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
        save_searcher(searcher, staging / SCANN_DIR, params)
        catalogue.save(staging)
        (staging / SEARCH_FILE).write_text(json.dumps({**params, "k": report["k"]}, indent=1))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1))
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
    from serving.index_tuning import tune_searcher

    searcher, params, report = tune_searcher(catalogue.vectors, queries, config.index)
    report.update(added)
    _write_folder(output, catalogue, searcher, params, report)
    print(f"Index written to {output} in {time.time() - started:.0f}s: recall@{RECALL_AT} "
          f"{report[f'recall@{RECALL_AT}_vs_exact']:.4f} against exact search, "
          f"{report['scann_over_exact_batched']:.1f}x the exact queries/s (batched)")
    return report
