"""Data-parallel training with torchrun: 2 CPU processes on the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from training_helpers import write_tiny_config

from transip_openmm.artifacts import load_checkpoint


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    cfg = write_tiny_config(tmp_path, symmetry="transip", max_steps=6)
    data = yaml.safe_load(cfg.read_text())
    data["data"]["max_atoms_per_batch"] = 60  # 2 batches of 4 per epoch: one per rank
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "transip_openmm.cli", "train", str(cfg), "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ddp_max_param_diff"] == 0.0  # identical parameters on both ranks after 6 steps
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["step"] == 6
    # both ranks' batches were used: 8 structures in 2 batches of 4 per epoch, one per rank
    assert summary["structures_per_s"] > 0
    with open(out / "log.csv") as f:
        assert len(f.read().strip().splitlines()) == 7


def test_sampler_gives_each_rank_its_own_batches():
    from transip_openmm.training.batching import MaxAtomsBatchSampler

    n_atoms = [15] * 8
    parts = [MaxAtomsBatchSampler(n_atoms, 60, seed=3, rank=r, world_size=2).batches(0) for r in (0, 1)]
    assert parts[0] and parts[1]
    assert not {i for b in parts[0] for i in b} & {i for b in parts[1] for i in b}
