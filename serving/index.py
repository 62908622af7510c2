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

import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow as tf

from serving.items import read_items, write_items
from serving.searcher import (
    RECALL_AT,
    _scann_ops,
)
from tfrec import fileio
from tfrec.config import Config
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

log = logging.getLogger(__name__)


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

    def save(self, folder: str) -> None:
        """Writes the arrays and ``items.tsv`` into local folder ``folder``."""
        np.savez(os.path.join(folder, INDEX_CATALOGUE_FILE), ids=self.ids.astype(str), vectors=self.vectors,
                 **{f"cat_{k}": v.astype(str) for k, v in self.categorical.items()})
        write_items(folder, self.ids, self.texts)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> IndexCatalogue:
        path = fileio.join(folder, INDEX_CATALOGUE_FILE)
        if not fileio.exists(path):
            raise TfrecError(f"{path} not found: is {folder} the output folder of `tfrec index`?")
        arrays = np.load(io.BytesIO(fileio.read_bytes(path)))
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


def save_searcher(searcher, folder: str, params: dict[str, Any] | None = None) -> None:
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
    tf.saved_model.save(state, os.fspath(folder), options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))


def load_searcher_state(index_dir: str | os.PathLike) -> tf.Module:
    """The saved searcher state, as a fresh module that can be saved again inside an export."""
    scann_ops = _scann_ops()
    loaded = tf.saved_model.load(fileio.join(index_dir, SCANN_DIR))
    names = ("scann_config", "serialized_partitioner", "datapoint_to_token", "ah_codebook", "hashed_dataset",
             "int8_dataset", "int8_multipliers", "dp_norms", "dataset")
    return scann_ops.ScannState([getattr(loaded, name).read_value() for name in names])


def load_search_params(index_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads(fileio.read_text(fileio.join(index_dir, SEARCH_FILE)))


# ------------------------------------------------------------------ new items


def read_new_items(config: Config, path: str) -> tuple[list[str], list[str], dict[str, list[str]], list[dict]]:
    """Reads new products (the catalogue's columns) with the pipeline's row rules.

    Returns ids, texts, categorical values and the rejected rows with their reasons.
    """
    from pipelines import sources
    from pipelines.rows import CatalogueParser, Rejection
    from tfrec.config import CatalogueConfig

    data = config.data
    item_column = data.catalogue.item_id if data.catalogue else data.interactions.columns.item_id
    delimiter = data.catalogue.delimiter if data.catalogue else data.interactions.delimiter
    section = CatalogueConfig(paths=[str(path)], item_id=item_column, delimiter=delimiter)
    parser = CatalogueParser(section, data.items, data.normalize_ids)
    fmt = sources.detect_format(str(path), "auto")
    sources.check_columns(str(path), fmt, delimiter, parser.columns, "the new items file")
    ids, texts, rejected = [], [], []
    categorical: dict[str, list[str]] = {f: [] for f in data.items.categorical_fields}
    seen: set[str] = set()
    for record, row in sources.validated_rows(str(path), fmt, delimiter, parser):
        if isinstance(row, Rejection):
            rejected.append(row._asdict())
            continue
        if row.item_id in seen:
            detail = f"{item_column}={row.item_id!r} occurs earlier in the file"
            rejected.append(Rejection(record.source, record.line, "duplicate_item", detail, record.raw)._asdict())
            continue
        seen.add(row.item_id)
        ids.append(row.item_id)
        texts.append(row.item.text)
        for field, value in zip(data.items.categorical_fields, row.item.categorical):
            categorical[field].append(value)
    return ids, texts, categorical, rejected


def embed_new_items(config: Config, model_dir: str, texts: list[str], categorical: dict[str, list[str]]) -> np.ndarray:
    """Item vectors of new products from their text alone (no id vector: they were never trained)."""
    model = load_model(model_dir)
    pipeline = serving_text_pipeline(config, model_dir, model)
    text_vectors = pipeline.encode(texts, verbose=False)
    codes = None
    if categorical:
        vocabularies = json.loads(fileio.read_text(fileio.join(model_dir, CATEGORICAL_VOCAB_FILE)))
        items = Catalogue(ids=np.array(texts, dtype=object), texts=np.array(texts, dtype=object),
                          counts=np.zeros(len(texts), np.int64),
                          categorical={f: np.array(v, dtype=object) for f, v in categorical.items()})
        codes = tf.constant(categorical_codes(items, vocabularies))
    indices = tf.fill([len(texts)], -1)
    return model.item_tower.embed(tf.constant(text_vectors), indices, codes, training=False).numpy()


# ------------------------------------------------------------------ the stage


def _queries(model_dir: str, limit: int, dimensions: int) -> np.ndarray:
    """Held-out queries: the test users' query vectors (padded with random unit vectors if few)."""
    vectors = np.load(io.BytesIO(fileio.read_bytes(fileio.join(model_dir, VECTORS_FILE))))
    queries = vectors["query_vectors"][:limit]
    if len(queries) < min(limit, 100):
        rng = np.random.default_rng(0)
        extra = rng.normal(size=(min(limit, 100) - len(queries), dimensions)).astype(np.float32)
        queries = np.concatenate([queries, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    return queries.astype(np.float32)


def _write_folder(output: str, catalogue: IndexCatalogue, searcher, params: dict, report: dict) -> None:
    """Writes every file of the index folder into a staging folder, then swaps it in.

    The staging folder is a local sibling of a local ``output`` (so each swap is a rename),
    else a local temporary folder whose files are then copied over (ScaNN writes local files).
    """
    remote = fileio.is_url(output)
    parent = os.path.dirname(output.rstrip(os.sep)) or "."
    if not remote:
        os.makedirs(parent, exist_ok=True)
    name = os.path.basename(output.rstrip("/" + os.sep))
    staging = tempfile.mkdtemp(prefix=f".{name}-") if remote else fileio.temporary_sibling(output)
    os.makedirs(staging, exist_ok=True)
    try:
        save_searcher(searcher, os.path.join(staging, SCANN_DIR), params)
        catalogue.save(staging)
        fileio.write_json(os.path.join(staging, SEARCH_FILE), {**params, "k": report["k"]})
        fileio.write_json(os.path.join(staging, INDEX_REPORT_FILE), report)
        fileio.makedirs(output)
        for name in sorted(os.listdir(staging)):
            source, target = os.path.join(staging, name), fileio.join(output, name)
            if remote:
                (fileio.replace_tree if os.path.isdir(source) else fileio.copy)(source, target)
            elif os.path.isdir(target):
                old = os.path.join(output, f".{name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(target, old)
                os.rename(source, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_index(config: Config, model_dir: str | os.PathLike, output: str | os.PathLike,
                add_items: str | os.PathLike | None = None) -> dict:
    """Builds the ScaNN index of a trained model's catalogue, tuned against exact search.

    Args:
        config: the run's config (``index`` is read).
        model_dir: the trained model folder.
        output: the index folder to write (with ``add_items``: the index to extend).
        add_items: a file of new products (the catalogue's columns) to add to the index
            at ``output``, which is then rebuilt.

    Returns:
        The index report (``index_report.json``'s content).
    """
    model_dir, output = os.fspath(model_dir), os.fspath(output)
    started = time.time()
    fileio.remove_stale_temporaries(os.path.dirname(output.rstrip("/")) or ".")
    if add_items is None:
        log.info(f"== index: {model_dir} -> {output}")
        model = load_model(model_dir)
        items = load_catalogue(fileio.join(model_dir, CATALOGUE_DIR), config.data.items.categorical_fields)
        catalogue = IndexCatalogue(items.ids, items.texts, model.item_vectors().numpy(), items.categorical)
        added = {}
    else:
        add_items = os.fspath(add_items)
        log.info(f"== index: adding the products of {add_items} to {output}")
        catalogue = IndexCatalogue.load(output)
        ids, texts, categorical, rejected = read_new_items(config, add_items)
        existing = sorted(set(ids) & set(catalogue.ids))
        if existing:
            raise TfrecError(f"{add_items}: {len(existing)} item id(s) are already in the index (first: "
                             f"{existing[0]!r}); `--add` only takes new products")
        for r in rejected:
            log.info(f"  rejected {r['source']}:{r['line']}: {r['reason']} ({r['detail']})")
        if not ids:
            raise TfrecError(f"{add_items}: no product to add ({len(rejected)} row(s) rejected)")
        vectors = embed_new_items(config, model_dir, texts, categorical)
        catalogue = catalogue.extended(ids, texts, vectors, categorical)
        added = {"added_items": len(ids), "added_from": str(add_items), "rejected_rows": len(rejected),
                 "rejected": rejected[:100]}
        log.info(f"  {len(ids):,} new products embedded from their text ({len(rejected):,} rows rejected)")
    queries = _queries(model_dir, config.index.eval_queries, catalogue.vectors.shape[1])
    log.info(f"Building a ScaNN index over {len(catalogue):,} items of dimension {catalogue.vectors.shape[1]}, "
          f"measured on {len(queries):,} held-out queries")
    from serving.index_tuning import tune_searcher

    searcher, params, report = tune_searcher(catalogue.vectors, queries, config.index)
    report.update(added)
    _write_folder(output, catalogue, searcher, params, report)
    log.info(f"Index written to {output} in {time.time() - started:.0f}s: recall@{RECALL_AT} "
          f"{report[f'recall@{RECALL_AT}_vs_exact']:.4f} against exact search, "
          f"{report['scann_over_exact_batched']:.1f}x the exact queries/s (batched)")
    return report
