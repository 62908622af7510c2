"""Runs one exported model in a process that imports only what a model server links.

Usage: ``python saved_model_child.py MODEL_DIR [tensorflow_text] [scann]`` with a JSON
object of named inputs on stdin. Prints the outputs as JSON, with the names of any of
this project's (or its modelling libraries') modules that got imported: there must be none.
"""

import importlib
import json
import sys

import numpy as np
import tensorflow as tf

for extra in sys.argv[2:]:
    importlib.import_module(extra)


def plain(tensor: tf.Tensor):
    if tensor.dtype == tf.string:
        return np.vectorize(bytes.decode, otypes=[str])(tensor.numpy()).tolist()
    return tensor.numpy().tolist()


signature = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
specs = signature.structured_input_signature[1]
inputs = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in json.load(sys.stdin).items()}
outputs = signature(**inputs)
own = {"tfrec", "serving", "pipelines", "keras_hub", "tensorflow_recommenders"}
print(json.dumps({
    "outputs": {name: plain(value) for name, value in outputs.items()},
    "project_modules": sorted({m.split(".")[0] for m in sys.modules} & own),
}))
