"""transip-openmm: TransIP transformer interatomic potentials for OpenMM.

``system.addForce(TransIPForce("model.pt"))`` adds a TransIP model to an OpenMM System.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["TransIPForce", "default_model_path", "__version__"]


def default_model_path() -> Path:
    """Path of the demo model shipped inside the package (``models/default.pt``)."""
    path = Path(__file__).resolve().parent / "models" / "default.pt"
    if not path.is_file():
        raise FileNotFoundError(f"the shipped default model is missing from the installation ({path})")
    return path


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not import OpenMM plugins or torch extensions.
    if name == "TransIPForce":
        from transip_openmm.force import TransIPForce

        return TransIPForce
    raise AttributeError(f"module 'transip_openmm' has no attribute {name!r}")
