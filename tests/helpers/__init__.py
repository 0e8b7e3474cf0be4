"""Helpers shared by the training-engine tests (tiny models, subprocess scripts)."""
