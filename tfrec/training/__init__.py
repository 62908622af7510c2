"""Training: the custom loop, checkpoints and resume."""
