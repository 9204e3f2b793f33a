"""Per-element reference energies by least squares, and the per-atom energy scale."""

from __future__ import annotations

import logging
from typing import Tuple

import numpy as np
from transip_openmm.training.dataset import MoleculeDataset

from transip_openmm.model import MAX_ATOMIC_NUMBER

logger = logging.getLogger(__name__)


def composition_matrix(dataset: MoleculeDataset) -> np.ndarray:
    """(M, MAX_ATOMIC_NUMBER + 1) count of each element in each structure."""
    counts = np.zeros((len(dataset), MAX_ATOMIC_NUMBER + 1), dtype=np.float64)
    for i, mol in enumerate(dataset):
        np.add.at(counts[i], mol.numbers, 1.0)
    return counts


def fit_element_energies(dataset: MoleculeDataset) -> Tuple[np.ndarray, float]:
    """Least-squares references and per-atom residual std; see :func:`fit_references`."""
    refs, sigma, _ = fit_references(dataset)
    return refs, sigma


def fit_references(dataset: MoleculeDataset) -> Tuple[np.ndarray, float, float]:
    """Fit ``E ≈ Σ_Z n_Z e_Z`` by least squares (minimum-norm where under-determined).

    Returns ``(element_energies (MAX_ATOMIC_NUMBER + 1,) eV, per_atom_std eV,
    per_atom_mae eV)``. The per-atom std treats per-atom residual energies as independent,
    so a structure of n atoms has residual variance n σ²: ``σ = sqrt(mean(r² / n))``;
    ``per_atom_mae = mean(|r| / n)`` is the energy error of the references alone (a robust
    normaliser for the energy loss). Elements absent from the data get 0.
    """
    if len(dataset) == 0:
        raise ValueError("cannot fit reference energies on an empty dataset")
    counts = composition_matrix(dataset)
    energies = np.array([m.energy for m in dataset], dtype=np.float64)
    present = np.flatnonzero(counts.sum(axis=0) > 0)
    solution, *_ = np.linalg.lstsq(counts[:, present], energies, rcond=None)
    refs = np.zeros(MAX_ATOMIC_NUMBER + 1, dtype=np.float64)
    refs[present] = solution
    residual = energies - counts @ refs
    n_atoms = counts.sum(axis=1)
    sigma = float(np.sqrt(np.mean(residual**2 / n_atoms)))
    logger.info(
        "reference energies fitted on %d structures (%d elements); residual per-atom std %.4f eV",
        len(dataset), len(present), sigma,
    )
    per_atom_mae = float(np.mean(np.abs(residual) / n_atoms))
    return refs, sigma, per_atom_mae


def force_rms(dataset: MoleculeDataset) -> float:
    """Root-mean-square force component (eV/Å)."""
    sq = sum(float(np.sum(m.forces**2)) for m in dataset)
    n = sum(3 * m.n_atoms for m in dataset)
    return float(np.sqrt(sq / max(n, 1)))
