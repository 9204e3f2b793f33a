"""Errors of the data generator."""

from __future__ import annotations

from transip_openmm.errors import TransIPError


class DataGenError(TransIPError, ValueError):
    """A data-generation config, seed file or output folder is unusable (the message names it and the fix)."""


class LabelFailure(RuntimeError):
    """A labeller could not label one structure (e.g. its SCF did not converge).

    Not a user error: the generator drops the record, counts it and goes on.
    """
