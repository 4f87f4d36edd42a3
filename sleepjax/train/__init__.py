"""Sharded training: state, step, optimizer, checkpoints, metrics."""
