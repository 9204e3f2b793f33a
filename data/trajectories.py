"""Active learning: frames of the project's own MD runs where the model fails.

A run folder of ``transip simulate`` (or any folder with ``topology.pdb`` and a
``trajectory.dcd``/``trajectory.xtc``; ``last_good.pdb`` is added when present) is read with
mdtraj. With ``select: failures`` the frames kept are the ``window`` frames up to and
including the first one where a covalent bond of the first frame has stretched past 1.5×
its length or two atoms three or more bonds apart have come within bonding distance (1.1×
the sum of their covalent radii); a run without a failure gives none. ``select: all`` keeps
every ``every``-th frame. Relabelled by the teacher, these frames show the model the
configurations its own dynamics reach and gets wrong.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import Structure, bond_graph
from transip_openmm.units import NM_TO_ANGSTROM

logger = logging.getLogger(__name__)

BROKEN_RATIO = 1.5
NEW_BOND_FACTOR = 1.1


def first_failure(positions: np.ndarray, numbers: np.ndarray) -> Optional[int]:
    """Index of the first frame (positions (F, n, 3) Å) with a broken or new covalent bond, else None."""
    first = Atoms(numbers=numbers, positions=positions[0])
    graph = bond_graph(first)
    pairs = np.array([(i, j) for i in range(len(numbers)) for j in graph[i] if i < j]).reshape(-1, 2)
    near = [set([i, *graph[i], *(k for j in graph[i] for k in graph[j])]) for i in range(len(numbers))]
    far = np.array([(i, j) for i in range(len(numbers)) for j in range(i + 1, len(numbers))
                    if j not in near[i]]).reshape(-1, 2)
    radii = covalent_radii[numbers]
    d0 = np.linalg.norm(positions[0, pairs[:, 0]] - positions[0, pairs[:, 1]], axis=-1)
    for f in range(len(positions)):
        x = positions[f]
        if len(pairs) and np.any(np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=-1) > BROKEN_RATIO * d0):
            return f
        if len(far):
            d = np.linalg.norm(x[far[:, 0]] - x[far[:, 1]], axis=-1)
            if np.any(d < NEW_BOND_FACTOR * (radii[far[:, 0]] + radii[far[:, 1]])):
                return f
    return None


def _load(folder: Path, selection: str) -> Tuple[np.ndarray, np.ndarray]:
    import mdtraj

    topology = folder / "topology.pdb"
    if not topology.is_file():
        raise DataGenError(f"{folder}: no topology.pdb; give run folders of transip simulate in md_run.paths")
    parts = [mdtraj.load(str(t), top=str(topology)) for t in (folder / "trajectory.dcd", folder / "trajectory.xtc")
             if t.is_file()]
    if (folder / "last_good.pdb").is_file():
        parts.append(mdtraj.load(str(folder / "last_good.pdb")))
    if not parts:
        raise DataGenError(f"{folder}: no trajectory.dcd, trajectory.xtc or last_good.pdb to take frames from")
    traj = parts[0].join(parts[1:]) if len(parts) > 1 else parts[0]
    atoms = traj.topology.select(selection)
    if len(atoms) == 0:
        raise DataGenError(f"{folder}: the selection {selection!r} (md_run.atoms) matches no atom")
    traj = traj.atom_slice(atoms)
    numbers = np.array([a.element.atomic_number for a in traj.topology.atoms])
    return traj.xyz * NM_TO_ANGSTROM, numbers


@functools.lru_cache(maxsize=8)
def run_frames(paths: Tuple[str, ...], selection: str, charge: int, multiplicity: int,
               select: str, window: int, every: int) -> List[Structure]:
    """Frames of the run folders chosen as the module docstring says (at least one, else an error)."""
    if select not in ("failures", "all"):
        raise DataGenError(f"md_run.select {select!r}: use failures or all")
    frames: List[Structure] = []
    for p in paths:
        folder = Path(p)
        positions, numbers = _load(folder, selection)
        if select == "failures":
            fail = first_failure(positions, numbers)
            chosen = [] if fail is None else list(range(max(0, fail - window + 1), fail + 1))
            logger.info("%s: %s", folder, "no failure" if fail is None else f"first failure at frame {fail}")
        else:
            chosen = list(range(0, len(positions), max(1, every)))
        family = f"gen_md_run/{folder.name}"
        frames += [Structure(Atoms(numbers=numbers, positions=positions[f]), charge, multiplicity, family)
                   for f in chosen]
    if not frames:
        raise DataGenError(f"md_run: no frames selected from {list(paths)} (no failure found); use select: all")
    return frames
