"""Training objectives."""

from tfrec.tasks.retrieval import RetrievalTask, mixed_log_q

__all__ = ["RetrievalTask", "mixed_log_q"]
