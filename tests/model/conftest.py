"""Fixtures of the model tests (defined in model_helpers)."""

from model_helpers import _one_thread  # noqa: F401
