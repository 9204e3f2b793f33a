"""A structure to sample from: atoms with total charge, multiplicity and family.

Also the small geometry helpers the builders and samplers share: covalent bond graph,
fragments, random rotations, rigid placement without clashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from transip_openmm.data.errors import DataGenError


@dataclass
class Structure:
    """atoms (positions Å); charge e; multiplicity 2S+1; family (``subset/name``, the split key)."""

    atoms: Atoms
    charge: int
    multiplicity: int
    family: str

    def __post_init__(self) -> None:
        check_charge_multiplicity(self.atoms.numbers, self.charge, self.multiplicity, self.family)


def check_charge_multiplicity(numbers: Sequence[int], charge: int, multiplicity: int, where: str) -> None:
    """Raise unless the electron count is positive and its parity fits the multiplicity.

    n_electrons = ΣZ − charge; 2S = multiplicity − 1 must be ≤ n_electrons and have its parity.
    """
    n_electrons = int(np.sum(numbers)) - int(charge)
    unpaired = int(multiplicity) - 1
    if multiplicity < 1 or n_electrons < 1 or unpaired > n_electrons or (n_electrons - unpaired) % 2:
        raise DataGenError(
            f"{where}: charge {charge} and multiplicity {multiplicity} do not fit {n_electrons} electrons "
            "(an even electron count needs an odd multiplicity and vice versa)"
        )


def closed_shell_multiplicity(numbers: Sequence[int], charge: int) -> int:
    """1 for an even electron count, 2 for an odd one (the lowest spin state)."""
    return 1 if (int(np.sum(numbers)) - int(charge)) % 2 == 0 else 2


def bond_graph(atoms: Atoms, scale: float = 1.2) -> List[List[int]]:
    """Neighbour lists of the covalent graph: i–j bonded if r_ij < scale·(r_cov,i + r_cov,j)."""
    radii = covalent_radii[atoms.numbers]
    d = np.linalg.norm(atoms.positions[:, None, :] - atoms.positions[None, :, :], axis=-1)
    bonded = (d < scale * (radii[:, None] + radii[None, :])) & ~np.eye(len(atoms), dtype=bool)
    return [list(np.flatnonzero(row)) for row in bonded]


def fragment_of(graph: List[List[int]], start: int, blocked: Optional[int] = None) -> List[int]:
    """Atoms reachable from ``start`` without passing through ``blocked`` (sorted)."""
    seen = {start}
    stack = [start]
    while stack:
        i = stack.pop()
        for j in graph[i]:
            if j != blocked and j not in seen:
                seen.add(j)
                stack.append(j)
    return sorted(seen)


def molecules(atoms: Atoms) -> List[List[int]]:
    """Connected components of the covalent graph (each a sorted list of atom indices)."""
    graph = bond_graph(atoms)
    left = set(range(len(atoms)))
    parts = []
    while left:
        part = fragment_of(graph, min(left))
        parts.append(part)
        left -= set(part)
    return parts


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform (Haar) random rotation matrix (3, 3) from a normalised random quaternion."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def random_unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def rotation_taking(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) turning unit vector ``a`` onto unit vector ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-8:
        if c > 0:
            return np.eye(3)
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        perp /= np.linalg.norm(perp)
        return 2.0 * np.outer(perp, perp) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def min_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance (Å) between two point sets (n, 3) and (m, 3)."""
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    return float(np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)))


def concatenate(parts: Sequence[Atoms]) -> Atoms:
    """One non-periodic Atoms object from several."""
    numbers = np.concatenate([p.numbers for p in parts])
    positions = np.concatenate([p.positions for p in parts])
    return Atoms(numbers=numbers, positions=positions)
