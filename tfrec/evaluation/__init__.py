"""Exact evaluation against the full catalogue, beside baselines."""

__all__ = ["baselines", "bootstrap", "comparison", "metrics", "ranking", "segments"]
"""The public modules: ``comparison.evaluate`` is the stage (``tfrec evaluate``), ``ranking.evaluate_split``
ranks one split."""
