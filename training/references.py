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
from typing import Iterator, Mapping, Optional, Tuple

import numpy as np
from transip_openmm.training.dataset import LabelledDataset, Molecule, map_records

from transip_openmm.model import MAX_ATOMIC_NUMBER

logger = logging.getLogger(__name__)

N_Z = MAX_ATOMIC_NUMBER + 1


@dataclass
class DataStatistics:
    """What training needs to know of its data, from one streaming fit.

    element_energies (N_Z,) float64 eV (0 for absent elements), or (n_levels, N_Z) when fitted
    per level of theory (multi-fidelity: each level its own references, never mixed);
    per_atom_std eV (the residual per-atom std, ``sqrt(mean(r²/n))``, every level with its own
    references); per_atom_mae eV (``mean(|r|/n)``, the references' own error); force_rms
    eV/Å (RMS force component, every record incl. force-only ones); n_energy, n_force:
    structures the fit and the force RMS used. With several levels the residual statistics
    and the force RMS are the default level's (head 0): the losses are scaled to the level the
    model is selected and exported for.
    """

    element_energies: np.ndarray
    per_atom_std: float
    per_atom_mae: float
    force_rms: float
    n_energy: int
    n_force: int


StatsItem = Tuple[np.ndarray, float, bool, float, int, str]


def _stats_item(mol: Molecule) -> StatsItem:
    """(element counts (N_Z,) float64, energy eV, has_energy, Σ F² eV²/Å², 3·n_atoms, level of theory)."""
    counts = np.bincount(np.asarray(mol.numbers, dtype=np.int64), minlength=N_Z).astype(np.float64)
    forces = np.asarray(mol.forces, dtype=np.float64)
    return (counts, float(mol.energy), bool(mol.has_energy), float(np.sum(forces * forces)), 3 * mol.n_atoms,
            mol.level_of_theory)


def _records(dataset: LabelledDataset, indices: np.ndarray, num_workers: int) -> Iterator[StatsItem]:
    return map_records(dataset, _stats_item, indices, num_workers)


def sample_indices(n: int, sample: Optional[int], seed: int) -> np.ndarray:
    """All of ``range(n)``, or ``sample`` of them drawn without replacement with ``seed`` (sorted)."""
    if sample is None or sample >= n:
        return np.arange(n, dtype=np.int64)
    if sample < 1:
        raise ValueError(f"the statistics sample must hold at least one structure, got {sample}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(sample), replace=False)).astype(np.int64)


def data_statistics(dataset: LabelledDataset, sample: Optional[int] = None, seed: int = 0,
                    num_workers: int = 0, levels: Optional[Mapping[str, int]] = None) -> DataStatistics:
    """Reference energies (records with ``has_energy``), residual statistics and the force RMS
    of ``dataset`` (or of ``sample`` structures of it), in two streaming passes.

    ``levels`` maps each record's ``level_of_theory`` to an energy head: one least-squares fit
    per head (element_energies (n_heads, N_Z)); None: one fit over every record (N_Z,)."""
    n_heads = 1 if levels is None else max(levels.values()) + 1
    indices = sample_indices(len(dataset), sample, seed)
    ata = np.zeros((n_heads, N_Z, N_Z))
    atb = np.zeros((n_heads, N_Z))
    force_sq = np.zeros(n_heads)
    n_comp = np.zeros(n_heads, np.int64)
    n_energy = np.zeros(n_heads, np.int64)
    for counts, energy, has_energy, f_sq, n3, level in _records(dataset, indices, num_workers):
        head = _head(levels, level)
        force_sq[head] += f_sq
        n_comp[head] += n3
        if has_energy:
            nz = np.flatnonzero(counts)
            ata[head][np.ix_(nz, nz)] += np.outer(counts[nz], counts[nz])
            atb[head, nz] += counts[nz] * energy
            n_energy[head] += 1
    if n_energy.sum() == 0:
        raise ValueError("cannot fit reference energies: no structure with an energy in the data")
    refs = np.zeros((n_heads, N_Z))
    for head in range(n_heads):
        present = np.flatnonzero(np.diag(ata[head]) > 0)
        if present.size:
            refs[head, present], *_ = np.linalg.lstsq(ata[head][np.ix_(present, present)], atb[head, present],
                                                      rcond=None)
    sq = np.zeros(n_heads)
    ab = np.zeros(n_heads)
    for counts, energy, has_energy, _, _, level in _records(dataset, indices, num_workers):
        if has_energy:
            head = _head(levels, level)
            n_atoms = counts.sum()
            r = energy - float(counts @ refs[head])
            sq[head] += r * r / n_atoms
            ab[head] += abs(r) / n_atoms
    total = int(n_energy.sum())
    main = 0 if n_energy[0] > 0 else int(np.argmax(n_energy))  # the default level's, where it has energies
    stats = DataStatistics(refs[0] if levels is None else refs, float(np.sqrt(sq[main] / n_energy[main])),
                           float(ab[main] / n_energy[main]), float(np.sqrt(force_sq[0] / max(n_comp[0], 1))),
                           total, len(indices))
    logger.info("reference energies fitted on %s structures (%s); residual per-atom std %.4f eV; "
                "force RMS %.4f eV/Å over %d structures", "+".join(str(int(n)) for n in n_energy),
                "one set" if levels is None else f"one set per level, {n_heads} levels",
                stats.per_atom_std, stats.force_rms, stats.n_force)
    return stats


def _head(levels: Optional[Mapping[str, int]], level: str) -> int:
    return 0 if levels is None else levels[level]


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
