"""Offline pipeline: EDF/BDF + annotations + metadata -> canonical epochs -> ArrayRecord shards."""
