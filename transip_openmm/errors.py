"""The project's error family.

Every error a user can cause by ordinary input (a missing or wrong-kind file, a bad YAML key,
an unsupported element, a mismatched resume) is a :class:`TransIPError`. The command line
catches this family once (``transip_openmm.cli.main``) and prints one line; anything else is a
bug and keeps its traceback. Subclasses also derive from the built-in exception they refine
(``ValueError``, ``RuntimeError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class TransIPError(Exception):
    """Base of every user-facing error: the message names the file/key/atom and the fix."""


class UsageError(TransIPError, ValueError):
    """Command-line options that do not go together (the message says which and why)."""
