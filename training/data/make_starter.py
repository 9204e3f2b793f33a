"""Rebuild ``omol25_starter.aselmdb`` from the OMol25 sample files (kept for provenance).

Usage: ``python training/data/make_starter.py DATA0001.aselmdb DATA0002.aselmdb``. Keeps the
structures of at most 50 atoms made of H, C, N, O and S, with energy, forces and the
``row.data`` keys the readers use.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ase.db import connect

ELEMENTS = {1, 6, 7, 8, 16}
MAX_ATOMS = 50
KEEP = ("source", "data_id", "charge", "spin", "num_atoms")


def main(sources: list) -> None:
    out = Path(__file__).with_name("omol25_starter.aselmdb")
    out.unlink(missing_ok=True)
    with connect(str(out), type="aselmdb") as db:
        for source in sources:
            for row in connect(source, type="aselmdb", readonly=True).select():
                atoms = row.toatoms()
                if row.natoms <= MAX_ATOMS and set(atoms.numbers.tolist()) <= ELEMENTS:
                    db.write(atoms, data={k: row.data[k] for k in KEEP})


if __name__ == "__main__":
    main(sys.argv[1:])
