"""Seed structures from files: OMol25 ``.aselmdb`` (training molecules only) and SPICE HDF5.

OMol25 seeds keep the record's charge, multiplicity and family key, so a split by molecule
puts generated structures with the molecule they came from. Molecules the trainer holds out
(validation and test, the same molecule split as ``transip train`` with the same fractions
and seed) are never used as seeds. SPICE geometry files (no labels) hold ``conformations``
(c, n, 3) in nm and a mapped ``smiles``; the elements and atom order come from the SMILES
atom maps, the charge from its formal charges, the multiplicity is the lowest.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import Structure, closed_shell_multiplicity
from transip_openmm.units import NM_TO_ANGSTROM

logger = logging.getLogger(__name__)

_MAPPED_ATOM = re.compile(r"\[([A-Za-z][a-z]?)[^\]:]*:(\d+)\]")


@functools.lru_cache(maxsize=8)
def omol25_seeds(paths: Tuple[str, ...], val_fraction: float, test_fraction: float,
                 split_seed: int, max_atoms: int = 60) -> List[Structure]:
    """Training-split structures of OMol25 files with at most ``max_atoms`` atoms (validation/test molecules
    left out; the split is made over all structures, as the trainer makes it)."""
    from transip_openmm.training.readers import read_datasets
    from transip_openmm.training.splits import molecule_split

    for p in paths:
        if not Path(p).is_file():
            raise DataGenError(f"OMol25 seed file {p} does not exist; fix 'paths' of the omol25 system in the config")
    dataset = read_datasets(list(paths))
    split = molecule_split(dataset, val_fraction, test_fraction, split_seed)
    seeds = []
    for i in split.train:
        mol = dataset[i]
        if mol.n_atoms > max_atoms:
            continue
        atoms = Atoms(numbers=mol.numbers, positions=mol.positions)
        seeds.append(Structure(atoms, int(mol.charge), int(mol.multiplicity), mol.family))
    logger.info("OMol25 seeds: %d training structures of <= %d atoms, of %d (held out: %d validation, %d test)",
                len(seeds), max_atoms, len(dataset), len(split.val), len(split.test))
    return seeds


def mapped_smiles_elements(smiles: str) -> np.ndarray:
    """Atomic numbers (n,) in atom-map order of a fully mapped SMILES (``[O:1]([H:2])[H:3]``)."""
    found = {int(m): sym for sym, m in _MAPPED_ATOM.findall(smiles)}
    if not found or sorted(found) != list(range(1, len(found) + 1)):
        raise DataGenError("a SPICE seed's smiles is not fully atom-mapped; give a SPICE geometry file")
    return np.array([atomic_numbers[found[i].capitalize()] for i in range(1, len(found) + 1)])


@functools.lru_cache(maxsize=8)
def spice_seeds(paths: Tuple[str, ...], max_atoms: int) -> List[Structure]:
    """Every conformation of the SPICE geometry files with at most ``max_atoms`` atoms."""
    import h5py

    from transip_openmm.training.readers import smiles_formal_charge

    seeds = []
    for p in paths:
        if not Path(p).is_file():
            raise DataGenError(f"SPICE seed file {p} does not exist; fix 'paths' of the spice system in the config")
        with h5py.File(p, "r") as f:
            for name in f:
                smiles = f[name]["smiles"][()]
                smiles = smiles[0] if np.ndim(smiles) else smiles
                smiles = smiles.decode() if isinstance(smiles, bytes) else str(smiles)
                numbers = mapped_smiles_elements(smiles)
                if len(numbers) > max_atoms:
                    continue
                conformations = np.asarray(f[name]["conformations"][()], dtype=np.float64) * NM_TO_ANGSTROM
                charge = smiles_formal_charge(smiles)
                multiplicity = closed_shell_multiplicity(numbers, charge)
                family = f"gen_spice/{Path(p).stem}_{re.sub(r'[^A-Za-z0-9+-]+', '_', name).strip('_')}"
                for xyz in conformations:
                    seeds.append(Structure(Atoms(numbers=numbers, positions=xyz), charge, multiplicity, family))
    logger.info("SPICE seeds: %d conformations from %d files", len(seeds), len(paths))
    return seeds


def pick(seeds: Sequence[Structure], rng: np.random.Generator, where: str) -> Structure:
    """A random seed (a copy)."""
    if not seeds:
        raise DataGenError(f"{where}: no seed structures (all held out or too large); check the paths and max_atoms")
    chosen = seeds[int(rng.integers(len(seeds)))]
    return Structure(chosen.atoms.copy(), chosen.charge, chosen.multiplicity, chosen.family)
