"""The data preparation of the data-scaling study (``benchmarks/scaling_data.py``): parts split
by molecule, nested training sets that hold every element, and ``max_force`` applied to every
part."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scaling_data  # noqa: E402

from transip_openmm.training.dataset import Molecule, MoleculeDataset  # noqa: E402
from transip_openmm.training.readers import read_datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _corpus(path: Path) -> None:
    """12 molecules x 4 conformers; conformer 3 of every molecule has one 80 eV/Å force."""
    rng = np.random.default_rng(0)
    mols = []
    for m in range(12):
        numbers = np.array([8, 1, 1] if m % 2 else [6, 1, 1, 1, 1])
        for c in range(4):
            forces = rng.normal(0.0, 0.5, (len(numbers), 3))
            if c == 3:
                forces[0] = [80.0, 0.0, 0.0]
            mols.append(Molecule(numbers=numbers, positions=rng.normal(0.0, 1.0, (len(numbers), 3)),
                                 energy=-5.0 * len(numbers), forces=forces, charge=0, multiplicity=1,
                                 family=f"gen_test/mol{m}"))
    scaling_data.write_extxyz(MoleculeDataset(mols), path)


def _config(tmp_path: Path, data: Path) -> Path:
    cfg = yaml.safe_load((REPO / "training" / "configs" / "scaling_xtb_corpus.yaml").read_text())
    cfg["data"].update({"root": str(tmp_path), "train": [str(data)], "val_fraction": 0.2, "test_fraction": 0.2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _families(path: Path) -> set:
    return {m.family for m in read_datasets([path])}


def test_prepare_files_drops_large_forces_from_every_part_and_splits_by_molecule(tmp_path: Path) -> None:
    data = tmp_path / "corpus.xyz"
    _corpus(data)
    files = scaling_data.prepare_files(_config(tmp_path, data), [5, None], tmp_path / "work", max_force=30.0)
    parts = {name: read_datasets([files[name]]) for name in ("val", "test")}
    parts["train"] = read_datasets([files["train"][None]])
    assert sum(len(p) for p in parts.values()) == 36  # 48 records, the 12 with an 80 eV/Å force dropped
    assert files["split"]["dropped_by_max_force"] == 12
    assert sum(files["split"][name]["structures"] for name in ("train", "val", "test")) == 36
    for part in parts.values():
        assert max(float(np.abs(m.forces).max()) for m in part) < 30.0
    assert not _families(files["val"]) & _families(files["test"])
    assert not _families(files["train"][None]) & (_families(files["val"]) | _families(files["test"]))
    small = read_datasets([files["train"][5]])
    assert len(small) == 5 and {1, 6, 8} <= set(np.concatenate([m.numbers for m in small]).tolist())


def test_prepare_files_keeps_every_record_without_max_force(tmp_path: Path) -> None:
    data = tmp_path / "corpus.xyz"
    _corpus(data)
    files = scaling_data.prepare_files(_config(tmp_path, data), [None], tmp_path / "work")
    total = sum(len(read_datasets([p])) for p in (files["train"][None], files["val"], files["test"]))
    assert total == 48
