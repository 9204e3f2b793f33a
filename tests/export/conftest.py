"""Fixtures of the export tests (defined in export_helpers)."""

from export_helpers import _one_thread, ckpt  # noqa: F401
