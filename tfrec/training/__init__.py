"""Training: the custom loop, checkpoints and resume."""

__all__ = ["optimizers", "trainer", "warm_start"]
"""The public modules: ``trainer.train`` is the stage (``tfrec train``)."""
