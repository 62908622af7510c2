"""A RunInference model handler for the exported ``tfrec_retrieve`` SavedModel.

Beam's own TensorFlow handler loads through ``tf.keras.models.load_model``, which under
Keras 3 cannot read a plain TF SavedModel. This handler loads the version folder with
``tf.saved_model.load`` and calls its ``serving_default`` signature on batches of
histories, exactly as a model server does: the job runs the model users deploy, never a
copy of it rebuilt in Python. RunInference still does the batching, shares the loaded
model between the threads of a worker and reports its metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

History = Sequence[str]
"""One customer's item ids, oldest first."""

OUTPUTS = ("item_ids", "scores", "because_ids", "because_scores")
"""What the retrieve signature returns per customer, in record order."""
METRICS_NAMESPACE = "tfrec_batch"


STEP_TIME = "step_time_ms"
"""Distribution of wall-clock times (epoch ms) at the start of each model call and after each bundle's
last record: its min and max bound the recommendation step across all workers."""


def mark_step_time() -> None:
    import time

    from apache_beam.metrics import Metrics

    Metrics.distribution(METRICS_NAMESPACE, STEP_TIME).update(int(time.time() * 1000))


def pad_histories(histories: Sequence[History]) -> np.ndarray:
    """``[B, L]`` item ids, each history left-padded with ``""`` to the longest (what the signature takes)."""
    width = max((len(history) for history in histories), default=0) or 1
    padded = np.full((len(histories), width), "", dtype=object)
    for row, history in enumerate(histories):
        if history:
            padded[row, width - len(history):] = list(history)
    return padded


def rows(outputs: dict[str, Any]) -> list[dict[str, list]]:
    """The signature's batched outputs -> one ``{output: list}`` per row, ids as ``str``."""
    columns = {}
    for name in OUTPUTS:
        values = np.asarray(outputs[name])
        columns[name] = ([[v.decode("utf-8") for v in row] for row in values] if values.dtype == object
                         else values.tolist())
    return [dict(zip(OUTPUTS, row)) for row in zip(*(columns[name] for name in OUTPUTS))]


class RetrieveModelHandler(ModelHandler[History, PredictionResult, Any]):
    """Histories -> ``PredictionResult``s whose ``inference`` is ``{"item_ids", "scores",
    "because_ids", "because_scores"}``, through one exported version of ``tfrec_retrieve``.

    Args:
      version_dir: the version folder, e.g. ``EXPORT/tfrec_retrieve/3`` (pinned when the job
        is built, so every worker runs the same version even if a newer one lands meanwhile).
      k: results per customer; None: the signature's default (``export.k``).
      exclude_history: drop items already in the history; None: the signature's default.
      exclude_ids: item ids never to return (e.g. sold out).
      max_batch_size: most histories per signature call when RunInference batches (the batch
        job batches them itself, by length: ``serving.batch.job.Recommend``).
    """

    def __init__(self, version_dir: str, k: int | None = None, exclude_history: bool | None = None,
                 exclude_ids: Sequence[str] = (), max_batch_size: int = 256):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self.version_dir = str(version_dir)
        self.k = k
        self.exclude_history = exclude_history
        self.exclude_ids = list(exclude_ids)

    def load_model(self):
        from serving.saved_model import load_version_signature

        return load_version_signature(self.version_dir)

    def request(self, histories: Sequence[History]) -> dict[str, Any]:
        """The signature's inputs for a batch (options left unset take the SignatureDef's defaults)."""
        import tensorflow as tf

        inputs = {"history": tf.constant(pad_histories(histories).astype(str))}
        if self.k is not None:
            inputs["k"] = tf.constant(self.k, tf.int32)
        if self.exclude_history is not None:
            inputs["exclude_history"] = tf.constant(self.exclude_history)
        if self.exclude_ids:
            inputs["exclude_ids"] = tf.constant(self.exclude_ids, tf.string)
        return inputs

    def run_inference(self, batch: Sequence[History], model, inference_args: dict | None = None
                      ) -> Iterable[PredictionResult]:
        mark_step_time()
        outputs = model(**self.request(batch))
        answers = rows({name: outputs[name].numpy() for name in OUTPUTS})
        return [PredictionResult(history, answer, self.version_dir) for history, answer in zip(batch, answers)]

    def get_num_bytes(self, batch: Sequence[History]) -> int:
        return sum(len(item) for history in batch for item in history)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
