"""The runner: outputs, checkpoint/resume after SIGKILL, blow-up detection."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mdtraj
import numpy as np
import pytest
from transip_openmm.cli import main
from transip_openmm.simulations.protocol import load_protocol
from transip_openmm.simulations.runner import ResumeMismatch, SimulationError, run_protocol

REPO = Path(__file__).resolve().parents[2]
INPUTS = REPO / "simulations" / "inputs"


def _ml_vacuum(tmp_path: Path, model: Path, production: int = 600, platform: str = "Reference",
               name: str = "ml.yaml", seed: int = 11, structure: str = "alanine-dipeptide.pdb") -> Path:
    path = tmp_path / name
    path.write_text(f"""
name: resume-test
system: {{structure: {INPUTS / structure}}}
model: {{path: {model}}}
integrator: {{type: LangevinMiddle, timestep_fs: 0.5, temperature_k: 300}}
stages:
  - {{type: minimize, max_iterations: 20}}
  - {{type: nvt, steps: 40}}
  - {{type: production, steps: {production}}}
reporters:
  trajectory: {{format: dcd, interval: 20}}
  state_data: {{interval: 20}}
  checkpoint: {{interval: 100}}
platform: {platform}
seed: {seed}
""")
    return path


def _csv_steps(run: Path) -> list:
    with open(run / "state_data.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def _simulate(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "transip_openmm.cli", "simulate", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def test_resume_after_sigkill_gives_a_seamless_trajectory(tmp_path: Path, tiny_model: Path) -> None:
    protocol = _ml_vacuum(tmp_path, tiny_model, production=300)
    reference = tmp_path / "reference"
    run_protocol(load_protocol(protocol), reference, show_progress=False)

    killed = tmp_path / "killed"
    proc = _simulate(str(protocol), "--output", str(killed))
    deadline = time.time() + 240
    while time.time() < deadline:  # kill -9 once production has a checkpoint, mid-stage
        progress = killed / "progress.json"
        if progress.exists():
            p = json.loads(progress.read_text())
            if p["stage_index"] == 2 and p["step_in_stage"] >= 100:
                break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    p = json.loads((killed / "progress.json").read_text())
    assert not p["done"] and 100 <= p["step_in_stage"] < 300
    assert not (killed / "trajectory.dcd").exists()

    resumed = _simulate(str(protocol), "--output", str(killed), "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out

    info = json.loads((killed / "run.json").read_text())
    assert info["trajectory_frames"] == 300 // 20
    assert info["frame_steps"] == list(range(60, 40 + 300 + 1, 20))  # global steps 60..340, no gap
    top = str(killed / "topology.pdb")
    traj = mdtraj.load(str(killed / "trajectory.dcd"), top=top)
    ref = mdtraj.load(str(reference / "trajectory.dcd"), top=top)
    assert traj.n_frames == ref.n_frames == 15
    steps = _csv_steps(killed)
    assert steps == sorted(set(steps)) == _csv_steps(reference)  # no duplicated or missing row
    # Reference platform + RNG state in the checkpoint: the resumed run is the same trajectory
    np.testing.assert_allclose(traj.xyz, ref.xyz, atol=1e-4)


def test_existing_run_needs_resume_and_finished_run_resumes_to_nothing(tmp_path: Path, tiny_model: Path) -> None:
    protocol = load_protocol(_ml_vacuum(tmp_path, tiny_model, production=40, platform="CPU"))
    run_protocol(protocol, tmp_path / "run", show_progress=False)
    with pytest.raises(SimulationError, match="--resume"):
        run_protocol(protocol, tmp_path / "run", show_progress=False)
    info = run_protocol(protocol, tmp_path / "run", resume=True, show_progress=False)
    assert info["md_steps_this_run"] == 0 and info["trajectory_frames"] == 2


def test_blow_up_names_the_step_and_writes_last_good_structure(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"""
system: {{structure: {INPUTS / 'alanine-dipeptide.pdb'}}}
model: {{path: none, forcefield: [amber14-all.xml]}}
integrator: {{type: LangevinMiddle, timestep_fs: 10, temperature_k: 3000, friction_per_ps: 0.01}}
stages: [{{type: production, steps: 5000}}]
reporters: {{trajectory: {{interval: 10}}, state_data: {{interval: 10}}, checkpoint: {{interval: 1000}}}}
platform: Reference
""")
    with pytest.raises(SimulationError) as info:
        run_protocol(load_protocol(path), tmp_path / "run", show_progress=False)
    message = str(info.value)
    assert "blew up" in message and "step" in message and "last_good.pdb" in message
    good = mdtraj.load(str(tmp_path / "run" / "last_good.pdb"))
    assert np.isfinite(good.xyz).all() and good.n_atoms == 22


def test_pure_mm_npt_run_outputs(tmp_path: Path) -> None:
    path = tmp_path / "mm.yaml"
    path.write_text(f"""
system:
  structure: {INPUTS / 'alanine-dipeptide.pdb'}
  solvation: {{padding_nm: 1.0}}
model: {{path: none, forcefield: [amber14-all.xml, amber14/tip3p.xml], cutoff_nm: 0.9}}
integrator: {{type: LangevinMiddle, timestep_fs: 2, constraints: HBonds}}
stages:
  - {{type: minimize, max_iterations: 50}}
  - {{type: npt, steps: 100, barostat_interval: 5}}
  - {{type: production, steps: 100}}
reporters: {{trajectory: {{format: xtc, interval: 20}}, state_data: {{interval: 20}}, checkpoint: {{interval: 100}}}}
platform: CPU
""")
    info = run_protocol(load_protocol(path), tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    assert info["trajectory_frames"] == 5 and (run / "trajectory.xtc").exists()
    with open(run / "state_data.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(20, 201, 20))
    npt_volumes = {r["volume_nm3"] for r in rows if r["stage"] == "1-npt"}
    prod_volumes = {r["volume_nm3"] for r in rows if r["stage"] == "2-production"}
    assert len(npt_volumes) > 1  # the barostat acted in NPT
    assert len(prod_volumes) == 1  # and is off in NVT production
    density = float(rows[-1]["density_g_per_ml"])
    assert 0.8 < density < 1.2
    times = [float(r["time_ps"]) for r in rows]
    np.testing.assert_allclose(np.diff(times), 0.04, atol=1e-9)  # continuous across stages


def _kill_when(proc: subprocess.Popen, run: Path, moment, what: str) -> None:
    """Poll every 10 ms; ``kill -9`` the run as soon as ``moment(progress, checkpoint names)``."""
    deadline = time.time() + 240
    while time.time() < deadline:
        progress = run / "progress.json"
        p = json.loads(progress.read_text()) if progress.exists() else None
        names = [f.name for f in (run / "checkpoints").iterdir()] if (run / "checkpoints").exists() else []
        if moment(p, names):
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed {what}:\n{proc.stdout.read()}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_repeated_sigkill_while_checkpointing_loses_and_repeats_nothing(tmp_path: Path, tiny_model: Path) -> None:
    """Three ``kill -9`` at different moments (the first checkpoint file appearing, a production
    checkpoint being committed, a later production checkpoint file appearing), each followed by
    ``--resume``: the final trajectory and state data equal an uninterrupted run with the same
    seed (Reference platform: deterministic; the checkpoints carry the RNG state)."""
    protocol = _ml_vacuum(tmp_path, tiny_model, production=400)
    reference = tmp_path / "reference"
    run_protocol(load_protocol(protocol), reference, show_progress=False)

    run = tmp_path / "killed"
    moments = [
        ("at the first checkpoint file", lambda p, names: bool(names)),
        ("after production step 100", lambda p, names: p is not None and p["stage_index"] == 2
         and p["step_in_stage"] >= 100),
        ("as the step-340 checkpoint appears", lambda p, names: any("0000000340" in n for n in names)),
    ]
    for i, (what, moment) in enumerate(moments):
        proc = _simulate(str(protocol), "--output", str(run), *(["--resume"] if i else []))
        _kill_when(proc, run, moment, what)
        assert not (run / "run.json").exists(), what
    resumed = _simulate(str(protocol), "--output", str(run), "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out

    info = json.loads((run / "run.json").read_text())
    assert info["frame_steps"] == list(range(60, 40 + 400 + 1, 20))  # every frame exactly once
    top = str(run / "topology.pdb")
    traj = mdtraj.load(str(run / "trajectory.dcd"), top=top)
    ref = mdtraj.load(str(reference / "trajectory.dcd"), top=top)
    assert traj.n_frames == ref.n_frames == 20
    assert _csv_steps(run) == _csv_steps(reference)
    np.testing.assert_allclose(traj.xyz, ref.xyz, atol=1e-4)
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.partial.*"))


def _snapshot(run: Path) -> dict:
    """Bytes and modification time of every file below ``run``."""
    return {str(f.relative_to(run)): (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(run.rglob("*"))
            if f.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model: Path) -> tuple:
    folder = tmp_path_factory.mktemp("resume")
    protocol = _ml_vacuum(folder, tiny_model, production=40, platform="CPU")
    run_protocol(load_protocol(protocol), folder / "run", show_progress=False)
    return folder, protocol, folder / "run"


@pytest.mark.parametrize("change, named", [
    ("seed", "seed: 11 -> 12"),
    ("model", "another model file"),
    ("atoms", "the run has 22 atoms but this protocol builds 2"),
])
def test_mismatched_resume_is_refused_in_one_line_and_touches_nothing(
        change: str, named: str, finished_run: tuple, tiny_model: Path, other_tiny_model: Path, capsys) -> None:
    folder, _, run = finished_run
    kwargs = {"seed": 12} if change == "seed" else {"structure": "nacl-pair.pdb"} if change == "atoms" else {}
    protocol = _ml_vacuum(folder, other_tiny_model if change == "model" else tiny_model, production=40,
                          platform="CPU", name=f"{change}.yaml", **kwargs)
    before = _snapshot(run)
    with pytest.raises(ResumeMismatch, match="cannot resume"):
        run_protocol(load_protocol(protocol), run, resume=True, show_progress=False)
    capsys.readouterr()
    assert main(["simulate", str(protocol), "--output", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0] and named in err[0], err
    assert _snapshot(run) == before


@pytest.mark.parametrize("max_iterations, warned", [(3, True), (0, False)])
def test_unconverged_minimisation_is_warned_about(max_iterations: int, warned: bool, tmp_path: Path, caplog) -> None:
    path = tmp_path / "min.yaml"
    path.write_text(f"""
system: {{structure: {INPUTS / 'alanine-dipeptide.pdb'}}}
model: {{path: none, forcefield: [amber14-all.xml]}}
stages: [{{type: minimize, max_iterations: {max_iterations}}}, {{type: nvt, steps: 10}}]
reporters: {{trajectory: {{interval: 10}}, state_data: {{interval: 10}}, checkpoint: {{interval: 10}}}}
platform: Reference
""")
    with caplog.at_level("WARNING", logger="transip_openmm.simulations.runner"):
        run_protocol(load_protocol(path), tmp_path / "run", show_progress=False)
    messages = [r.getMessage() for r in caplog.records if "stopped before converging" in r.getMessage()]
    assert len(messages) == int(warned)
    if warned:
        assert "after at most 3 iterations" in messages[0] and "raise stages[0].max_iterations" in messages[0]
