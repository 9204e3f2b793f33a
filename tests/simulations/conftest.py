"""Fixtures for the simulation tests: a tiny random-weight exported model, made at test time."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "simulations" / "protocols"
INPUTS = REPO / "simulations" / "inputs"


def _export_random_model(folder: Path, name: str, **config_overrides) -> Path:
    """Export a random-weight TransIP model (d_model=32, 2 layers) for H Li C N O F Na Cl."""
    import torch
    from transip_openmm.export.exporter import export_checkpoint

    from transip_openmm.artifacts import save_checkpoint
    from transip_openmm.model import ModelConfig, TransIPModel

    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_layers=2, n_heads=4, **config_overrides)
    model = TransIPModel(config)
    save_checkpoint(folder / f"{name}.ckpt", {"model_config": config.to_dict(), "model_state": model.state_dict(),
                                              "elements": [1, 3, 6, 7, 8, 9, 11, 17]})
    export_checkpoint(folder / f"{name}.ckpt", folder / f"{name}.pt")
    return folder / f"{name}.pt"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An exported TransIP model with random weights (absolute positions, all-pairs attention)."""
    return _export_random_model(tmp_path_factory.mktemp("model"), "tiny")


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """Like ``tiny_model`` but another file (8 radial basis functions): a different model."""
    return _export_random_model(tmp_path_factory.mktemp("model"), "other", n_rbf=8)


@pytest.fixture(scope="session")
def tiny_local_model(tmp_path_factory) -> Path:
    """Random weights, relative positions and 5 Å local attention: accepts periodic boxes."""
    return _export_random_model(tmp_path_factory.mktemp("model"), "tiny-local", position_encoding="relative",
                                attention_cutoff=5.0)


def write_protocol(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
