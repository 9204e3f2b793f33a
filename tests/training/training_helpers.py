"""Helpers of the training tests: data paths and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(path: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent."""
    p = SHARED_DATA / path
    if not p.exists():
        pytest.skip(f"shared data {p} not available")
    return p


TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_ratio": 2.0, "n_rbf": 8,
              "rbf_cutoff": 6.0, "distance_bias": True, "coord_scale": 1.0, "zbl_repulsion": True}


def write_tiny_config(tmp_path: Path, symmetry: str = "none", max_steps: int = 30, **run) -> Path:
    """A tiny acac config (8 train / 8 val structures from tests/data) in ``tmp_path``."""
    cfg = {
        "seed": 3,
        "data": {"root": str(TEST_DATA), "train": ["acac_mini.xyz"], "val": ["acac_mini.xyz"],
                 "max_atoms_per_batch": 120},
        "model": dict(TINY_MODEL),
        "objective": {"symmetry": symmetry, "energy_weight": 1.0, "force_weight": 10.0,
                      "equiv_weight": 0.1, "layers": [-1], "temperature": 0.1, "transform_hidden": 32,
                      "energy_scale": "force_rms"},
        "optim": {"lr": 3e-3, "warmup_steps": 3, "max_steps": max_steps, "ema_decay": 0.9},
        "run": {"log_every": 1, "val_every": 1000, "checkpoint_every": 1000, "progress": False,
                "threads": 1, **run},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_shards(folder: Path, n_shards: int = 2, per_shard: int = 12, level_of_theory: str = "",
                 seed: int = 0) -> Path:
    """``.aselmdb`` shards in the OMol25 layout from acac_mini records, each copy displaced
    by up to 0.02 Å and given its own family (``source``); returns ``folder``."""
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect
    from transip_openmm.training.readers import read_dataset

    base = read_dataset(TEST_DATA / "acac_mini.xyz")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with connect(str(folder / f"shard{s:03d}.aselmdb"), type="aselmdb") as db:
            for _ in range(per_shard):
                mol = base[k % len(base)]
                atoms = Atoms(numbers=mol.numbers, positions=mol.positions + rng.uniform(-0.02, 0.02, (mol.n_atoms, 3)))
                atoms.calc = SinglePointCalculator(atoms, energy=mol.energy, forces=mol.forces)
                data = {"charge": 0, "spin": 1, "source": f"synthetic/acac{k // 3:04d}_0_1/orca.tar.zst"}
                if level_of_theory:
                    data["level_of_theory"] = level_of_theory
                db.write(atoms, data=data)
                k += 1
    return folder
