"""Training: the custom loop, checkpoints and resume."""

__all__ = ["epochs", "optimizers", "state", "text_weight", "trainer", "training_data", "warm_start"]
"""The public modules: ``trainer.train`` is the stage (``tfrec train``)."""
