"""Readers: OMol25 ``.aselmdb``, extended XYZ and SPICE-style HDF5 -> :class:`MoleculeDataset`.

All readers convert to model units at read time (Å, eV, eV/Å) and validate every
record; a bad record raises :class:`~transip_openmm.training.dataset.DataError` naming
the file and the record index.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
from transip_openmm.training.dataset import DataError, Molecule, MoleculeDataset, validate_molecule
from transip_openmm.training.shards import iter_shard, omol25_family  # noqa: F401 (omol25_family re-exported)

from transip_openmm.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Accepted spellings of the total charge and the spin multiplicity in extxyz info lines.
CHARGE_KEYS = ("charge", "total_charge", "total_charge_e")
MULTIPLICITY_KEYS = ("multiplicity", "spin", "spin_multiplicity")

def read_aselmdb(path: PathLike, elements: Optional[Sequence[int]] = None) -> MoleculeDataset:
    """Read an OMol25 ASE-DB/LMDB file into memory (the records of :class:`ShardedDataset`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    mols = list(iter_shard(path))
    for mol in mols:
        validate_molecule(mol, elements)
    logger.info("read %d structures from %s", len(mols), path)
    return MoleculeDataset(mols)


def _info_int(info: Dict[str, Any], keys: Sequence[str], default: int, where: str) -> int:
    found = [k for k in keys if k in info]
    if not found:
        return default
    values = {int(np.asarray(info[k]).item()) for k in found}
    if len(values) > 1:
        raise DataError(f"{where}: conflicting values for {found}: {sorted(values)}")
    return values.pop()


def read_extxyz(
    path: PathLike,
    elements: Optional[Sequence[int]] = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    family: Optional[str] = None,
) -> MoleculeDataset:
    """Read an extended XYZ file: energy (eV), forces (eV/Å), charge/multiplicity from info.

    Charge keys: ``charge``/``total_charge``/``total_charge_e`` (default 0);
    multiplicity keys: ``multiplicity``/``spin``/``spin_multiplicity`` (default 1).
    The family key is ``family`` when given, else the file stem (one file = one family,
    e.g. an MD trajectory of one molecule), unless the info line has ``family``.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    frames = ase.io.read(str(path), index=":", format="extxyz")
    mols = []
    for index, atoms in enumerate(frames):
        where = f"{path}, record {index}"
        info = dict(atoms.info)
        calc_results = dict(atoms.calc.results) if atoms.calc is not None else {}
        energy = calc_results.get(energy_key, info.get(energy_key))
        forces = calc_results.get(forces_key, atoms.arrays.get(forces_key))
        if energy is None:
            raise DataError(f"{where}: no energy (key {energy_key!r})")
        if forces is None:
            raise DataError(f"{where}: no forces (key {forces_key!r})")
        mol = Molecule(
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64),
            energy=float(np.asarray(energy).item()),
            forces=np.asarray(forces, dtype=np.float64),
            charge=_info_int(info, CHARGE_KEYS, 0, where),
            multiplicity=_info_int(info, MULTIPLICITY_KEYS, 1, where),
            family=str(info.get("family", family or path.stem)),
            source=str(path),
            index=index,
        )
        validate_molecule(mol, elements)
        mols.append(mol)
    logger.info("read %d structures from %s", len(mols), path)
    return MoleculeDataset(mols)


_SMILES_CHARGE = re.compile(r"\[[^\]]*?([+-]+)(\d*)(?::\d+)?\]")


def smiles_formal_charge(smiles: str) -> int:
    """Total formal charge of a (mapped) SMILES string, from its bracket atoms."""
    total = 0
    for sign, count in _SMILES_CHARGE.findall(smiles):
        unit = 1 if sign[0] == "+" else -1
        total += unit * (int(count) if count else len(sign))
    return total


def read_spice_hdf5(path: PathLike, elements: Optional[Sequence[int]] = None) -> MoleculeDataset:
    """Read a SPICE-style HDF5 file (one group per molecule; Hartree and bohr).

    Each group needs ``atomic_numbers`` (n,), ``conformations`` (c, n, 3) bohr,
    ``dft_total_energy`` (c,) Hartree and ``dft_total_gradient`` (c, n, 3) Hartree/bohr
    (forces are minus the gradient). The total charge comes from the formal charges of
    the group's ``smiles``; the multiplicity is 1 for an even electron count, else 2
    (SPICE is closed shell). The family key is the group name. Record indices in error
    messages count conformations over the whole file, with the group named too.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    mols = []
    index = 0
    with h5py.File(path, "r") as f:
        for name in f:
            group = f[name]
            missing = [k for k in ("atomic_numbers", "conformations", "dft_total_energy") if k not in group]
            if missing:
                raise DataError(f"{path}, group {name!r} (record {index}): lacks {missing}")
            numbers = np.asarray(group["atomic_numbers"][()], dtype=np.int64)
            coords = np.asarray(group["conformations"][()], dtype=np.float64) * BOHR_TO_ANGSTROM
            energies = np.asarray(group["dft_total_energy"][()], dtype=np.float64) * HARTREE_TO_EV
            if "dft_total_gradient" in group:
                forces_all = -np.asarray(group["dft_total_gradient"][()], dtype=np.float64)
                forces_all = forces_all * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
            else:
                forces_all = None
            charge = 0
            if "smiles" in group:
                smiles = group["smiles"][()]
                smiles = smiles[0] if np.ndim(smiles) else smiles
                charge = smiles_formal_charge(smiles.decode() if isinstance(smiles, bytes) else str(smiles))
            n_electrons = int(numbers.sum()) - charge
            multiplicity = 1 if n_electrons % 2 == 0 else 2
            for c in range(coords.shape[0]):
                mol = Molecule(
                    numbers=numbers,
                    positions=coords[c],
                    energy=float(energies[c]) if c < energies.shape[0] else float("nan"),
                    forces=None if forces_all is None else forces_all[c],
                    charge=charge,
                    multiplicity=multiplicity,
                    family=str(name),
                    source=f"{path} group {name!r}",
                    index=index,
                )
                validate_molecule(mol, elements)
                mols.append(mol)
                index += 1
    logger.info("read %d structures from %s", len(mols), path)
    return MoleculeDataset(mols)


def read_dataset(path: PathLike, elements: Optional[Sequence[int]] = None) -> MoleculeDataset:
    """Read any supported file, chosen by suffix (.aselmdb, .xyz/.extxyz, .h5/.hdf5).

    A missing, unreadable or empty file raises :class:`DataError` naming it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".aselmdb": read_aselmdb, ".xyz": read_extxyz, ".extxyz": read_extxyz,
               ".h5": read_spice_hdf5, ".hdf5": read_spice_hdf5}
    if suffix not in readers:
        raise DataError(f"{path}: unknown data format {suffix!r} (expected .aselmdb, .xyz, .extxyz, .hdf5)")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        dataset = readers[suffix](path, elements)
    except DataError:
        raise
    except Exception as exc:  # ase, lmdb and h5py raise many types for a malformed file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"cannot read data file {path} as {suffix} ({type(exc).__name__}: {detail})") from exc
    if len(dataset) == 0:
        raise DataError(f"data file {path} holds no structures")
    return dataset


def read_datasets(paths: Sequence[PathLike], elements: Optional[Sequence[int]] = None) -> MoleculeDataset:
    """Read and concatenate several files."""
    return MoleculeDataset.concatenate(read_dataset(p, elements) for p in paths)
