"""Helpers and fixtures of the export tests: a small random-weight checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transip_openmm.artifacts import save_checkpoint
from transip_openmm.model import ModelConfig, TransIPModel

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"



def tiny_model(seed: int = 1) -> TransIPModel:
    torch.manual_seed(seed)
    model = TransIPModel(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_rbf=8, rbf_cutoff=6.0))
    for z, e in {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2042.0}.items():
        model.element_energies[z] = e
    return model.eval()


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    model = tiny_model()
    save_checkpoint(path, {"model_config": model.config_dict, "model_state": model.state_dict(),
                           "elements": [1, 6, 7, 8], "data_hash": "abc123", "step": 7,
                           "val_metrics": {"energy_mae_mev": 12.5, "force_mae_mev_a": 80.0},
                           "config": {"seed": 3, "objective": {"symmetry": "transip"}},
                           "symmetry": "transip"})
    return path
