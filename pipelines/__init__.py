"""The Apache Beam preprocessing job: raw logs and catalogue -> TFRecords, vocabulary, stats.

``pipelines.preprocess.run_preprocess`` runs it (``tfrec preprocess``); the modules hold
its parts: ``sources`` (reading files into numbered records), ``reading`` (the files read
in parts spread over the workers), ``rows`` (row validation), ``catalogue``, ``sequences``
(per-user splits) and ``stats``.
"""

__all__ = ["catalogue", "options", "preprocess", "reading", "rows", "sequences", "sources", "stats"]
"""The public modules (``from pipelines import *`` imports them); the job is ``preprocess.run_preprocess``."""
