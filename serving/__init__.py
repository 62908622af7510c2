"""Serving: the ScaNN index, the TF Serving export, its checks and promotion, batch
recommendations and the model server.

The stages: ``index.build_index`` (``tfrec index``), ``export.export_models`` (``tfrec
export``), ``verify.verify_export`` (``tfrec verify``), ``server.serve`` (``tfrec serve``)
and ``batch.job.run_batch`` (``tfrec batch``); ``client`` talks to a served export.
"""

__all__ = ["batch", "catalogue_changes", "client", "export", "index", "items", "model_card", "promotion", "server",
           "signatures", "verify"]
"""The public subpackages and modules (``from serving import *`` imports them)."""
