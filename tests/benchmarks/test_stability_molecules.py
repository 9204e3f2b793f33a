"""Held-out molecule screen of ``benchmarks/stability.py``: topology bonds and the intact verdict."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import stability  # noqa: E402

from transip_openmm.simulations.analysis import new_bond_pairs  # noqa: E402
from transip_openmm.training.dataset import Molecule  # noqa: E402


def _bond_elements(topology) -> Counter:
    return Counter("-".join(sorted((a.element.symbol, b.element.symbol))) for a, b in topology.bonds())


def test_topology_bonds_of_ethanol_are_its_chemical_bonds() -> None:
    atoms = molecule("CH3CH2OH")
    top = stability.molecule_topology(atoms.numbers, atoms.positions / 10.0)
    assert _bond_elements(top) == Counter({"C-H": 5, "C-C": 1, "C-O": 1, "H-O": 1})
    degree = Counter(i for a, b in top.bonds() for i in (a.index, b.index))
    assert all(degree[i] == 1 for i, z in enumerate(atoms.numbers) if z == 1)


def test_stretched_bond_of_a_distorted_input_stays_a_bond_and_input_has_no_new_bond() -> None:
    atoms = molecule("CH3OH")
    x = atoms.positions.copy()
    c = 0
    h = next(i for i, z in enumerate(atoms.numbers) if z == 1 and np.linalg.norm(x[i] - x[c]) < 1.2)
    x[h] = x[c] + (x[h] - x[c]) * 1.15  # a C-H of 1.25 Å: what OMol25's distorted conformers hold
    top = stability.molecule_topology(atoms.numbers, x / 10.0)
    pairs = np.array([[a.index, b.index] for a, b in top.bonds()])
    assert sorted([c, h]) in pairs.tolist()
    assert len(new_bond_pairs(x / 10.0, atoms.numbers, pairs)) == 0
    with pytest.raises(ValueError):
        stability.molecule_topology(atoms.numbers, x / 10.0, factor=1.0)


def _methanol(positions: np.ndarray) -> Molecule:
    numbers = molecule("CH3OH").numbers.astype(np.int64)
    return Molecule(numbers=numbers, positions=positions, energy=0.0, forces=np.zeros_like(positions),
                    family="test/CH3OH")


def test_methanol_is_intact_and_a_pulled_off_hydrogen_is_not() -> None:
    """Shipped ``local`` model, 0.1 ps each: the relaxed input stays intact; an H pulled to 1.6 Å
    from its carbon (no bond in the topology) comes back, which is a bond the topology lacks."""
    x = molecule("CH3OH").positions.copy()
    result = stability.screen_molecule("local", _methanol(x), time_ps=0.1, seed=1)["row"]
    assert result["intact"] and result["n_bonds"] == 5 and result["formula"] == "CH4O"
    assert result["broken_at_ps"] is None and result["new_bond_at_ps"] is None

    h = next(i for i in range(1, len(x)) if np.linalg.norm(x[i] - x[0]) < 1.2 and molecule("CH3OH").numbers[i] == 1)
    x[h] = x[0] + (x[h] - x[0]) / np.linalg.norm(x[h] - x[0]) * 1.6
    pulled = stability.screen_molecule("local", _methanol(x), time_ps=0.1, seed=1)["row"]
    assert pulled["n_bonds"] == 4
    assert not pulled["intact"]
    assert pulled["new_bond_at_ps"] is not None and f"MOL:H{h + 1}" in pulled["new_bond"]
