"""transip-openmm: TransIP transformer interatomic potentials for OpenMM.

``system.addForce(TransIPForce("model.pt"))`` adds a TransIP model to an OpenMM System.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["TransIPForce", "SHIPPED_MODELS", "default_model_path", "shipped_model_path", "__version__"]

#: Models shipped inside the package, by the name that ``TransIPForce`` and protocols accept:
#: ``default`` (molecules, ML/MM regions) and ``local`` (relative positions, 5 Å local
#: attention: periodic all-ML boxes).
SHIPPED_MODELS = {"default": "default.pt", "local": "local.pt"}


def shipped_model_path(name: str = "default") -> Path:
    """Path of a model shipped inside the package (``name`` a key of :data:`SHIPPED_MODELS`)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model named {name!r}; shipped: {sorted(SHIPPED_MODELS)}")
    path = Path(__file__).resolve().parent / "models" / SHIPPED_MODELS[name]
    if not path.is_file():
        raise FileNotFoundError(f"the shipped model {name!r} is missing from the installation ({path})")
    return path


def default_model_path() -> Path:
    """Path of the demo model shipped inside the package (``models/default.pt``)."""
    return shipped_model_path("default")


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not import OpenMM plugins or torch extensions.
    if name == "TransIPForce":
        from transip_openmm.force import TransIPForce

        return TransIPForce
    raise AttributeError(f"module 'transip_openmm' has no attribute {name!r}")
