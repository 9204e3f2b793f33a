"""Every bundled protocol runs a few steps through the real CLI (random-weight model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from transip_openmm.cli import main

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "simulations" / "protocols"
SOLVATED = {"alanine-dipeptide-water", "serine-dipeptide-spice-water", "nacl-water"}


#: Run with the model they name (shipped) instead of a random one: in ML/MM water a random
#: model does not hold its molecules together: an ML hydrogen (TIP3P: charge, no
#: Lennard-Jones) falls onto an MM oxygen (NaN in some runs, depending on thread timing), or
#: the torn ML region grows wider than half the box, which the cluster model then refuses.
SHIPPED_MODEL_RUNS = {"nacl-water", "alanine-dipeptide-water", "serine-dipeptide-spice-water"}


def _with_model(src: Path, model: Path | None, dest: Path) -> Path:
    text = src.read_text()
    if model is not None:
        text = re.sub(r"path: (default|local)\b", f"path: {model}", text)
    text = text.replace("../inputs/", f"{src.parent.parent / 'inputs'}/")
    text = re.sub(r"platform: auto", "platform: CPU", text)
    dest.write_text(text)
    return dest


@pytest.mark.parametrize("name", [
    "alanine-dipeptide-vacuum",
    "li-ec-cluster",
    pytest.param("alanine-dipeptide-water", marks=pytest.mark.slow),
    pytest.param("serine-dipeptide-spice-water", marks=pytest.mark.slow),
    pytest.param("nacl-water", marks=pytest.mark.slow),
    pytest.param("nacl-water-periodic-ml", marks=pytest.mark.slow),
])
def test_protocol_runs_and_analyses(name: str, tmp_path: Path, tiny_model: Path, tiny_local_model: Path) -> None:
    model = None if name in SHIPPED_MODEL_RUNS else tiny_local_model if "periodic" in name else tiny_model
    protocol = _with_model(PROTOCOLS / f"{name}.yaml", model, tmp_path / f"{name}.yaml")
    run = tmp_path / "run"
    assert main(["simulate", str(protocol), "--output", str(run), "--max-steps", "100", "--no-progress"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["trajectory_frames"] == 1 and info["n_ml_atoms"] > 0
    if name in SOLVATED:
        assert info["n_atoms"] > info["n_ml_atoms"]  # ML/MM
    else:
        assert info["n_atoms"] == info["n_ml_atoms"]  # all ML
    assert main(["analyze", str(run)]) == 0
    summary = json.loads((run / "analysis" / "summary.json").read_text())
    assert all(Path(p).exists() for p in summary["plots"])
    if "dipeptide" in name:
        assert "ramachandran_deg" in summary
    if name in ("nacl-water", "nacl-water-periodic-ml", "li-ec-cluster"):
        assert summary["ions"]
