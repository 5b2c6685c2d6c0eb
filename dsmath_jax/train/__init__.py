"""Optimisers, the sharded train step, checkpoints and metrics."""
