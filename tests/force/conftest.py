"""Fixtures of the OpenMM force tests (defined in force_helpers)."""

from force_helpers import alanine, checkpoint, generic32, generic64  # noqa: F401
