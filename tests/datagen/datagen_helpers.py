"""Helpers of the data-generator tests: a tiny config that runs in seconds, record comparison."""

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from transip_openmm.data.config import GenerateConfig, config_from_dict
from transip_openmm.data.shards import read_shard

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def tiny_config(seed: int = 3, **top: Any) -> GenerateConfig:
    """Four small jobs (peptide MD and displacements, electrolyte bond scans and contacts): 20 frames.

    No water: building the water box costs each worker process ~2 s."""
    raw: Dict[str, Any] = {
        "seed": seed,
        "structures_per_shard": 6,
        "jobs": [
            {"name": "peptide_md", "system": {"kind": "capped_amino_acid", "residues": ["GLY", "LYS"]},
             "sampler": {"kind": "md", "temperatures": [300, 800], "relax_steps": 3, "equilibration_steps": 4,
                         "stride": 3}, "structures": 8, "frames_per_task": 2},
            {"name": "peptide", "system": {"kind": "capped_amino_acid", "residues": ["GLY", "ASP"]},
             "sampler": {"kind": "displacements", "sigmas": [0.03]}, "structures": 4, "frames_per_task": 2},
            {"name": "scan", "system": {"kind": "electrolyte", "n_solvent": [1, 1], "anions": ["none"]},
             "sampler": {"kind": "bond_scan"}, "structures": 4, "frames_per_task": 2},
            {"name": "electrolyte", "system": {"kind": "electrolyte", "n_solvent": [1, 1], "anions": ["BF4-", "none"]},
             "sampler": {"kind": "close_contact"}, "structures": 4, "frames_per_task": 2},
        ],
    }
    raw.update(top)
    config = config_from_dict(raw)
    config.base_dir = str(REPO)
    return config


def read_folder(folder: Path) -> List[Dict[str, Any]]:
    """Every record of every shard of a run folder, in shard order."""
    return [r for path in sorted(folder.glob("shard_*.aselmdb")) for r in read_shard(path)]


def assert_same_records(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["numbers"], y["numbers"])
        np.testing.assert_array_equal(x["positions"], y["positions"])
        np.testing.assert_array_equal(x["forces"], y["forces"])
        assert x["energy"] == y["energy"]
        assert x["data"] == y["data"]
