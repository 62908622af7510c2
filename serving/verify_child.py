"""Runs exported SavedModels the way model servers do, in a process of its own.

``python verify_child.py VERSION_DIR`` reads ``{"requests": [{input: value, ...}, ...]}``
on stdin and prints one JSON object; ``python verify_child.py`` alone reads
``{"models": [{"path": VERSION_DIR, "requests": [...]}, ...]}`` and prints
``{"models": [one such object per model]}``, every model checked in this one process
(each in a graph of its own). An object holds:

- ``ops``: every op type the serving graph (and its functions) uses that core
  TensorFlow does not register, mapped to the module whose import registered it
  (``tensorflow_text``, ``scann``) or ``null`` when none did;
- ``graph``: each request's outputs (or error) through the TF1 session loader, the path
  of TF Serving, ``saved_model_cli run`` and the C, C++, Java and Go APIs, feeding only
  the inputs the request names;
- ``eager``: the same through ``tf.saved_model.load``, with the SignatureDef's defaults
  filled in for the inputs a request leaves out, as TF Serving fills them;
- ``modules``: this project's modules that loading imported (there must be none).

It imports TensorFlow and, only when the graph needs their ops, TF-Text and ScaNN: what a
model server links, nothing of this project.
"""

import json
import sys

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

OP_MODULES = ("tensorflow_text", "scann")
PROJECT = {"tfrec", "serving", "pipelines", "keras_hub", "keras"}
WITH_TENSORFLOW = {m.split(".")[0] for m in sys.modules}
"""Modules ``import tensorflow`` brought (it imports Keras itself when Keras is installed):
only modules the loading adds count against the model."""


def serving_graph(version_dir):
    saved_model = saved_model_pb2.SavedModel()
    with open(f"{version_dir}/saved_model.pb", "rb") as f:
        saved_model.ParseFromString(f.read())
    for graph in saved_model.meta_graphs:
        if "serve" in graph.meta_info_def.tags:
            return graph
    return saved_model.meta_graphs[0]


def op_types(graph):
    types = {node.op for node in graph.graph_def.node}
    for function in graph.graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def register_ops(types):
    """Imports the op modules the graph needs; returns ``{op: module or None}`` for non-core ops."""
    unregistered = sorted(t for t in types if op_def_registry.get(t) is None)
    owners = dict.fromkeys(unregistered)
    for module in OP_MODULES:
        if not [op for op, owner in owners.items() if owner is None]:
            break
        try:
            __import__(module)
        except ImportError:
            continue
        for op, owner in owners.items():
            if owner is None and op_def_registry.get(op) is not None:
                owners[op] = module
    return owners


def plain(value):
    value = np.asarray(value)
    if value.dtype == object or value.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[str])(value).tolist()
    return value.tolist()


def error_text(error):
    lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith(("\t", " "))]
    return " ".join(lines)[:500]


def feed_value(value, dtype):
    if dtype == tf.string:
        return np.array(value, dtype=object)
    return np.array(value, dtype=dtype.as_numpy_dtype)


def run_graph(version_dir, requests):
    answers = []
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)
        signature = meta.signature_def["serving_default"]
        fetches = {key: info.name for key, info in signature.outputs.items()}
        for request in requests:
            try:
                feed = {signature.inputs[key].name: feed_value(value, tf.as_dtype(signature.inputs[key].dtype))
                        for key, value in request.items()}
                answers.append({key: plain(value) for key, value in session.run(fetches, feed).items()})
            except Exception as e:  # noqa: BLE001  (reported to the parent, request by request)
                answers.append({"error": f"{type(e).__name__}: {error_text(e)}"})
    return answers


def run_eager(version_dir, graph, requests):
    loaded = tf.saved_model.load(version_dir)
    function = loaded.signatures["serving_default"]
    signature = graph.signature_def["serving_default"]
    answers = []
    for request in requests:
        try:
            inputs = {key: tf.constant(feed_value(value, tf.as_dtype(signature.inputs[key].dtype)))
                      for key, value in request.items()}
            for key, default in signature.defaults.items():
                inputs.setdefault(key, tf.constant(tf.make_ndarray(default)))
            answers.append({key: plain(value.numpy()) for key, value in function(**inputs).items()})
        except Exception as e:  # noqa: BLE001
            answers.append({"error": f"{type(e).__name__}: {error_text(e)}"})
    return answers


def check(version_dir, graph, owners, requests):
    """One model's answer (see the module docstring), ``modules`` left to the caller."""
    types = op_types(graph)
    result = {"ops": {op: owner for op, owner in owners.items() if op in types}}
    try:
        result["graph"] = run_graph(version_dir, requests)
    except Exception as e:  # noqa: BLE001  (a model that does not load is the finding)
        result["graph_load_error"] = f"{type(e).__name__}: {error_text(e)}"
    try:
        result["eager"] = run_eager(version_dir, graph, requests)
    except Exception as e:  # noqa: BLE001
        result["eager_load_error"] = f"{type(e).__name__}: {error_text(e)}"
    return result


def main():
    job = json.load(sys.stdin)
    models = job["models"] if "models" in job else [{"path": sys.argv[1], "requests": job["requests"]}]
    graphs = [serving_graph(model["path"]) for model in models]
    # Every graph's non-core ops are found before any op module is imported, so each is
    # attributed to its module whichever model needed it first.
    owners = register_ops(set().union(*(op_types(graph) for graph in graphs)))
    results = [check(model["path"], graph, owners, model["requests"]) for model, graph in zip(models, graphs)]
    modules = sorted(({m.split(".")[0] for m in sys.modules} - WITH_TENSORFLOW) & PROJECT)
    for result in results:
        result["modules"] = modules
    print(json.dumps({"models": results} if "models" in job else results[0]))


if __name__ == "__main__":
    main()
