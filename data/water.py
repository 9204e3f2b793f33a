"""Water clusters, spherical cut-outs of a water box, and ion–water clusters.

The water comes from OpenMM's ``Modeller.addSolvent`` (its pre-equilibrated TIP3P box,
about 1,070 molecules in a 3.2 nm cube); a cluster is cut out of it as whole molecules
around a random point well inside the box, so its geometry is a piece of liquid water.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np
from ase import Atoms

from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import Structure, rotation_taking
from transip_openmm.units import NM_TO_ANGSTROM

#: ion -> (atomic number, charge e, first-shell ion–O distance Å, a literature-typical value)
IONS: Dict[str, Tuple[int, int, float]] = {
    "Li+": (3, 1, 1.95), "Na+": (11, 1, 2.40), "K+": (19, 1, 2.80), "Mg2+": (12, 2, 2.08),
    "Ca2+": (20, 2, 2.42), "F-": (9, -1, 2.65), "Cl-": (17, -1, 3.15), "Br-": (35, -1, 3.35),
    "I-": (53, -1, 3.60),
}
BOX_NM = 3.2
#: the largest cluster radius (Å) the box allows around a centre kept this far from its faces
MAX_RADIUS = 10.0


@functools.lru_cache(maxsize=1)
def water_box() -> np.ndarray:
    """(n_molecules, 3, 3) positions Å of a TIP3P box (O, H, H per molecule) made by Modeller."""
    import openmm.unit as unit
    from openmm import Vec3
    from openmm.app import ForceField, Modeller, Topology

    modeller = Modeller(Topology(), [])
    box = Vec3(BOX_NM, BOX_NM, BOX_NM) * unit.nanometer
    modeller.addSolvent(ForceField("amber14/tip3p.xml"), model="tip3p", boxSize=box)
    xyz = np.asarray(modeller.positions.value_in_unit(unit.nanometer)) * NM_TO_ANGSTROM
    residues = [[a.index for a in r.atoms()] for r in modeller.topology.residues()]
    return np.stack([xyz[idx] for idx in residues])


def _centre(rng: np.random.Generator) -> np.ndarray:
    oxygens = water_box()[:, 0]
    return rng.uniform(oxygens.min(axis=0) + MAX_RADIUS, oxygens.max(axis=0) - MAX_RADIUS)


def _water_atoms(molecules: np.ndarray) -> Atoms:
    n = len(molecules)
    return Atoms(numbers=np.tile([8, 1, 1], n), positions=molecules.reshape(-1, 3))


def water_cluster(n_molecules: int, rng: np.random.Generator) -> Structure:
    """The ``n_molecules`` waters nearest to a random point of the box (a compact cluster)."""
    if not 1 <= n_molecules <= 128:
        raise DataGenError(f"water cluster size {n_molecules} outside 1..128; fix n_molecules in the config")
    box = water_box()
    order = np.argsort(np.linalg.norm(box[:, 0] - _centre(rng), axis=1))
    atoms = _water_atoms(box[order[:n_molecules]])
    return Structure(atoms, 0, 1, f"gen_water/cluster_{n_molecules}")


def water_cutout(radius: float, rng: np.random.Generator) -> Structure:
    """Every whole water whose O lies within ``radius`` Å of a random point of the box."""
    if not 2.0 <= radius <= MAX_RADIUS:
        raise DataGenError(f"water cut-out radius {radius} Å outside 2..{MAX_RADIUS}; fix radius in the config")
    box = water_box()
    distance = np.linalg.norm(box[:, 0] - _centre(rng), axis=1)
    keep = distance <= max(radius, float(np.min(distance)))  # at least one molecule
    atoms = _water_atoms(box[keep])
    return Structure(atoms, 0, 1, f"gen_water/cutout_{int(keep.sum())}")


def ion_water_cluster(ion: str, n_waters: int, rng: np.random.Generator) -> Structure:
    """One ion with its ``n_waters`` nearest waters cut out of the box around it.

    Waters closer to the ion than its first-shell distance minus 0.3 Å are removed; waters
    within 1.3× that distance are turned about their O so that a cation sees the O lone pairs
    (H away) and an anion one O–H bond (H towards it).
    """
    if ion not in IONS:
        raise DataGenError(f"unknown ion {ion!r} in the config; known: {', '.join(IONS)}")
    z, charge, shell = IONS[ion]
    box = water_box()
    centre = _centre(rng)
    clear = np.linalg.norm(box - centre, axis=2).min(axis=1) > shell - 0.3
    candidates = box[clear]
    order = np.argsort(np.linalg.norm(candidates[:, 0] - centre, axis=1))
    waters = candidates[order[:n_waters]].copy()
    for w in waters:
        to_ion = centre - w[0]
        if np.linalg.norm(to_ion) > 1.3 * shell:
            continue
        if charge > 0:  # bisector of the H atoms points away from the cation
            current = (w[1] + w[2]) / 2 - w[0]
            target = -to_ion
        else:  # the first O–H bond points at the anion
            current = w[1] - w[0]
            target = to_ion
        rot = rotation_taking(current, target)
        w[:] = w[0] + (w - w[0]) @ rot.T
    atoms = _water_atoms(waters) + Atoms(numbers=[z], positions=[centre])
    return Structure(atoms, charge, 1, f"gen_ion_water/{ion}_{n_waters}w")
