"""Per-element reference energies by least squares, and the normalisation statistics, by streaming.

Nothing here holds the dataset: records are read one at a time (by DataLoader workers
when asked) and folded into fixed-size sums. The least-squares fit ``E ≈ Σ_Z n_Z e_Z``
accumulates the normal equations AᵀA (Z × Z) and Aᵀb in float64 in a first pass and solves
them with the minimum-norm least-squares solution (equal to ``lstsq(A, b)``: A⁺ = (AᵀA)⁺Aᵀ);
a second pass gives the residual statistics. ``sample`` limits both passes to a seeded
random subset of stated size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from transip_openmm.training.dataset import LabelledDataset

from transip_openmm.model import MAX_ATOMIC_NUMBER

logger = logging.getLogger(__name__)

N_Z = MAX_ATOMIC_NUMBER + 1


@dataclass
class DataStatistics:
    """What training needs to know of its data, from one streaming fit.

    element_energies (N_Z,) float64 eV (0 for absent elements); per_atom_std eV (the
    residual per-atom std, ``sqrt(mean(r²/n))``); per_atom_mae eV (``mean(|r|/n)``, the
    references' own error); force_rms eV/Å (RMS force component, every record incl.
    force-only ones); n_energy, n_force: structures the fit and the force RMS used.
    """

    element_energies: np.ndarray
    per_atom_std: float
    per_atom_mae: float
    force_rms: float
    n_energy: int
    n_force: int


class _StatsRecords(torch.utils.data.Dataset):
    """Item i: (element counts (N_Z,) float64, energy eV, has_energy, Σ F² eV²/Å², 3·n_atoms)."""

    def __init__(self, dataset: LabelledDataset, indices: np.ndarray) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, float, bool, float, int]:
        mol = self.dataset[int(self.indices[i])]
        counts = np.bincount(np.asarray(mol.numbers, dtype=np.int64), minlength=N_Z).astype(np.float64)
        forces = np.asarray(mol.forces, dtype=np.float64)
        return counts, float(mol.energy), bool(mol.has_energy), float(np.sum(forces * forces)), 3 * mol.n_atoms


def _first(item):
    return item


def _records(dataset: LabelledDataset, indices: np.ndarray, num_workers: int
             ) -> Iterator[Tuple[np.ndarray, float, bool, float, int]]:
    if num_workers <= 0:
        source = _StatsRecords(dataset, indices)
        for i in range(len(source)):
            yield source[i]
        return
    loader = torch.utils.data.DataLoader(_StatsRecords(dataset, indices), batch_size=None, collate_fn=_first,
                                         num_workers=num_workers, prefetch_factor=64,
                                         generator=torch.Generator().manual_seed(0))  # global RNG untouched
    yield from loader


def sample_indices(n: int, sample: Optional[int], seed: int) -> np.ndarray:
    """All of ``range(n)``, or ``sample`` of them drawn without replacement with ``seed`` (sorted)."""
    if sample is None or sample >= n:
        return np.arange(n, dtype=np.int64)
    if sample < 1:
        raise ValueError(f"the statistics sample must hold at least one structure, got {sample}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False)).astype(np.int64)


def data_statistics(dataset: LabelledDataset, sample: Optional[int] = None, seed: int = 0,
                    num_workers: int = 0) -> DataStatistics:
    """Reference energies (records with ``has_energy``), residual statistics and the force RMS
    of ``dataset`` (or of ``sample`` structures of it), in two streaming passes."""
    indices = sample_indices(len(dataset), sample, seed)
    ata = np.zeros((N_Z, N_Z))
    atb = np.zeros(N_Z)
    force_sq = 0.0
    n_comp = n_energy = 0
    for counts, energy, has_energy, f_sq, n3 in _records(dataset, indices, num_workers):
        force_sq += f_sq
        n_comp += n3
        if has_energy:
            nz = np.flatnonzero(counts)
            ata[np.ix_(nz, nz)] += np.outer(counts[nz], counts[nz])
            atb[nz] += counts[nz] * energy
            n_energy += 1
    if n_energy == 0:
        raise ValueError("cannot fit reference energies: no structure with an energy in the data")
    present = np.flatnonzero(np.diag(ata) > 0)
    solution, *_ = np.linalg.lstsq(ata[np.ix_(present, present)], atb[present], rcond=None)
    refs = np.zeros(N_Z)
    refs[present] = solution
    sq = ab = 0.0
    for counts, energy, has_energy, _, _ in _records(dataset, indices, num_workers):
        if has_energy:
            n_atoms = counts.sum()
            r = energy - float(counts @ refs)
            sq += r * r / n_atoms
            ab += abs(r) / n_atoms
    stats = DataStatistics(refs, float(np.sqrt(sq / n_energy)), float(ab / n_energy),
                           float(np.sqrt(force_sq / max(n_comp, 1))), n_energy, len(indices))
    logger.info("reference energies fitted on %d structures (%d elements); residual per-atom std %.4f eV; "
                "force RMS %.4f eV/Å over %d structures", n_energy, len(present), stats.per_atom_std,
                stats.force_rms, stats.n_force)
    return stats


def fit_references(dataset: LabelledDataset) -> Tuple[np.ndarray, float, float]:
    """Fit ``E ≈ Σ_Z n_Z e_Z`` by least squares (minimum-norm where under-determined).

    Returns ``(element_energies (MAX_ATOMIC_NUMBER + 1,) eV, per_atom_std eV,
    per_atom_mae eV)``. The per-atom std treats per-atom residual energies as independent,
    so a structure of n atoms has residual variance n σ²: ``σ = sqrt(mean(r² / n))``;
    ``per_atom_mae = mean(|r| / n)`` is the energy error of the references alone (a robust
    normaliser for the energy loss). Elements absent from the data get 0.
    """
    if len(dataset) == 0:
        raise ValueError("cannot fit reference energies on an empty dataset")
    stats = data_statistics(dataset.with_energies())
    return stats.element_energies, stats.per_atom_std, stats.per_atom_mae


def fit_element_energies(dataset: LabelledDataset) -> Tuple[np.ndarray, float]:
    """Least-squares references and per-atom residual std; see :func:`fit_references`."""
    refs, sigma, _ = fit_references(dataset)
    return refs, sigma


def force_rms(dataset: LabelledDataset) -> float:
    """Root-mean-square force component (eV/Å), streamed over the records."""
    sq = sum(float(np.sum(np.square(m.forces))) for m in dataset)
    n = sum(3 * m.n_atoms for m in dataset)
    return float(np.sqrt(sq / max(n, 1)))
