"""Read a structure file into an ``openmm.app.Topology`` (and positions) for export.

PDB and PDBx/mmCIF through ``openmm.app``; XYZ/extxyz and anything else ASE reads through
``ase.io`` (one residue, no bonds). Positions are returned in nm, shape (n_atoms, 3).
A file that is missing, unreadable, empty or has non-finite coordinates raises
:class:`~transip_openmm.system_spec.SystemSpecError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np
import openmm.app as app

from transip_openmm.system_spec import SystemSpecError
from transip_openmm.units import ANGSTROM_TO_NM


def load_structure(path: Union[str, Path]) -> Tuple[app.Topology, np.ndarray]:
    """(topology, positions (n, 3) nm) of a PDB, mmCIF, XYZ or other ASE-readable file."""
    path = Path(path)
    if not path.is_file():
        raise SystemSpecError(f"structure file {path} does not exist")
    try:
        topology, positions = _read(path)
    except Exception as exc:  # openmm and ase raise many types for a malformed file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemSpecError(f"cannot read structure file {path} ({detail}); "
                              "give a PDB, mmCIF or XYZ file") from exc
    if topology.getNumAtoms() == 0:
        raise SystemSpecError(f"structure file {path} holds no atoms")
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise SystemSpecError(f"structure file {path}: atom(s) {bad[:10].tolist()} have non-finite (NaN or inf) "
                              "coordinates")
    return topology, positions


def _read(path: Path) -> Tuple[app.Topology, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".pdb":
        pdb = app.PDBFile(str(path))
        return pdb.topology, np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(_nm()))
    if suffix in (".cif", ".pdbx"):
        cif = app.PDBxFile(str(path))
        return cif.topology, np.asarray(cif.getPositions(asNumpy=True).value_in_unit(_nm()))
    import ase.io

    atoms = ase.io.read(str(path))
    return topology_from_numbers(atoms.get_atomic_numbers()), atoms.get_positions() * ANGSTROM_TO_NM


def topology_from_numbers(atomic_numbers, residue_name: str = "MOL") -> app.Topology:
    """A one-residue topology with one atom per atomic number (no bonds)."""
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue(residue_name, chain)
    for i, z in enumerate(atomic_numbers):
        element = app.Element.getByAtomicNumber(int(z))
        topology.addAtom(f"{element.symbol}{i + 1}", element, residue)
    return topology


def _nm():
    import openmm.unit as u

    return u.nanometer
