"""``transip demo`` (the README's main command): runs, analyses, and says where things are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transip_openmm.cli import main


@pytest.mark.parametrize("model", ["default", "local"])
def test_demo_runs_a_shipped_model_and_writes_trajectory_and_plots(model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "100", "--model", model, "--platform", "CPU"]) == 0
    printed = capsys.readouterr().out
    assert "demo finished" in printed and "trajectory:" in printed
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["bonds"]["intact"]  # 2 x 100 steps of a shipped model keep alanine dipeptide intact
    assert all(Path(p).is_file() for p in summary["plots"]) and len(summary["plots"]) >= 3
    assert (out / "state_data.csv").is_file()


def test_demo_with_a_missing_model_file_fails_with_a_message(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--output", str(tmp_path / "demo"), "--model", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "demo").exists()


def test_demo_into_an_existing_run_says_choose_another_output(tmp_path: Path, capsys) -> None:
    """The demo has no --resume: its message must not offer one, and the run is left alone."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "progress.json").write_text("{}")
    assert main(["demo", "--output", str(out), "--steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "choose another --output" in err and "--resume" not in err
    assert (out / "progress.json").read_text() == "{}"
