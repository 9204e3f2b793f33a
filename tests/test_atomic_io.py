"""Atomic writes: a write that fails or is killed half-way leaves the old file intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from transip_openmm.artifacts import load_checkpoint, save_checkpoint
from transip_openmm.atomic_io import remove_stale_temporaries, atomic_binary_file, atomic_write_text
from transip_openmm.model import ModelConfig, TransIPModel


def _payload(step: int) -> dict:
    model = TransIPModel(ModelConfig(d_model=16, n_layers=1, n_heads=2, n_rbf=8))
    return {"model_config": model.config_dict, "model_state": model.state_dict(), "elements": [1, 8],
            "step": step}


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # a write that fails half-way through the pickle


def test_failed_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, _payload(step=1))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {**_payload(step=2), "extra": _Unpicklable()})
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_written_file_has_the_usual_permissions(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert path.read_text() == "x"


_SLOW_WRITER = """
import sys, time
from transip_openmm.atomic_io import atomic_binary_file
with atomic_binary_file(sys.argv[1]) as f:
    for _ in range(1000):
        f.write(b"new" * 1000)
        f.flush()
        print("writing", flush=True)
        time.sleep(0.01)
"""


def test_killed_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path)], stdout=subprocess.PIPE)
    for _ in range(3):  # the writer is inside the write, its temporary file growing
        assert writer.stdout.readline() == b"writing\n"
    temporary = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temporary) == 1 and temporary[0].stat().st_size >= 3000
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    assert path.read_bytes() == b"old"
    assert remove_stale_temporaries(tmp_path) == 1  # what a resume does before writing again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_completed_write_replaces_the_file(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"old")
    start = time.time()
    with atomic_binary_file(path) as f:
        torch.save({"a": 1}, f)
    assert torch.load(path)["a"] == 1 and path.stat().st_mtime >= start - 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]
