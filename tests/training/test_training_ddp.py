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


def _rank_batches(rank: int, world: int, port: int, config: str, out: str) -> None:
    """One rank of a real gloo job: train, then write the structure indices of its batches."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    from transip_openmm.training.config import load_config
    from transip_openmm.training.trainer import Trainer

    trainer = Trainer(load_config(config), out)
    trainer.batch_log = []
    trainer.train()
    with open(os.path.join(out, f"batches_rank{rank}.json"), "w") as f:
        json.dump({"batches": trainer.batch_log, "plan": trainer.sampler.batches(0), "n": len(trainer.data.train)}, f)
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_see_disjoint_batches_covering_the_epoch(tmp_path):
    """2 gloo processes on lazy shards with a DataLoader worker each: one epoch of steps."""
    import socket

    import torch.multiprocessing as mp
    from training_helpers import write_shards

    cfg = write_tiny_config(tmp_path, symmetry="none", max_steps=4)
    data = yaml.safe_load(cfg.read_text())
    train = write_shards(tmp_path / "train", n_shards=2, per_shard=16)  # 32 structures, 4 per batch
    data["data"].update({"train": [str(train)], "val": [str(train / "shard000.aselmdb")], "max_atoms_per_batch": 60})
    data["run"]["num_workers"] = 1
    cfg.write_text(yaml.safe_dump(data))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    mp.spawn(_rank_batches, args=(2, port, str(cfg), str(out)), nprocs=2, join=True)
    logs = [json.loads((out / f"batches_rank{r}.json").read_text()) for r in (0, 1)]
    seen = [[i for b in log["batches"] for i in b] for log in logs]
    assert len(logs[0]["batches"]) == len(logs[1]["batches"]) == 4  # one step each, 4 steps
    assert not set(seen[0]) & set(seen[1])  # disjoint
    assert sorted(seen[0] + seen[1]) == list(range(logs[0]["n"]))  # together: the whole epoch (8 batches)
    assert logs[0]["batches"] == logs[0]["plan"] and logs[1]["batches"] == logs[1]["plan"]
