"""Record filters applied to training data before a run: drop structures whose forces are
beyond what the model should learn from (e.g. generated close contacts deep in the repulsive
wall, where one atom feels thousands of eV/Å and would dominate the force loss).

The pass streams the records (through DataLoader workers when asked) and keeps the indices
of the accepted ones; nothing else is held in memory.
"""

from __future__ import annotations

import logging
from typing import Tuple

import numpy as np
from transip_openmm.training.dataset import LabelledDataset, Molecule, map_records

logger = logging.getLogger(__name__)


def _max_force(mol: Molecule) -> float:
    forces = np.asarray(mol.forces, dtype=np.float64)
    return float(np.sqrt((forces * forces).sum(axis=1).max()))


def max_forces(dataset: LabelledDataset, num_workers: int = 0) -> np.ndarray:
    """(n,) largest atomic force norm of each record, eV/Å."""
    return np.fromiter(map_records(dataset, _max_force, num_workers=num_workers), dtype=np.float64,
                       count=len(dataset))


def drop_large_forces(dataset: LabelledDataset, limit: float, num_workers: int = 0,
                      what: str = "training data") -> Tuple[LabelledDataset, int]:
    """``dataset`` without the records whose largest atomic force exceeds ``limit`` eV/Å, and
    how many were dropped."""
    fmax = max_forces(dataset, num_workers)
    keep = np.flatnonzero(fmax <= limit)
    dropped = len(dataset) - len(keep)
    logger.info("%s: %d of %d structures dropped for an atomic force above %.1f eV/Å (largest %.1f)", what,
                dropped, len(dataset), limit, float(fmax.max()) if len(fmax) else 0.0)
    return (dataset.subset(keep) if dropped else dataset), dropped
