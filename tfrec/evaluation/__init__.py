"""Exact evaluation against the full catalogue, beside baselines."""
