"""Fault injection: ``kill -9`` of ``transip train`` while it writes checkpoints, then ``--resume``.

With a checkpoint after every step the process spends much of its time in checkpoint
writes, so a kill at a random moment often lands in one. Whatever the moment, the
checkpoint on disk must load, the resumed run must finish at the planned step, and
``log.csv`` must hold every step exactly once.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from training_helpers import write_tiny_config

from transip_openmm.artifacts import load_checkpoint

MAX_STEPS = 40


def _train(config: Path, output: Path, resume: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "transip_openmm.cli", "train", str(config), "--output", str(output)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(argv + (["--resume"] if resume else []), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"training ended before the kill: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _checkpoint_step(path: Path) -> int:
    return int(load_checkpoint(path)["step"]) if path.exists() else 0


@pytest.mark.slow
def test_kill_during_checkpoint_writes_then_resume(tmp_path):
    config = write_tiny_config(tmp_path, symmetry="transip", max_steps=MAX_STEPS, checkpoint_every=1)
    out = tmp_path / "run"
    last = out / "last.ckpt"

    # first kill: the moment last.ckpt first appears (the trainer is writing checkpoints)
    _kill_when(_train(config, out, resume=False), last.exists)
    first = _checkpoint_step(last)  # loads: a complete file or none
    assert 1 <= first < MAX_STEPS

    # second kill: after the resumed run has moved on by a few checkpoints
    _kill_when(_train(config, out, resume=True), lambda: _checkpoint_step(last) >= first + 5)
    second = _checkpoint_step(last)
    assert first + 5 <= second < MAX_STEPS

    # third run: resume to the end
    process = _train(config, out, resume=True)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]
    final = load_checkpoint(last)
    assert final["step"] == MAX_STEPS
    assert load_checkpoint(out / "best.ckpt")["step"] <= MAX_STEPS
    with open(out / "log.csv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == list(range(1, MAX_STEPS + 1))  # every step once, in order
    assert not list(out.glob(".*.tmp"))  # the resume removed what the killed writes left
