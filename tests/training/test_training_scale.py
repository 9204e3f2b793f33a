"""The trainer on lazy shards: exact mid-epoch resume with workers and gradient accumulation,
bf16, the typed checkpoint and its one owner of the element references."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml
from training_helpers import write_shards, write_tiny_config
from transip_openmm.training.checkpoint import TrainingCheckpoint
from transip_openmm.training.config import load_config
from transip_openmm.training.dataset import DataError
from transip_openmm.training.shards import ShardedDataset
from transip_openmm.training.trainer import Trainer

from transip_openmm.artifacts import load_checkpoint, model_from_checkpoint


def _sharded_config(tmp_path, max_steps=8, **changes):
    """The tiny config on 3 lazy shards of 12 structures (4-structure batches: 9 per epoch)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_tiny_config(tmp_path, symmetry="augment", max_steps=max_steps)
    cfg = yaml.safe_load(path.read_text())
    train = write_shards(tmp_path / "train", n_shards=3, per_shard=12)
    val = write_shards(tmp_path / "val", n_shards=1, per_shard=4, seed=1)
    cfg["data"].update({"train": [str(train)], "val": [str(val / "*.aselmdb")], "max_atoms_per_batch": 60})
    for section, values in changes.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def _run(cfg, out, stop_after=None, resume=False):
    trainer = Trainer(cfg, out, resume=resume, stop_after=stop_after)
    trainer.batch_log = []
    trainer.train()
    return trainer


def test_mid_epoch_resume_sees_the_same_batches_and_weights(tmp_path):
    cfg = _sharded_config(tmp_path, max_steps=8, optim={"accumulate": 2}, run={"num_workers": 1})
    assert isinstance(Trainer(cfg, tmp_path / "probe").data.train, ShardedDataset)
    straight = _run(cfg, tmp_path / "straight")
    first = _run(cfg, tmp_path / "parts", stop_after=3)
    assert TrainingCheckpoint.load(tmp_path / "parts" / "last.ckpt").position.batch_in_epoch == 6  # mid-epoch
    second = _run(cfg, tmp_path / "parts", resume=True)
    assert len(straight.batch_log) == 16  # 8 steps x 2 micro-batches, across an epoch boundary
    assert first.batch_log + second.batch_log == straight.batch_log
    assert straight.position.epoch == 1
    a = load_checkpoint(tmp_path / "straight" / "last.ckpt")
    b = load_checkpoint(tmp_path / "parts" / "last.ckpt")
    for key in a["model_state"]:
        torch.testing.assert_close(a["model_state"][key], b["model_state"][key], rtol=1e-6, atol=1e-7)
    rows = {}
    for name in ("straight", "parts"):
        with open(tmp_path / name / "log.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert [r["step"] for r in rows["straight"]] == [r["step"] for r in rows["parts"]] == [str(i) for i in range(1, 9)]
    for ra, rb in zip(rows["straight"], rows["parts"]):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-6)
        assert float(ra["peak_memory_MB"]) > 0 and float(ra["structures_per_s"]) > 0


def test_workers_and_accumulation_reproduce_the_plain_loop(tmp_path):
    """2 workers and 2 micro-batches of 4 give the same gradient steps as 0 workers."""
    losses = {}
    for workers in (0, 2):
        cfg = _sharded_config(tmp_path / f"w{workers}", max_steps=3, optim={"accumulate": 2},
                              run={"num_workers": workers})
        trainer = _run(cfg, tmp_path / f"w{workers}" / "run")
        losses[workers] = [p.detach().clone() for p in trainer.model.parameters()]
    for a, b in zip(losses[0], losses[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_blocks_train_with_float32_energies_and_forces(tmp_path):
    cfg = _sharded_config(tmp_path, max_steps=4, run={"precision": "bf16"})
    trainer = Trainer(cfg, tmp_path / "bf16")
    seen = []
    trainer.model.blocks[0].register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    batch = next(iter(trainer.loader)).to("cpu")
    out = trainer.module(batch, torch.eye(3).expand(batch.size, 3, 3))
    assert seen == [torch.float32]  # the blocks' output is cast back for the residual stream
    assert out["loss"].dtype == torch.float32 and math.isfinite(float(out["loss"].detach()))
    reference = Trainer(_sharded_config(tmp_path / "fp32", max_steps=4), tmp_path / "fp32" / "run")
    reference.model.load_state_dict(trainer.model.state_dict())
    ref_out = reference.module(batch, torch.eye(3).expand(batch.size, 3, 3))
    assert float(out["loss_force"]) == pytest.approx(float(ref_out["loss_force"]), rel=0.05)
    assert float(out["loss_force"]) != float(ref_out["loss_force"])  # bf16 did run
    summary = trainer.train()
    assert summary["precision"] == "bf16" and summary["step"] == 4


def test_references_have_one_owner(tmp_path):
    cfg = _sharded_config(tmp_path, max_steps=2)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    assert float(trainer.model.element_energies.abs().max()) == 0.0  # the live model never carries them
    ckpt = TrainingCheckpoint.load(tmp_path / "run" / "last.ckpt")
    assert ckpt.element_energies.dtype == np.float64 and ckpt.element_energies[6] != 0.0
    np.testing.assert_array_equal(ckpt.element_energies, trainer.element_energies)
    torch.testing.assert_close(ckpt.model_state["element_energies"],
                               torch.from_numpy(ckpt.element_energies).float())
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.ckpt"))
    before = model.element_energies.clone()
    from transip_openmm.export.wrapper import OpenMMTransIP

    wrapper = OpenMMTransIP(model)
    torch.testing.assert_close(model.element_energies, before, rtol=0, atol=0)  # export does not mutate
    torch.testing.assert_close(wrapper.reference_energies, before.double(), rtol=0, atol=0)
    assert float(wrapper.model.element_energies.abs().max()) == 0.0


def test_old_untyped_checkpoints_still_read(tmp_path):
    cfg = _sharded_config(tmp_path, max_steps=1)
    Trainer(cfg, tmp_path / "run").train()
    payload = load_checkpoint(tmp_path / "run" / "last.ckpt")
    for key in ("element_energies", "force_rms"):
        payload.pop(key)  # what checkpoints written before the typed object hold
    old = TrainingCheckpoint.from_payload(payload)
    new = TrainingCheckpoint.load(tmp_path / "run" / "last.ckpt")
    np.testing.assert_allclose(old.element_energies, new.element_energies, rtol=1e-6)
    assert (old.step, old.position, old.symmetry) == (new.step, new.position, new.symmetry)


def test_training_refuses_energies_of_two_levels_of_theory(tmp_path):
    path = write_tiny_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    a = write_shards(tmp_path / "a", n_shards=1, per_shard=6, level_of_theory="wB97M-V/def2-TZVPD")
    b = write_shards(tmp_path / "b", n_shards=1, per_shard=6, level_of_theory="GFN2-xTB")
    cfg["data"].update({"train": [str(a), str(b)], "val": [str(a)]})
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="levels of theory.*force_only"):
        Trainer(load_config(path), tmp_path / "run")
    cfg["data"].update({"train": [str(a)], "force_only": [str(b)]})
    path.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(path), tmp_path / "run2")
    assert len(trainer.data.train) == 12 and len(trainer.data.train.with_energies()) == 6
