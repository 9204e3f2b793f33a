"""Record filters applied to training data before a run: drop structures whose forces are
beyond what the model should learn from (e.g. generated close contacts deep in the repulsive
wall, where one atom feels thousands of eV/Å and would dominate the force loss).

The pass streams the records (through DataLoader workers when asked) and keeps the indices
of the accepted ones; nothing else is held in memory.
"""

from __future__ import annotations

import logging
from typing import Iterator, Tuple

import numpy as np
import torch
from transip_openmm.training.dataset import LabelledDataset

logger = logging.getLogger(__name__)


class _MaxForces(torch.utils.data.Dataset):
    """Item i: the largest atomic force norm (eV/Å) of record i."""

    def __init__(self, dataset: LabelledDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> float:
        forces = np.asarray(self.dataset[i].forces, dtype=np.float64)
        return float(np.sqrt((forces * forces).sum(axis=1).max()))


def _identity(item):
    return item


def max_forces(dataset: LabelledDataset, num_workers: int = 0) -> np.ndarray:
    """(n,) largest atomic force norm of each record, eV/Å."""
    source = _MaxForces(dataset)
    if num_workers <= 0:
        return np.array([source[i] for i in range(len(source))], dtype=np.float64)
    loader = torch.utils.data.DataLoader(source, batch_size=None, collate_fn=_identity, num_workers=num_workers,
                                         prefetch_factor=64, generator=torch.Generator().manual_seed(0))
    return np.fromiter(_floats(loader), dtype=np.float64, count=len(source))


def _floats(loader) -> Iterator[float]:
    for value in loader:
        yield float(value)


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
