"""Reading and loading exported SavedModels: one home for every consumer in this project.

The model server, ``tfrec recommend``, the run report and ``tfrec verify`` all load the
exported versions through this module, so they agree on which version is newest, which
custom ops a model needs, and how the defaults kept in a SignatureDef fill the inputs a
request leaves out (as TF Serving fills them).
"""

from __future__ import annotations

import os

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfrec import fileio
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


def read_saved_model(version_dir: str | os.PathLike) -> saved_model_pb2.SavedModel:
    """The ``SavedModel`` protocol buffer of one version folder."""
    saved_model = saved_model_pb2.SavedModel()
    binary = fileio.join(version_dir, "saved_model.pb")
    if fileio.exists(binary):
        saved_model.ParseFromString(fileio.read_bytes(binary))
    else:
        text_format.Parse(fileio.read_text(fileio.join(version_dir, "saved_model.pbtxt")), saved_model)
    return saved_model


def serving_meta_graph(saved_model: saved_model_pb2.SavedModel) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged ``serve`` (the one TF Serving loads)."""
    for graph in saved_model.meta_graphs:
        if SERVE_TAG in graph.meta_info_def.tags:
            return graph
    if not saved_model.meta_graphs:
        raise TfrecError("the SavedModel holds no MetaGraphDef")
    return saved_model.meta_graphs[0]


def is_version_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a SavedModel (one version of one model)."""
    return any(fileio.exists(fileio.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt"))


def check_export_root(export_dir: str | os.PathLike) -> str:
    """``export_dir`` if it is an export root (``<model>/<version>/`` inside), else a clear error.

    Passing one model's folder, or one version's, is an easy slip: a server would find
    no models there, or take each version for a model.
    """
    export_dir = os.fspath(export_dir).rstrip("/")
    parent = os.path.dirname if not fileio.is_url(export_dir) else lambda p: p.rsplit("/", 1)[0]
    if not fileio.isdir(export_dir):
        raise TfrecError(f"{export_dir} is not a folder: pass the output folder of `tfrec export`")
    if is_version_dir(export_dir):
        raise TfrecError(f"{export_dir} is one version of one model (it holds saved_model.pb), not an export "
                         f"folder: pass the export root, {parent(parent(export_dir))}, which holds "
                         f"<model>/<version>/")
    versions = [name for name in fileio.listdir(export_dir)
                if name.isdigit() and is_version_dir(fileio.join(export_dir, name))]
    if versions:
        raise TfrecError(f"{export_dir} is one model's folder (it holds version(s) {', '.join(versions)}), not an "
                         f"export folder: pass the export root, {parent(export_dir)}, which holds "
                         f"<model>/<version>/")
    return export_dir


def load_saved_model(version_dir: str | os.PathLike):
    """One version loaded eagerly, and its SignatureDefs: ``(loaded, {name: SignatureDef})``."""
    return tf.saved_model.load(os.fspath(version_dir)), read_signature_defs(version_dir)


def read_signature_defs(version_dir: str | os.PathLike) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs a SavedModel declares (what TF Serving reports as its metadata)."""
    return dict(serving_meta_graph(read_saved_model(version_dir)).signature_def)


def newest_version(model_dir: str | os.PathLike) -> str:
    """The highest-numbered version folder of one exported model."""
    versions = [name for name in fileio.listdir(model_dir)
                if name.isdigit() and fileio.isdir(fileio.join(model_dir, name))]
    if not versions:
        raise TfrecError(f"{model_dir}: no exported versions (run `tfrec export`)")
    return fileio.join(model_dir, max(versions, key=int))


def load_serving_signature(export_dir: str | os.PathLike, name: str):
    """The ``serving_default`` function of the newest version of model ``name``, loaded eagerly.

    Registers the custom ops the models need first (TF-Text's, ScaNN's). Inputs left out
    of a call take the defaults recorded in the SignatureDef, as TF Serving fills them.
    """
    return load_version_signature(newest_version(fileio.join(export_dir, name)))


def load_version_signature(version_dir: str | os.PathLike):
    """The ``serving_default`` function of one version folder, loaded eagerly; inputs left out
    of a call take the SignatureDef's defaults (see :func:`load_serving_signature`)."""
    register_custom_ops()
    loaded = tf.saved_model.load(os.fspath(version_dir))
    function = loaded.signatures[DEFAULT_SIGNATURE]
    defaults = read_signature_defs(version_dir)[DEFAULT_SIGNATURE].defaults

    def call(**inputs):
        filled = {key: tf.constant(tf.make_ndarray(value)) for key, value in defaults.items() if key not in inputs}
        return function(**inputs, **filled)

    call.loaded = loaded  # the signature reads the loaded object's variables: keep it alive
    return call
