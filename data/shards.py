"""Output: ``.aselmdb`` shards in the OMol25 layout and the run manifest.

Each record is an ASE-DB row: numbers and positions (Å), a single-point calculator with
energy (eV) and forces (eV/Å), and ``row.data`` with ``source``, ``data_id``, ``charge``,
``spin`` (the multiplicity), ``num_atoms`` (as OMol25) plus ``family``, ``sampling``,
``job``, ``level_of_theory``, ``teacher``, ``task`` and ``config_sha256``. The training
readers read it as they read OMol25 (family from ``source``).

A shard is written under a ``.partial`` name and renamed when complete; the manifest
(``manifest.json``) is replaced atomically after each shard, so a killed run leaves only
finished shards listed, and a resumed run discards anything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from transip_openmm.data.worker import Record

MANIFEST = "manifest.json"


def write_shard(path: Path, records: Iterable[Record]) -> int:
    """Write ``records`` to ``path`` (via ``path.partial``, renamed at the end); returns the count."""
    from ase.db import connect

    partial = path.with_name(path.name + ".partial")
    for stale in (partial, Path(f"{partial}-lock")):
        stale.unlink(missing_ok=True)
    db = connect(str(partial), type="aselmdb")
    count = 0
    with db:
        for rec in records:
            atoms = Atoms(numbers=rec.numbers, positions=rec.positions)
            atoms.calc = SinglePointCalculator(atoms, energy=rec.energy, forces=rec.forces)
            db.write(atoms, data=rec.data)
            count += 1
    db.close()
    Path(f"{partial}-lock").unlink(missing_ok=True)
    os.replace(partial, path)
    return count


def read_shard(path: Path) -> List[Dict[str, Any]]:
    """Every record of a shard as a dict (numbers, positions, energy, forces, data), in order."""
    from ase.db import connect

    db = connect(str(path), type="aselmdb", readonly=True)
    out = []
    try:
        for row in db.select():
            out.append({"numbers": np.asarray(row.numbers), "positions": np.asarray(row.positions),
                        "energy": float(row.energy), "forces": np.asarray(row.forces), "data": dict(row.data)})
    finally:
        db.close()
    return out


def load_manifest(folder: Path) -> Dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def save_manifest(folder: Path, manifest: Dict[str, Any]) -> None:
    """Replace the manifest atomically (write a temporary file, flush, rename)."""
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)
