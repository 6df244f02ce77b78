"""Shared machinery for every task: checkpoints (and the trainer)."""
