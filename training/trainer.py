"""The trainer: data → model → losses → AdamW steps → logs, checkpoints, validation.

Reproducibility: the batch order of epoch e is a function of (seed, e) and the random
rotations of step s are drawn from a generator seeded with (seed, s, rank), so a run
resumed from ``last.ckpt`` repeats the uninterrupted run's steps exactly. Distributed
training (``torchrun``) uses DistributedDataParallel; every rank builds the same batch
list and takes every world_size-th batch.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transip_openmm.training.batching import MaxAtomsBatchSampler, collate
from transip_openmm.training.config import ConfigError, TrainConfig, save_config
from transip_openmm.training.dataset import MoleculeDataset
from transip_openmm.training.evaluate import ModelPredictor, evaluate
from transip_openmm.training.objectives import TrainingModule, random_rotations
from transip_openmm.training.readers import read_datasets
from transip_openmm.training.references import fit_references, force_rms
from transip_openmm.training.splits import config_parts

from transip_openmm.artifacts import load_checkpoint, save_checkpoint
from transip_openmm.model import TransIPModel, count_parameters
from transip_openmm.units import MEV_PER_EV

logger = logging.getLogger(__name__)

LOG_FIELDS = [
    "step", "epoch", "lr", "loss", "loss_energy", "loss_force", "loss_equiv",
    "train_energy_mae_meV_per_atom", "train_force_mae_meV_per_A", "structures_per_s", "atoms_per_s",
    "val_energy_mae_meV", "val_energy_mae_meV_per_atom", "val_force_mae_meV_per_A",
    "val_force_rmse_meV_per_A", "val_force_cos_mean", "val_rot_energy_std_meV", "val_rot_force_err_rel",
    "elapsed_s",
]


@dataclass
class PreparedData:
    train: MoleculeDataset
    val: MoleculeDataset
    elements: List[int]
    data_hash: str


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Read, validate and split the data of ``cfg``."""
    elements = cfg.data.elements
    train_files = [cfg.resolve(p) for p in cfg.data.train]
    full = read_datasets(train_files, elements)
    train, val, _ = config_parts(cfg, full)  # a held-out test part is never seen here
    if cfg.data.max_train is not None:
        train = train.subset(range(min(cfg.data.max_train, len(train))))
    if cfg.data.max_val is not None:
        val = val.subset(range(min(cfg.data.max_val, len(val))))
    if cfg.data.force_only:
        extra = read_datasets([cfg.resolve(p) for p in cfg.data.force_only], elements).without_energies()
        logger.info("force-only data: %d structures (energies unused)", len(extra))
        train = MoleculeDataset.concatenate([train, extra])
    if elements is None:
        elements = train.elements
    val.validate(elements)  # elements in validation but absent from training are an error
    data_hash = "train:" + train.content_hash() + ";val:" + val.content_hash()
    return PreparedData(train, val, [int(z) for z in elements], data_hash)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> Tuple[int, int]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("distributed: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return _dist_info()


class EMA:
    """Exponential moving average of a module's floating-point state (parameters and buffers)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.state[k].copy_(v)


class Trainer:
    """Train a :class:`TransIPModel` as described by a :class:`TrainConfig`.

    Outputs in ``output``: ``config.yaml`` (resolved), ``log.csv``, ``learning_curve.png``,
    ``last.ckpt``, ``best.ckpt``, ``summary.json``.
    """

    def __init__(self, cfg: TrainConfig, output: Path, resume: bool = False,
                 stop_after: Optional[int] = None) -> None:
        self.cfg = cfg
        self.output = Path(output)
        self.resume = resume
        self.stop_after = stop_after
        self.device = torch.device(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(int(cfg.run.threads))
        self.rank, self.world = init_distributed(cfg.run.device)
        self.is_main = self.rank == 0
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)

        self.data = prepare_data(cfg)
        if self.is_main:  # only once the data are read and valid: a bad input leaves no folder
            self.output.mkdir(parents=True, exist_ok=True)
        refs, sigma, self.energy_norm = fit_references(self.data.train.with_energies())
        self.refs = torch.from_numpy(refs)
        self.force_rms = force_rms(self.data.train)
        es = cfg.objective.energy_scale
        self.energy_scale = sigma if es == "residual" else self.force_rms if es == "force_rms" else float(es)
        if not self.energy_scale > 0:
            raise ConfigError(f"energy scale must be positive, got {self.energy_scale}")

        self.model_config = cfg.model_config()
        cfg.model = self.model_config.to_dict()  # resolved: every model default filled in
        self.model = TransIPModel(self.model_config)
        with torch.no_grad():
            self.model.energy_scale.fill_(self.energy_scale)  # element_energies stay 0 while training
            if cfg.objective.zero_init_readout:
                # start from E = Σ references exactly: the energy loss starts at the references'
                # own error instead of being swamped by a random readout
                self.model.readout[-1].weight.zero_()
                self.model.readout[-1].bias.zero_()
        obj = cfg.objective
        self.module = TrainingModule.from_objective(
            self.model, self.refs, self.force_rms, dataclasses.asdict(obj),
            energy_norm=max(self.energy_norm, 1e-6) if obj.energy_loss_norm == "references" else None,
        ).to(self.device)
        self.ddp = None
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.module)
        decay, no_decay = [], []
        for name, p in self.module.named_parameters():
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.warmup_steps, cfg.optim.max_steps, cfg.optim.min_lr_ratio)
        )
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        self.sampler = MaxAtomsBatchSampler(
            self.data.train.n_atoms, cfg.data.max_atoms_per_batch, shuffle=True, seed=cfg.seed,
            rank=self.rank, world_size=self.world,
        )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_value = math.inf
        self.val_metrics: Dict[str, float] = {}
        self.train_time = 0.0
        self.structures_seen = 0
        self.atoms_seen = 0
        if self.is_main:
            logger.info("model: %d parameters (%s); symmetry=%s; %d train / %d val structures; "
                        "energy_scale %.4f eV, energy_norm %.4f eV/atom, force_rms %.4f eV/Å; world size %d",
                        count_parameters(self.model), self.model_config, obj.symmetry,
                        len(self.data.train), len(self.data.val), self.energy_scale, self.energy_norm, self.force_rms,
                        self.world)
        if resume:
            self._load(self.output / "last.ckpt")
        if self.is_main:
            save_config(cfg, self.output / "config.yaml")

    # ------------------------------------------------------------------ state
    def _model_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A model state dict carrying the fitted element references (as saved in checkpoints)."""
        out = {k: v.detach().clone().cpu() for k, v in state.items()}
        out["element_energies"] = self.refs.to(out["element_energies"].dtype).clone()
        return out

    def _payload(self) -> Dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "model_state": self._model_state(self.model.state_dict()),
            "ema_state": self._model_state(self.ema.state) if self.ema else None,
            "transforms_state": self.module.mode.state_dict(),
            "elements": self.data.elements,
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "rng_state": {
                "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            },
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "config": self.cfg.to_dict(),
            "data_hash": self.data.data_hash,
            "val_metrics": dict(self.val_metrics),
            "best_value": self.best_value,
            "symmetry": self.cfg.objective.symmetry,
            "energy_scale": self.energy_scale,
            "energy_norm": self.energy_norm,
            "throughput": self._throughput(),
            "train_time_s": self.train_time,
            "structures_seen": self.structures_seen,
            "atoms_seen": self.atoms_seen,
        }

    def _load(self, path: Path) -> None:
        data = load_checkpoint(path)
        if data.get("data_hash") != self.data.data_hash:
            raise ConfigError(f"cannot resume from {path}: the data differ from the checkpoint's (data hash)")
        old, new = dict(data["config"]), self.cfg.to_dict()
        for cfg_dict in (old, new):
            cfg_dict.pop("run", None)
            cfg_dict.pop("config_dir", None)
            cfg_dict.get("optim", {}).pop("max_steps", None)
        if old != new:
            raise ConfigError(f"cannot resume from {path}: the config differs from the checkpoint's")
        state = dict(data["model_state"])
        state["element_energies"] = torch.zeros_like(state["element_energies"])
        self.model.load_state_dict(state)
        self.module.mode.load_state_dict(data["transforms_state"])
        self.optimizer.load_state_dict(data["optimizer_state"])
        self.scheduler.load_state_dict(data["scheduler_state"])
        if self.ema is not None and data.get("ema_state") is not None:
            ema_state = dict(data["ema_state"])
            ema_state["element_energies"] = torch.zeros_like(ema_state["element_energies"])
            self.ema.state = {k: v.clone().to(self.device) for k, v in ema_state.items()}
        rng = data["rng_state"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.step = int(data["step"])
        self.epoch = int(data["epoch"])
        self.batch_in_epoch = int(data["batch_in_epoch"])
        self.best_value = float(data.get("best_value", math.inf))
        self.val_metrics = dict(data.get("val_metrics") or {})
        self.train_time = float(data.get("train_time_s", 0.0))
        self.structures_seen = int(data.get("structures_seen", 0))
        self.atoms_seen = int(data.get("atoms_seen", 0))
        if self.is_main:
            self._truncate_log(self.step)
        logger.info("resumed from %s at step %d", path, self.step)

    def _truncate_log(self, step: int) -> None:
        path = self.output / "log.csv"
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def _write_log(self, row: Dict[str, Any]) -> None:
        path = self.output / "log.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def _throughput(self) -> Dict[str, float]:
        t = max(self.train_time, 1e-9)
        return {"structures_per_s": self.structures_seen / t, "atoms_per_s": self.atoms_seen / t}

    # ------------------------------------------------------------------ validation
    def eval_model(self) -> TransIPModel:
        """A copy of the model (EMA weights when enabled) carrying the element references."""
        model = copy.deepcopy(self.model)
        state = self.ema.state if self.ema else self.model.state_dict()
        model.load_state_dict(self._model_state(state))
        return model.eval()

    def validate(self) -> Dict[str, float]:
        if len(self.data.val) == 0:
            return {}
        predictor = ModelPredictor(self.eval_model(), device=str(self.device))
        return evaluate(predictor, self.data.val, self.cfg.data.max_atoms_per_batch,
                        rotation_structures=self.cfg.run.val_rotation_structures, seed=self.cfg.seed)

    def _checkpoint(self, improved: bool) -> None:
        payload = self._payload()
        save_checkpoint(self.output / "last.ckpt", payload)
        if improved:
            save_checkpoint(self.output / "best.ckpt", payload)

    def _ddp_param_divergence(self) -> float:
        """Largest |θ_rank − θ_rank0| over all parameters and ranks (0 when DDP is in sync)."""
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in self.module.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    # ------------------------------------------------------------------ loop
    def _next_batch(self) -> List[int]:
        batches = self.sampler.batches(self.epoch)
        if self.batch_in_epoch >= len(batches):
            self.epoch += 1
            self.batch_in_epoch = 0
            batches = self.sampler.batches(self.epoch)
        idx = batches[self.batch_in_epoch]
        self.batch_in_epoch += 1
        return idx

    def train(self) -> Dict[str, Any]:
        """Run until ``optim.max_steps`` (or ``stop_after``); return the summary dict."""
        cfg = self.cfg
        end = cfg.optim.max_steps if self.stop_after is None else min(cfg.optim.max_steps, self.stop_after)
        net = self.ddp if self.ddp is not None else self.module
        self.module.train()
        bar = tqdm(total=end, initial=self.step, desc=f"train[{cfg.objective.symmetry}]",
                   disable=not (self.is_main and cfg.run.progress), dynamic_ncols=True)
        acc: Dict[str, float] = {}
        acc_steps = 0
        t_window = time.perf_counter()
        window_struct = window_atoms = 0
        while self.step < end:
            t0 = time.perf_counter()
            idx = self._next_batch()
            batch = collate(self.data.train, idx).to(self.device)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step * 7919 + self.rank)
            rotations = random_rotations(batch.size, gen).to(self.device)
            out = net(batch, rotations)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if cfg.optim.grad_clip and cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            stats = torch.stack([out[k].detach().to(torch.float64).cpu() for k in (
                "loss", "loss_energy", "loss_force", "loss_equiv", "energy_abs_err", "force_abs_err",
                "n_struct", "n_force")])
            n_atoms_batch = float(batch.n_atoms.sum())
            if self.world > 1:
                stats[:4] /= self.world
                dist.all_reduce(stats)
                counts = torch.tensor([float(batch.size), n_atoms_batch], dtype=torch.float64)
                dist.all_reduce(counts)
                n_struct_all, n_atoms_all = int(counts[0]), int(counts[1])
            else:
                n_struct_all, n_atoms_all = batch.size, int(n_atoms_batch)
            self.train_time += time.perf_counter() - t0
            self.structures_seen += n_struct_all
            self.atoms_seen += n_atoms_all
            window_struct += n_struct_all
            window_atoms += n_atoms_all
            for k, v in zip(("loss", "loss_energy", "loss_force", "loss_equiv", "e_err", "f_err", "n_s", "n_f"),
                            stats.tolist()):
                acc[k] = acc.get(k, 0.0) + v
            acc_steps += 1

            if not math.isfinite(float(stats[0])):
                raise FloatingPointError(f"loss is not finite at step {self.step}")
            row: Dict[str, Any] = {}
            if self.step % cfg.run.log_every == 0 or self.step == end:
                dt = max(time.perf_counter() - t_window, 1e-9)
                row = {
                    "step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                    "loss": acc["loss"] / acc_steps, "loss_energy": acc["loss_energy"] / acc_steps,
                    "loss_force": acc["loss_force"] / acc_steps, "loss_equiv": acc["loss_equiv"] / acc_steps,
                    "train_energy_mae_meV_per_atom": acc["e_err"] / max(acc["n_s"], 1.0) * MEV_PER_EV,
                    "train_force_mae_meV_per_A": acc["f_err"] / acc["n_f"] * MEV_PER_EV,
                    "structures_per_s": window_struct / dt, "atoms_per_s": window_atoms / dt,
                    "elapsed_s": self.train_time,
                }
                bar.set_postfix(loss=f"{row['loss']:.4g}", E=f"{row['train_energy_mae_meV_per_atom']:.1f}",
                                F=f"{row['train_force_mae_meV_per_A']:.0f}")
                acc, acc_steps = {}, 0
                t_window, window_struct, window_atoms = time.perf_counter(), 0, 0
            bar.update(1)

            do_val = self.step % cfg.run.val_every == 0 or self.step == end
            do_ckpt = do_val or self.step % cfg.run.checkpoint_every == 0
            improved = False
            if do_val and self.is_main:
                self.val_metrics = self.validate()
                if self.val_metrics:
                    value = self.val_metrics[cfg.run.best_metric]
                    improved = value < self.best_value
                    self.best_value = min(self.best_value, value)
                    row = row or {"step": self.step, "epoch": self.epoch, "elapsed_s": self.train_time}
                    row.update({f"val_{k}": v for k, v in self.val_metrics.items() if k != "n_structures"})
                    logger.info("step %d validation: %s", self.step,
                                ", ".join(f"{k} {v:.4g}" for k, v in self.val_metrics.items()))
            if row and self.is_main:
                self._write_log(row)
            if do_ckpt and self.is_main:
                self._checkpoint(improved)
            if self.world > 1 and do_ckpt:
                dist.barrier()
        bar.close()
        param_diff = self._ddp_param_divergence() if self.world > 1 else 0.0
        summary = {
            "step": self.step, "symmetry": cfg.objective.symmetry, "val_metrics": self.val_metrics,
            "best_" + cfg.run.best_metric: self.best_value, "train_time_s": self.train_time,
            **self._throughput(), "n_train": len(self.data.train), "n_val": len(self.data.val),
            "n_parameters": count_parameters(self.model), "world_size": self.world,
            "ddp_max_param_diff": param_diff,
        }
        if self.is_main:
            with open(self.output / "summary.json", "w") as f:
                json.dump(summary, f, indent=2)
            try:
                from transip_openmm.training.plots import plot_learning_curve

                plot_learning_curve(self.output / "log.csv", self.output / "learning_curve.png")
            except Exception as exc:  # a plot must never lose a finished run
                logger.warning("learning-curve plot failed: %s", exc)
        return summary
