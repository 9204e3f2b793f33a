"""Fixtures of the export tests (defined in export_helpers)."""

from export_helpers import ckpt  # noqa: F401
