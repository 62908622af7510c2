"""Batch recommendations as an Apache Beam job (``tfrec batch``).

``job.run_batch`` runs it; the modules hold its parts: ``histories`` (a data folder's split
or raw interaction files -> customer histories), ``handler`` (the RunInference model handler
that runs the exported ``tfrec_retrieve`` SavedModel) and ``output`` (JSON lines or Parquet).
"""

__all__ = ["handler", "histories", "job", "output"]
"""The public modules; the job is ``job.run_batch``."""
