"""Evaluation: restore a checkpoint on any topology, embed, probe, report."""
