"""Computes TensorFlow Recommenders' retrieval loss on given inputs, in a process of its own.

TFRS is written against Keras 2: it imports only with ``TF_USE_LEGACY_KERAS=1`` set before
TensorFlow loads, which the parent sets for this process alone. Usage:
``python tfrs_child.py INPUTS.npz`` prints ``{case: loss}`` as JSON for every case in the file.
"""

import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

data = np.load(sys.argv[1])
losses = {}
for case in json.loads(str(data["cases"])):
    task = tfrs.tasks.Retrieval(temperature=case["temperature"],
                                remove_accidental_hits=case["remove_accidental_hits"])
    sampling = tf.constant(np.exp(data["log_q"][data["ids"]])) if case["log_q"] else None
    loss = task(tf.constant(data["queries"]), tf.constant(data["candidates"]),
                candidate_sampling_probability=sampling,
                candidate_ids=tf.constant(data["ids"]) if case["remove_accidental_hits"] else None)
    losses[case["name"]] = float(loss)
print(json.dumps({"losses": losses, "tf_keras": tf.keras.__name__}))
