"""The application layer: the ``tfrec`` command line, ``tfrec run`` and the run report.

The only part of the project that imports every layer: the core (``tfrec``), the Beam job
(``pipelines``) and serving (``serving``).
"""

__all__ = ["cli", "recommend", "report", "report_summary", "run"]
"""The public modules: ``cli.main`` is the ``tfrec`` command, ``run.run_all`` is ``tfrec run``."""
