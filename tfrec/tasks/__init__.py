"""Training objectives."""

from tfrec.tasks.retrieval import NegativeSampler, RetrievalTask, mixed_log_q

__all__ = ["NegativeSampler", "RetrievalTask", "mixed_log_q"]
