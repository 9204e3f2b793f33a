"""Carbonate electrolyte clusters: Li⁺ or Na⁺ with EC, PC, DMC or EMC and PF₆⁻ / BF₄⁻.

The cation sits at the origin; an anion (optional) is placed with one F at the cation–F
contact distance; the solvent molecules (rigid copies of the shipped seeds in ``inputs/``)
are placed with their carbonyl O at the cation–O distance, pointing at the cation, in
random directions without clashes. The teacher MD then relaxes the cluster.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Dict, List, Optional

import numpy as np
from ase import Atoms

from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import (
    Structure, bond_graph, concatenate, min_distance, random_rotation, random_unit_vector, rotation_taking,
)

SOLVENTS = ("EC", "PC", "DMC", "EMC")
#: cation -> (atomic number, cation–O(carbonyl) distance Å, cation–F distance Å)
CATIONS: Dict[str, tuple] = {"Li+": (3, 1.95, 1.85), "Na+": (11, 2.35, 2.25)}
ANIONS = ("PF6-", "BF4-")
#: smallest distance (Å) allowed between atoms of different molecules when placing them
CLASH = 1.9


@functools.lru_cache(maxsize=None)
def solvent(name: str) -> Atoms:
    """A shipped solvent molecule (positions Å, centred)."""
    import ase.io

    if name not in SOLVENTS:
        raise DataGenError(f"unknown solvent {name!r} in the config; known: {', '.join(SOLVENTS)}")
    with resources.as_file(resources.files("transip_openmm.data") / "inputs" / f"{name}.xyz") as path:
        return ase.io.read(str(path), format="extxyz")


def anion(name: str) -> Atoms:
    """PF₆⁻ (octahedral, P–F 1.60 Å) or BF₄⁻ (tetrahedral, B–F 1.40 Å), centre at the origin."""
    if name == "PF6-":
        dirs = np.vstack([np.eye(3), -np.eye(3)])
        return Atoms(numbers=[15] + [9] * 6, positions=np.vstack([[0, 0, 0], 1.60 * dirs]))
    if name == "BF4-":
        dirs = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
        return Atoms(numbers=[5] + [9] * 4, positions=np.vstack([[0, 0, 0], 1.40 * dirs]))
    raise DataGenError(f"unknown anion {name!r} in the config; known: {', '.join(ANIONS)} or none")


def carbonyl_oxygen(mol: Atoms) -> int:
    """Index of the O bonded to one atom only (the C=O oxygen of a carbonate)."""
    graph = bond_graph(mol)
    for i, z in enumerate(mol.numbers):
        if z == 8 and len(graph[i]) == 1:
            return i
    raise DataGenError("a carbonate seed has no carbonyl O; check the files in data/inputs")


def _place(fragment: Atoms, contact: int, distance: float, placed: List[Atoms],
           rng: np.random.Generator, tries: int = 200) -> Atoms:
    """Copy of ``fragment`` with atom ``contact`` at ``distance`` Å from the origin, pointing at it,
    the rest of the fragment outward, in a random direction that clashes with nothing placed."""
    others = np.vstack([p.positions for p in placed]) if placed else np.zeros((0, 3))
    pos0 = fragment.positions - fragment.positions.mean(axis=0)
    outward = pos0.mean(axis=0) - pos0[contact]  # contact atom -> centre of the fragment
    for _ in range(tries):
        direction = random_unit_vector(rng)
        rot = rotation_taking(outward if np.linalg.norm(outward) > 1e-6 else direction, direction)
        angle = rng.uniform(0, 2 * np.pi)
        k = np.array([[0, -direction[2], direction[1]], [direction[2], 0, -direction[0]],
                      [-direction[1], direction[0], 0]])
        spin = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        pos = (pos0 - pos0[contact]) @ rot.T @ spin.T + distance * direction
        rest = np.delete(pos, contact, axis=0)  # the contact atom touches the cation (others[0]) by design
        if min_distance(rest, others) > CLASH and min_distance(pos[contact:contact + 1], others[1:]) > CLASH:
            return Atoms(numbers=fragment.numbers, positions=pos)
    raise DataGenError(f"could not place molecule {len(placed)} of an electrolyte cluster without clashes; "
                       "use fewer solvent molecules (n_solvent in the config)")


def electrolyte_cluster(cation: str, solvents: List[str], anion_name: Optional[str],
                        rng: np.random.Generator) -> Structure:
    """Cation + optional anion + solvent molecules; charge +1 (free cation) or 0 (ion pair)."""
    if cation not in CATIONS:
        raise DataGenError(f"unknown cation {cation!r} in the config; known: {', '.join(CATIONS)}")
    z, d_o, d_f = CATIONS[cation]
    placed = [Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])]
    charge = 1
    if anion_name is not None:
        ion = anion(anion_name)
        ion.positions = ion.positions @ random_rotation(rng).T
        placed.append(_place(ion, 1, d_f, placed, rng))
        charge = 0
    for name in solvents:
        mol = solvent(name)
        placed.append(_place(mol, carbonyl_oxygen(mol), d_o, placed, rng))
    counts = "".join(f"{s}{solvents.count(s)}" for s in sorted(set(solvents)))
    family = f"gen_electrolyte/{cation}_{counts}" + (f"_{anion_name}" if anion_name else "")
    return Structure(concatenate(placed), charge, 1, family)
