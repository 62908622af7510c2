"""``tfrec export``: SavedModels in TF Serving's layout, ``EXPORT_DIR/<name>/<version>/``.

=======================  ================================================  ==================
model                    serving_default                                   runs on
=======================  ================================================  ==================
``tfrec_query``          history -> query_vector                           stock TF Serving
``tfrec_candidate``      text (+ item_id, categories) -> item_vector       stock TF Serving
``tfrec_retrieve``       history -> item_ids, scores (exact)               stock TF Serving
``tfrec_similar``        item_id -> item_ids, scores                       stock TF Serving
``tfrec_search``         query text (+ history) -> item_ids, scores        stock TF Serving
``tfrec_retrieve_scann`` history -> item_ids, scores (ScaNN index)         needs ScaNN's ops
=======================  ================================================  ==================

Models that tokenize text use TF-Text ops: TF Serving's model server links them in;
a Python process registers them with ``import tensorflow_text``. The ScaNN model
needs ``import scann`` (or a TF Serving built with ScaNN's ops, e.g. ``tfrec serve``).

Every version is written to a temporary folder beside its final place and renamed
into place, so a model server polling the folder never sees half a version. Also
written: ``models.config`` (TF Serving's model config, stock-servable models),
``model_card.json`` (data, config, metrics, index report, package versions) and
``items.tsv`` (item ids and texts, for people reading results).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

import tensorflow as tf

from serving.index import IndexCatalogue
from serving.items import write_items
from serving.signatures import (
    CandidateModel,
    Catalogue,
    QueryModel,
    RetrieveModel,
    SearchModel,
    SimilarModel,
)
from tfrec import features as F
from tfrec.config import Config
from tfrec.data import load_catalogue
from tfrec.errors import TfrecError
from tfrec.models import load_model, serving_text_pipeline
from tfrec.models.two_tower import CATEGORICAL_VOCAB_FILE
from tfrec.training.trainer import CATALOGUE_DIR

QUERY, CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH = (
    "tfrec_query", "tfrec_candidate", "tfrec_retrieve", "tfrec_retrieve_scann", "tfrec_similar", "tfrec_search"
)
STOCK_SERVABLE = (QUERY, CANDIDATE, RETRIEVE, SIMILAR, SEARCH)
TEXT_MODELS = (CANDIDATE, SEARCH)
PACKAGES = ("tfrec", "tensorflow", "tensorflow-text", "keras", "keras-hub", "tensorflow-recommenders", "scann",
            "apache-beam", "implicit", "numpy")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def next_version(export_dir: Path) -> int:
    """One more than the highest version of any model in the export folder (1 for a new one)."""
    versions = [int(p.name) for p in export_dir.glob("*/*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def save_atomically(module: tf.Module, target: Path, scann: bool = False) -> None:
    """Saves a SavedModel to a temporary sibling folder, then renames it to ``target``."""
    if target.exists():
        raise TfrecError(f"{target} already exists: versions are never overwritten; pick another --version")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if scann else None)
        tf.saved_model.save(module, str(staging / "model"), signatures={"serving_default": module.serve},
                            options=options)
        os.rename(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def models_config(export_dir: Path, names: list[str]) -> str:
    """TF Serving's ``--model_config_file`` for the models stock TF Serving can load."""
    lines = ["# TF Serving model config: tensorflow_model_server --model_config_file=models.config",
             "# tfrec_retrieve_scann needs ScaNN's ops (tfrec serve, or a TF Serving built with them).",
             "model_config_list {"]
    for name in names:
        if name in STOCK_SERVABLE:
            lines.append(f'  config {{ name: "{name}" base_path: "{(export_dir / name).resolve()}" '
                         f'model_platform: "tensorflow" }}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def export_models(config: Config, model_dir: str | Path, index_dir: str | Path | None, export_dir: str | Path,
                  version: int | None = None) -> dict[str, Path]:
    """Writes every model of the table above as ``export_dir/<name>/<version>``; returns their paths."""
    model_dir, export_dir = Path(model_dir), Path(export_dir)
    index_dir = Path(index_dir) if index_dir else None
    started = time.time()
    print(f"== export: {model_dir} -> {export_dir}")
    model = load_model(model_dir)
    fields = list(config.data.items.categorical_fields)
    category_field = config.export.category_field or (fields[0] if fields else None)
    if category_field is not None and category_field not in fields:
        raise TfrecError(f"export.category_field {category_field!r} is not one of data.items.categorical_fields "
                         f"{fields}")
    if index_dir is not None:
        # The index's catalogue: the trained items plus any added since (`tfrec index --add`).
        catalogue = IndexCatalogue.load(index_dir)
        vectors = catalogue.vectors
    else:
        catalogue = load_catalogue(model_dir / CATALOGUE_DIR, fields)
        vectors = model.item_vectors().numpy()
    shared = Catalogue(catalogue.ids, vectors,
                       catalogue.categorical[category_field] if category_field else None)
    vocabularies = json.loads((model_dir / CATEGORICAL_VOCAB_FILE).read_text())
    pipeline = serving_text_pipeline(config, model_dir, model)
    k = config.export.k
    candidate = CandidateModel(model, shared, pipeline, vocabularies)
    modules: dict[str, tf.Module] = {
        QUERY: QueryModel(model, shared),
        CANDIDATE: candidate,
        RETRIEVE: RetrieveModel(model, shared, k, config.export.exclude_history),
        SIMILAR: SimilarModel(shared, k),
        SEARCH: SearchModel(model, shared, candidate, k, config.export.search_history_weight),
    }
    if index_dir is not None:
        from serving.scann_retrieve import RetrieveScannModel

        modules[RETRIEVE_SCANN] = RetrieveScannModel(model, shared, index_dir, k, config.export.exclude_history)

    version = version or next_version(export_dir)
    paths = {}
    for name, module in modules.items():
        paths[name] = export_dir / name / str(version)
        save_atomically(module, paths[name], scann=name == RETRIEVE_SCANN)
        print(f"  {name:<22} -> {paths[name]}")

    (export_dir / "models.config").write_text(models_config(export_dir, list(modules)))
    write_items(export_dir, catalogue.ids, catalogue.texts)
    card = {
        "name": config.name,
        "version": version,
        "models": {name: {"path": str(p), "needs": _needs(name)} for name, p in paths.items()},
        "embedding_dim": int(vectors.shape[1]),
        "items": len(catalogue),
        "categorical_fields": fields,
        "category_field": category_field,
        "data": _read_json(model_dir / CATALOGUE_DIR / F.STATS_FILE),
        "metrics": _read_json(model_dir / "metrics.json"),
        "training": _read_json(model_dir / "train_summary.json"),
        "index": _read_json(index_dir / "index_report.json") if index_dir else None,
        "config": config.to_dict(),
        "packages": package_versions(),
    }
    (export_dir / "model_card.json").write_text(json.dumps(card, indent=1))
    print(f"Exported version {version} of {len(paths)} models in {time.time() - started:.0f}s; "
          f"TF Serving config: {export_dir / 'models.config'}")
    return paths


def _needs(name: str) -> list[str]:
    needs = ["tensorflow"]
    if name in TEXT_MODELS:
        needs.append("tensorflow_text")
    if name == RETRIEVE_SCANN:
        needs.append("scann")
    return needs
