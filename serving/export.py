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
``batching_parameters.txt`` (TF Serving's ``--batching_parameters_file``, from ``serve.batching``),
``model_card.json`` and ``model_card.md`` (``serving.model_card``: intended use, data,
metrics with confidence intervals, limitations, signatures, package versions) and
``items.tsv`` (item ids and texts, for people reading results).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from serving.index import IndexCatalogue
from serving.items import read_removed, write_items
from serving.model_card import build_model_card, render_model_card_md
from serving.promotion import promotion_gate, require_data, served_version
from serving.publishing import publish_version, publishes, recover
from serving.saved_model import DEFAULT_SIGNATURE, read_signature_defs
from serving.signatures import (
    CandidateModel,
    QueryModel,
    RetrieveModel,
    SearchModel,
    ServingCatalogue,
    SimilarModel,
    input_meanings,
    output_meanings,
)
from serving.verify import check_versions, format_checks
from tfrec import fileio
from tfrec.config import BatchingConfig, Config
from tfrec.data import Catalogue, load_catalogue
from tfrec.errors import TfrecError
from tfrec.evaluation.similar import served_text_weight, similar_scale
from tfrec.layout import (
    BATCHING_PARAMETERS_FILE,
    CATALOGUE_DIR,
    CATEGORICAL_VOCAB_FILE,
    MODEL_CARD_FILE,
    MODEL_CARD_MD_FILE,
    MODELS_CONFIG_FILE,
    REMOVED_ITEMS_FILE,
)
from tfrec.models import load_model, serving_text_pipeline

QUERY, CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH = (
    "tfrec_query", "tfrec_candidate", "tfrec_retrieve", "tfrec_retrieve_scann", "tfrec_similar", "tfrec_search"
)
STOCK_SERVABLE = (QUERY, CANDIDATE, RETRIEVE, SIMILAR, SEARCH)
TEXT_MODELS = (CANDIDATE, SEARCH)
log = logging.getLogger(__name__)


def next_version(export_dir: str) -> int:
    """One more than the highest version of any model in the export folder (1 for a new one)."""
    versions = [int(version) for model in fileio.listdir(export_dir)
                for version in fileio.listdir(fileio.join(export_dir, model)) if version.isdigit()]
    return max(versions, default=0) + 1


def stage(module: tf.Module, target: str, scann: bool = False) -> str:
    """Saves ``module`` as a SavedModel in a hidden folder beside ``target``; returns the SavedModel's path.

    Nothing is visible at ``target`` until :func:`publish` renames the staged folder into
    place. TensorFlow writes each optional input (an argument with a default) as a
    ``PlaceholderWithDefault`` and keeps the default in the SignatureDef, so graph-mode
    callers may leave it out. For a ``target`` on another filesystem (a bucket), the
    model is staged in a local temporary folder, where the serving check's fresh process
    can load it.
    """
    if fileio.exists(target):
        raise TfrecError(f"{target} already exists: versions are never overwritten; pick another --version")
    if fileio.is_url(target):
        staging = tempfile.mkdtemp(prefix="tfrec-export-")
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = fileio.temporary_sibling(target)
        os.mkdir(staging)
    saved = os.path.join(staging, "model")
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if scann else None)
    tf.saved_model.save(module, saved, signatures={DEFAULT_SIGNATURE: module.serve}, options=options)
    return saved


def publish(saved: str, target: str) -> None:
    """Moves a staged SavedModel to ``target`` and removes its staging folder.

    Locally one atomic rename. On a bucket the files are copied with ``saved_model.pb``
    last, so a model server polling the folder never finds a SavedModel without its
    variables (until that file lands, it does not see a version there).
    """
    if fileio.is_url(target):
        fileio.copy_tree(saved, target, last="saved_model.pb")
    else:
        os.rename(saved, target)
    shutil.rmtree(os.path.dirname(saved), ignore_errors=True)


def models_config(model_base_path: str, names: list[str]) -> str:
    """TF Serving's ``--model_config_file`` for the models stock TF Serving can load.

    ``model_base_path`` is the export folder as the model server sees it (e.g. ``/models``
    inside a container, or a ``gs://`` URL); each model's ``base_path`` is below it.
    """
    base = model_base_path.rstrip("/") or "/"
    lines = ["# TF Serving model config: tensorflow_model_server --model_config_file=models.config",
             "# tfrec_retrieve_scann needs ScaNN's ops (tfrec serve, or a TF Serving built with them).",
             "model_config_list {"]
    for name in names:
        if name in STOCK_SERVABLE:
            lines.append(f'  config {{ name: "{name}" base_path: "{base}/{name}" model_platform: "tensorflow" }}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def batching_parameters(settings: BatchingConfig) -> str:
    """TF Serving's ``--batching_parameters_file``: ``BatchingParameters`` as a text proto.

    The values are ``serve.batching``'s, those ``tfrec serve`` runs with. Its wrapped fields
    (``google.protobuf.Int64Value``) are written ``max_batch_size { value: 64 }``.
    ``pad_variable_length_inputs`` stays off: TF Serving would pad a history on the right,
    where its most recent items are.

    Example:

    >>> print(batching_parameters(BatchingConfig(allowed_batch_sizes=[8, 64])).splitlines()[-2])
    allowed_batch_sizes: 64
    """
    lines = ["# tensorflow_model_server --enable_batching --batching_parameters_file=batching_parameters.txt",
             "# Every fed input is merged along its first dimension: send `history` only (the options keep",
             "# their exported defaults), all histories of one length, left-padded with \"\".",
             f"max_batch_size {{ value: {settings.max_batch_size} }}",
             f"batch_timeout_micros {{ value: {settings.batch_timeout_micros} }}",
             f"max_enqueued_batches {{ value: {settings.max_enqueued_batches} }}",
             f"num_batch_threads {{ value: {settings.num_batch_threads} }}"]
    lines += [f"allowed_batch_sizes: {size}" for size in settings.allowed_batch_sizes]
    lines.append("pad_variable_length_inputs: false")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class ExportSource:
    """What the exported models are built from: the trained model and the catalogue they serve."""

    model: keras.Model
    catalogue: IndexCatalogue | Catalogue
    """The index's catalogue (trained items plus any added since), or the model's."""
    vectors: np.ndarray
    """The served item vectors, one row per catalogue item."""
    removed: np.ndarray
    """Which catalogue items no model may return (``tfrec index --remove``), a boolean mask."""
    fields: list[str]
    """The catalogue's categorical fields."""
    category_field: str | None
    """The field the ``category`` filter reads."""


def load_export_source(config: Config, model_dir: str, index_dir: str | None, export_dir: str) -> ExportSource:
    """Loads the model of ``model_dir`` and the catalogue to serve: the index's, else the model's;
    items removed from ``export_dir`` stay removed."""
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
        catalogue = load_catalogue(fileio.join(model_dir, CATALOGUE_DIR), fields)
        vectors = model.item_vectors().numpy()
    removed = np.isin(np.asarray(catalogue.ids, dtype=object).astype(str), read_removed(export_dir))
    if removed.any():
        log.info("  %d item(s) stay removed (%s): no model returns them", int(removed.sum()), REMOVED_ITEMS_FILE)
    return ExportSource(model, catalogue, vectors, removed, fields, category_field)


def build_modules(config: Config, model_dir: str, index_dir: str | None, source: ExportSource) -> dict[str, tf.Module]:
    """One ``tf.Module`` per exported model (the table above), by name."""
    model, catalogue, settings = source.model, source.catalogue, config.export
    shared = ServingCatalogue(catalogue.ids, source.vectors,
                              catalogue.categorical[source.category_field] if source.category_field else None,
                              source.removed)
    vocabularies = json.loads(fileio.read_text(fileio.join(model_dir, CATEGORICAL_VOCAB_FILE)))
    pipeline = serving_text_pipeline(config, model_dir, model)
    k, max_history = settings.k, settings.max_history
    candidate = CandidateModel(model, shared, pipeline, vocabularies)
    modules: dict[str, tf.Module] = {
        QUERY: QueryModel(model, shared, max_history),
        CANDIDATE: candidate,
        RETRIEVE: RetrieveModel(model, shared, k, settings.exclude_history, max_history),
        SIMILAR: SimilarModel(shared, k, similar_scale(model.user_tower.trained_dim, model.user_tower.text_dim,
                                                       served_text_weight(model_dir))),
        SEARCH: SearchModel(model, shared, candidate, k, settings.search_history_weight, max_history),
    }
    if index_dir is not None:
        from serving.scann_retrieve import RetrieveScannModel

        modules[RETRIEVE_SCANN] = RetrieveScannModel(model, shared, index_dir, k, settings.exclude_history,
                                                     max_history)
    return modules


def verify_staged(staged: dict[str, str], source: ExportSource) -> None:
    """Checks every staged model in graph mode and eagerly in a fresh process (``tfrec verify``).

    Raises:
        TfrecError: naming each failed check, when any fails.
    """
    sample_ids, sample_texts = list(source.catalogue.ids[:6]), list(source.catalogue.texts[:2])
    checks = check_versions(staged, sample_ids, sample_texts, len(source.fields))
    if any(not c.ok for c in checks):
        raise TfrecError("the new version failed its serving check and was not written:\n" + format_checks(checks))


def write_model_card(config: Config, model_dir: str, index_dir: str | None, export_dir: str, version: int,
                     paths: dict[str, str], source: ExportSource) -> None:
    """Writes ``model_card.json`` and ``model_card.md`` for the published ``version``."""
    models = {name: {"path": str(p), "needs": _needs(name), "signature": describe_signature(p)}
              for name, p in paths.items()}
    card = build_model_card(config, model_dir, index_dir, export_dir, version, models,
                            {name: model["signature"] for name, model in models.items()})
    # embedding_dim: the served vectors' size (members * the config's embedding_dim).
    card |= {"embedding_dim": int(source.vectors.shape[1]), "members": source.model.item_tower.members,
             "items": len(source.catalogue), "categorical_fields": source.fields,
             "category_field": source.category_field}
    fileio.write_json(fileio.join(export_dir, MODEL_CARD_FILE), card)
    fileio.write_text(fileio.join(export_dir, MODEL_CARD_MD_FILE), render_model_card_md(card))


@publishes
def export_models(config: Config, model_dir: str | os.PathLike, index_dir: str | os.PathLike | None,
                  export_dir: str | os.PathLike,
                  version: int | None = None, model_base_path: str | None = None,
                  verify: bool = True, data_dir: str | os.PathLike | None = None,
                  force: bool = False) -> dict[str, str]:
    """Writes every model of the table above as ``export_dir/<name>/<version>``.

    The stages: a killed run's partial version is rolled back (``serving.publishing``),
    each model is staged (``stage``), checked (``verify_staged``), passed through the
    promotion gate when a version is already served, renamed into place (``publish``) and
    described (``models.config``, ``batching_parameters.txt``, ``items.tsv``,
    ``write_model_card``), all under the publishing journal. A version that fails its check is never left where a model
    server would load it.

    Args:
        config: the run's config (``export`` is read, and ``data``/``model`` for the card).
        model_dir: the trained model folder.
        index_dir: a ScaNN index folder; with it ``tfrec_retrieve_scann`` is exported
            too and the index's catalogue (items added since training included) is served.
        export_dir: the export folder (local or a bucket URL).
        version: the version number; default one more than the highest there.
        model_base_path: where the model server will see ``export_dir``, for
            ``models.config`` (default: ``export_dir`` itself).
        verify: check each staged model in a fresh process before publishing it.
        data_dir: the data folder whose test split the promotion gate ranks both
            versions on; needed when ``export_dir`` already serves a version.
        force: publish even when the promotion gate finds the new version worse.

    Returns:
        The published version's folder of each model, by name.

    Raises:
        PromotionRefused: when the new version is significantly worse than the served one
            (and not ``force``); nothing is published.
        TfrecError: when a check fails or a version folder already exists.
    """
    model_dir, export_dir = os.fspath(model_dir), os.fspath(export_dir)
    index_dir = os.fspath(index_dir) if index_dir else None
    started = time.time()
    log.info("export: %s -> %s", model_dir, export_dir)
    if fileio.isdir(export_dir):
        recover(export_dir)  # a killed run's partial version and temporary folders
    served = served_version(export_dir, RETRIEVE)
    if served is not None:
        require_data(export_dir, served, data_dir, force)
    source = load_export_source(config, model_dir, index_dir, export_dir)
    modules = build_modules(config, model_dir, index_dir, source)
    version = version or next_version(export_dir)
    paths = {name: fileio.join(export_dir, name, str(version)) for name in modules}
    staged: dict[str, str] = {}
    try:
        for name, module in modules.items():
            staged[name] = stage(module, paths[name], scann=name == RETRIEVE_SCANN)
        if verify:
            verify_staged(staged, source)
        if served is not None:
            promotion_gate(config, export_dir, staged[RETRIEVE], served, version,
                           os.fspath(data_dir) if data_dir else None, model_dir, force)
        base_path = model_base_path or (export_dir if fileio.is_url(export_dir) else os.path.abspath(export_dir))

        def describe() -> None:
            fileio.write_text(fileio.join(export_dir, MODELS_CONFIG_FILE), models_config(base_path, list(modules)))
            fileio.write_text(fileio.join(export_dir, BATCHING_PARAMETERS_FILE),
                              batching_parameters(config.serve.batching))
            write_items(export_dir, source.catalogue.ids, source.catalogue.texts)
            write_model_card(config, model_dir, index_dir, export_dir, version, paths, source)

        publish_version(export_dir, version, staged, paths, publish, describe)
    finally:
        for saved in staged.values():
            shutil.rmtree(os.path.dirname(saved), ignore_errors=True)
    log.info("exported version %d of %d models in %.0fs; TF Serving config: %s", version, len(paths),
             time.time() - started, fileio.join(export_dir, MODELS_CONFIG_FILE))
    return paths


def describe_signature(version_dir: str) -> dict:
    """The ``serving_default`` signature for people: each input's dtype, shape, default and meaning,
    each output's dtype, shape and meaning (score scales included), read from the SignatureDef."""
    signature = read_signature_defs(version_dir)[DEFAULT_SIGNATURE]
    inputs, outputs = input_meanings(), output_meanings()

    def shape(info) -> list[int | None]:
        return [None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]

    def default(key):
        if key not in signature.defaults:
            return "required"
        value = tf.make_ndarray(signature.defaults[key])
        value = value.tolist()
        return json.loads(json.dumps(value, default=lambda b: b.decode()))

    return {
        "inputs": {key: {"dtype": tf.as_dtype(info.dtype).name, "shape": shape(info), "default": default(key),
                         "meaning": inputs.get(key, "")} for key, info in sorted(signature.inputs.items())},
        "outputs": {key: {"dtype": tf.as_dtype(info.dtype).name, "shape": shape(info),
                          "meaning": outputs.get(key, "")} for key, info in sorted(signature.outputs.items())},
    }


def _needs(name: str) -> list[str]:
    needs = ["tensorflow"]
    if name in TEXT_MODELS:
        needs.append("tensorflow_text")
    if name == RETRIEVE_SCANN:
        needs.append("scann")
    return needs
