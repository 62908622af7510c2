"""Reading and loading exported SavedModels: one home for every consumer in this project.

The model server, ``tfrec recommend``, the run report and ``tfrec verify`` all load the
exported versions through this module, so they agree on which version is newest, which
custom ops a model needs, and how the defaults kept in a SignatureDef fill the inputs a
request leaves out (as TF Serving fills them).
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfrec.errors import TfrecError

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
CUSTOM_OP_MODULES = ("tensorflow_text", "scann")
"""Modules whose import registers the custom TF ops the exported models use."""


def register_custom_ops() -> list[str]:
    """Imports the modules that register TF-Text's and ScaNN's ops; returns those that failed."""
    missing = []
    for module in CUSTOM_OP_MODULES:
        try:
            __import__(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
    return missing


def read_saved_model(version_dir: str | Path) -> saved_model_pb2.SavedModel:
    """The ``SavedModel`` protocol buffer of one version folder."""
    version_dir = Path(version_dir)
    saved_model = saved_model_pb2.SavedModel()
    binary = version_dir / "saved_model.pb"
    if binary.exists():
        saved_model.ParseFromString(binary.read_bytes())
    else:
        text_format.Parse((version_dir / "saved_model.pbtxt").read_text(), saved_model)
    return saved_model


def serving_meta_graph(saved_model: saved_model_pb2.SavedModel) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged ``serve`` (the one TF Serving loads)."""
    for graph in saved_model.meta_graphs:
        if SERVE_TAG in graph.meta_info_def.tags:
            return graph
    if not saved_model.meta_graphs:
        raise TfrecError("the SavedModel holds no MetaGraphDef")
    return saved_model.meta_graphs[0]


def is_version_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a SavedModel (one version of one model)."""
    path = Path(path)
    return any((path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt"))


def check_export_root(export_dir: str | Path) -> Path:
    """``export_dir`` if it is an export root (``<model>/<version>/`` inside), else a clear error.

    Passing one model's folder, or one version's, is an easy slip: a server would find
    no models there, or take each version for a model.
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise TfrecError(f"{export_dir} is not a folder: pass the output folder of `tfrec export`")
    if is_version_dir(export_dir):
        raise TfrecError(f"{export_dir} is one version of one model (it holds saved_model.pb), not an export "
                         f"folder: pass the export root, {export_dir.parent.parent}, which holds "
                         f"<model>/<version>/")
    versions = sorted(p.name for p in export_dir.iterdir() if p.name.isdigit() and is_version_dir(p))
    if versions:
        raise TfrecError(f"{export_dir} is one model's folder (it holds version(s) {', '.join(versions)}), not an "
                         f"export folder: pass the export root, {export_dir.parent}, which holds "
                         f"<model>/<version>/")
    return export_dir


def load_saved_model(version_dir: str | Path):
    """One version loaded eagerly, and its SignatureDefs: ``(loaded, {name: SignatureDef})``."""
    return tf.saved_model.load(str(version_dir)), read_signature_defs(version_dir)


def read_signature_defs(version_dir: str | Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs a SavedModel declares (what TF Serving reports as its metadata)."""
    return dict(serving_meta_graph(read_saved_model(version_dir)).signature_def)


def newest_version(model_dir: str | Path) -> Path:
    """The highest-numbered version folder of one exported model."""
    model_dir = Path(model_dir)
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    if not versions:
        raise TfrecError(f"{model_dir}: no exported versions (run `tfrec export`)")
    return max(versions, key=lambda p: int(p.name))


def load_serving_signature(export_dir: str | Path, name: str):
    """The ``serving_default`` function of the newest version of model ``name``, loaded eagerly.

    Registers the custom ops the models need first (TF-Text's, ScaNN's). Inputs left out
    of a call take the defaults recorded in the SignatureDef, as TF Serving fills them.
    """
    register_custom_ops()
    version = newest_version(Path(export_dir) / name)
    loaded = tf.saved_model.load(str(version))
    function = loaded.signatures[DEFAULT_SIGNATURE]
    defaults = read_signature_defs(version)[DEFAULT_SIGNATURE].defaults

    def call(**inputs):
        filled = {key: tf.constant(tf.make_ndarray(value)) for key, value in defaults.items() if key not in inputs}
        return function(**inputs, **filled)

    call.loaded = loaded  # the signature reads the loaded object's variables: keep it alive
    return call
