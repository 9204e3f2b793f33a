"""The trainer: data → model → losses → AdamW steps → logs, checkpoints, validation.

Data: a DataLoader whose workers (``run.num_workers``) decode and collate batches of a
lazy sharded dataset or of records in memory. Reproducibility: the batch order of epoch e
is a function of (seed, e) and the random rotations of step s are drawn from a generator
seeded with (seed, s, rank, micro-batch), so a run resumed from ``last.ckpt`` (which
stores the epoch and the batches of it already consumed) repeats the uninterrupted run's
batches and steps exactly, also mid-epoch. Distributed training (``torchrun``) uses
DistributedDataParallel; every rank builds the same batch plan and takes every
world_size-th batch. The element references are fitted once (streaming) and owned by
:class:`~transip_openmm.training.checkpoint.TrainingCheckpoint`'s ``element_energies``.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm
from transip_openmm.atomic_io import remove_stale_temporaries
from transip_openmm.training.batching import Batch, MaxAtomsBatchSampler, make_loader
from transip_openmm.training.checkpoint import DataPosition, TrainingCheckpoint, with_references, without_references
from transip_openmm.training.config import ConfigError, TrainConfig, config_from_dict, save_config
from transip_openmm.training.dataset import (
    DataError,
    LabelledDataset,
    charge_multiplicity_pairs,
    concatenate,
    levels_of_theory,
)
from transip_openmm.training.evaluate import ModelPredictor, evaluate
from transip_openmm.training.filters import drop_large_forces
from transip_openmm.training.objectives import TrainingModule, random_rotations
from transip_openmm.training.precision import BlockAutocast, peak_memory_mb
from transip_openmm.training.readers import read_datasets
from transip_openmm.training.references import DataStatistics, data_statistics
from transip_openmm.training.shards import find_shards, is_shard_spec, open_shards
from transip_openmm.training.splits import config_parts

from transip_openmm.model import TransIPModel, count_parameters
from transip_openmm.units import MEV_PER_EV

logger = logging.getLogger(__name__)

LOG_FIELDS = [
    "step", "epoch", "lr", "loss", "loss_energy", "loss_force", "loss_equiv",
    "train_energy_mae_meV_per_atom", "train_force_mae_meV_per_A", "structures_per_s", "atoms_per_s",
    "peak_memory_MB",
    "val_energy_mae_meV", "val_energy_mae_meV_per_atom", "val_force_mae_meV_per_A",
    "val_force_rmse_meV_per_A", "val_force_cos_mean", "val_rot_energy_std_meV", "val_rot_force_err_rel",
    "elapsed_s",
]


@dataclass
class PreparedData:
    """The opened, split data of a run. ``levels``: the model's energy heads (levels of theory,
    the default first; [] for one unnamed level); ``level_codes``: each record's
    ``level_of_theory`` string -> its head (None for a single-level run)."""

    train: LabelledDataset
    val: LabelledDataset
    elements: List[int]
    data_hash: str
    levels: List[str] = dataclasses.field(default_factory=list)
    level_codes: Optional[Dict[str, int]] = None


def _lazy(path: Path, lazy: Optional[bool]) -> bool:
    shard_like = is_shard_spec(path)
    if lazy and not shard_like:
        raise ConfigError(f"data.lazy is true but {path} is not .aselmdb shards (a file, a directory or a glob): "
                          "only shards are read lazily; set data.lazy to null to read other files into memory")
    return shard_like if lazy is None else bool(lazy)


def open_data(cfg: TrainConfig, paths: Sequence[str]) -> LabelledDataset:
    """The records of ``paths`` (files, directories or globs of shards, resolved against
    ``data.root``): consecutive shard paths as one lazy dataset when ``data.lazy`` allows,
    everything else read into memory; in the order given."""
    elements = cfg.data.elements
    parts: List[LabelledDataset] = []
    pending: List[Path] = []
    for raw in paths:
        path = cfg.resolve(raw)
        if _lazy(path, cfg.data.lazy):
            pending.append(path)
            continue
        if pending:
            parts.append(open_shards(pending, elements, cfg.run.num_workers))
            pending = []
        files = find_shards(path) if (path.is_dir() or not path.exists()) else [path]
        parts.append(read_datasets(files, elements))
    if pending:
        parts.append(open_shards(pending, elements, cfg.run.num_workers))
    return concatenate(parts)


def energy_heads(cfg: TrainConfig, train: LabelledDataset, extra: Optional[LabelledDataset],
                 val: LabelledDataset) -> Tuple[List[str], Dict[str, int]]:
    """The energy heads of a run: the level of ``data.train`` (the default, head 0) and then the
    other levels of ``data.extra_train``, sorted; and the map from each record's stated level
    ("" resolved to ``data.level_of_theory``) to its head."""
    def resolve(level: str) -> str:
        return level or cfg.data.level_of_theory

    main = sorted({resolve(x) for x in levels_of_theory(train)})
    if len(main) > 1:
        raise DataError(f"data.train mixes energies of {len(main)} levels of theory ({', '.join(main)}): "
                        "one set of element references cannot serve them; keep one level in data.train and "
                        "move the others to data.extra_train (own references and energy head) or data.force_only")
    primary = main[0] if main else ""
    raw = set(levels_of_theory(train)) | set(levels_of_theory(val))
    others: List[str] = []
    if extra is not None:
        extra_raw = set(levels_of_theory(extra))
        raw |= extra_raw
        others = sorted({resolve(x) for x in extra_raw} - {primary})
        if others and not primary:
            raise ConfigError("data.extra_train adds levels of theory (" + ", ".join(others) + ") but the records of "
                              "data.train state none: name their level with data.level_of_theory (OMol25: "
                              "wB97M-V/def2-TZVPD)")
    wrong = sorted({resolve(x) for x in levels_of_theory(val)} - {primary})
    if wrong:
        raise DataError(f"the validation data hold energies at {', '.join(wrong)}, not at the level of data.train "
                        f"({primary or 'unstated'}): validation picks the checkpoint on the default level only")
    heads = [primary] + others
    return heads, {x: heads.index(resolve(x)) for x in raw}


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Open, validate and split the data of ``cfg`` (lazily where ``data.lazy`` allows)."""
    elements = cfg.data.elements
    full = open_data(cfg, cfg.data.train)
    if cfg.data.val:  # validation files: opened here (lazily when they are shards)
        val = open_data(cfg, cfg.data.val)
        train = full
        if not cfg.data.test and cfg.data.test_fraction > 0:  # hold a test part out of the training files
            no_val = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val=[], val_fraction=0.0))
            train, _, _ = config_parts(no_val, full)
    else:
        train, val, _ = config_parts(cfg, full)  # a held-out test part is never seen here
    if cfg.data.max_train is not None:
        train = train.subset(range(min(cfg.data.max_train, len(train))))
    if cfg.data.max_val is not None:
        val = val.subset(range(min(cfg.data.max_val, len(val))))
    extra = open_data(cfg, cfg.data.extra_train) if cfg.data.extra_train else None
    if extra is not None and cfg.data.max_force is not None:
        extra, _ = drop_large_forces(extra, float(cfg.data.max_force), cfg.run.num_workers, "data.extra_train")
    heads, codes = energy_heads(cfg, train, extra, val)
    if cfg.data.train_repeats > 1:
        train = concatenate([train] * cfg.data.train_repeats)
    if extra is not None:
        logger.info("extra training data: %d structures (levels of theory: %s)", len(extra),
                    ", ".join(levels_of_theory(extra)) or "unstated")
        train = concatenate([train, extra])
    if cfg.data.force_only:
        force_only = open_data(cfg, cfg.data.force_only).without_energies()
        logger.info("force-only data: %d structures (energies unused)", len(force_only))
        for level in levels_of_theory(force_only):
            codes.setdefault(level, 0)  # energies unused: any head serves their forces
        train = concatenate([train, force_only])
    if elements is None:
        elements = train.elements
    val.validate(elements)  # elements in validation but absent from training are an error
    data_hash = "train:" + train.content_hash() + ";val:" + val.content_hash()
    if len(heads) == 1:  # single-level: no head to choose, and an unstated level stays unnamed
        return PreparedData(train, val, [int(z) for z in elements], data_hash, [h for h in heads if h])
    logger.info("multi-fidelity: %d energy heads on one trunk: %s (the first is the default)", len(heads),
                ", ".join(heads))
    return PreparedData(train, val, [int(z) for z in elements], data_hash, heads, codes)


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


def local_device(device: str) -> torch.device:
    """The device of this process: under torchrun, ``cuda`` means this node's GPU ``LOCAL_RANK``."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


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
        self.device = local_device(cfg.run.device)
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
            if resume:
                remove_stale_temporaries(self.output)  # left by a checkpoint write the killed run did not finish
        self.resumed: Optional[TrainingCheckpoint] = TrainingCheckpoint.load(self.output / "last.ckpt") \
            if resume else None
        stats = self._statistics()
        #: the element references (eV, float64): fitted once, never written into the live model
        self.element_energies = stats.element_energies
        self.refs = torch.from_numpy(self.element_energies)
        self.energy_norm = stats.per_atom_mae
        self.force_rms = stats.force_rms
        es = cfg.objective.energy_scale
        self.energy_scale = (stats.per_atom_std if es == "residual" else self.force_rms if es == "force_rms"
                             else float(es))
        if self.resumed is not None:
            self.energy_scale = self.resumed.energy_scale
        if not self.energy_scale > 0:
            raise ConfigError(f"energy scale must be positive, got {self.energy_scale}")

        #: (charge, multiplicity) pairs of the training data (the exported model warns outside them)
        self.charge_multiplicity = charge_multiplicity_pairs(self.data.train)
        self.model_config = dataclasses.replace(cfg.model_config(), energy_levels=list(self.data.levels))
        cfg.model = self.model_config.to_dict()  # resolved: every model default filled in
        self.model = TransIPModel(self.model_config)
        self.autocast = (BlockAutocast(self.model.blocks, self.device.type)
                         if cfg.run.precision == "bf16" else None)
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
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
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
        self.loader = make_loader(self.data.train, self.sampler, cfg.run.num_workers, cfg.run.prefetch_factor,
                                  pin_memory=self.device.type == "cuda", levels=self.data.level_codes)
        self.step = 0
        self.position = DataPosition()
        #: set to a list to record the structure indices of every batch this process consumes
        self.batch_log: Optional[List[List[int]]] = None
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
        if self.resumed is not None:
            self._load(self.resumed, self.output / "last.ckpt")
            self.resumed = None  # its tensors now live in the model and the optimiser
        elif self.is_main:  # a fresh run: drop the log rows of a run killed before its first checkpoint
            self._truncate_log(0)
        if self.is_main:
            save_config(cfg, self.output / "config.yaml")

    # ------------------------------------------------------------------ state
    def _statistics(self) -> DataStatistics:
        """References and normalisation: the checkpoint's when resuming, else one streaming fit."""
        ckpt = self.resumed
        if ckpt is not None and ckpt.force_rms > 0:
            return DataStatistics(ckpt.element_energies, ckpt.energy_scale, ckpt.energy_norm, ckpt.force_rms, 0, 0)
        return data_statistics(self.data.train, self.cfg.data.stats_sample, self.cfg.seed, self.cfg.run.num_workers,
                               self.data.level_codes)

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def batch_in_epoch(self) -> int:
        return self.position.batch_in_epoch

    def checkpoint(self) -> TrainingCheckpoint:
        """The run's state now, as written to ``last.ckpt``."""
        return TrainingCheckpoint(
            model_config=self.model_config.to_dict(),
            model_state=with_references(self.model.state_dict(), self.element_energies),
            elements=list(self.data.elements),
            element_energies=self.element_energies,
            step=self.step,
            position=dataclasses.replace(self.position),
            ema_state=with_references(self.ema.state, self.element_energies) if self.ema else None,
            transforms_state=self.module.mode.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(),
            rng_state={"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            config=self.cfg.to_dict(),
            data_hash=self.data.data_hash,
            symmetry=self.cfg.objective.symmetry,
            training_charge_multiplicity=[list(p) for p in self.charge_multiplicity],
            energy_scale=self.energy_scale,
            energy_norm=self.energy_norm,
            force_rms=self.force_rms,
            val_metrics=dict(self.val_metrics),
            best_value=self.best_value,
            throughput=self._throughput(),
            train_time_s=self.train_time,
            structures_seen=self.structures_seen,
            atoms_seen=self.atoms_seen,
        )

    @staticmethod
    def _comparable(config: Dict[str, Any]) -> Dict[str, Any]:
        """A config dict with every default filled in, less what may change on resumption."""
        out = config_from_dict({k: v for k, v in config.items() if k != "config_dir"}).to_dict()
        for key in ("run", "config_dir"):
            out.pop(key, None)
        out["optim"].pop("max_steps", None)
        return out

    def _load(self, ckpt: TrainingCheckpoint, path: Path) -> None:
        if ckpt.data_hash != self.data.data_hash:
            raise ConfigError(f"cannot resume from {path}: the data differ from the checkpoint's (data hash)")
        if self._comparable(ckpt.config) != self._comparable(self.cfg.to_dict()):
            raise ConfigError(f"cannot resume from {path}: the config differs from the checkpoint's")
        self.model.load_state_dict(without_references(ckpt.model_state))
        self.module.mode.load_state_dict(ckpt.transforms_state)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.scheduler.load_state_dict(ckpt.scheduler_state)
        if self.ema is not None and ckpt.ema_state is not None:
            self.ema.state = {k: v.clone().to(self.device) for k, v in without_references(ckpt.ema_state).items()}
        rng = ckpt.rng_state
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.step = ckpt.step
        self.position = dataclasses.replace(ckpt.position)
        self.best_value = ckpt.best_value
        self.val_metrics = dict(ckpt.val_metrics)
        self.train_time = ckpt.train_time_s
        self.structures_seen = ckpt.structures_seen
        self.atoms_seen = ckpt.atoms_seen
        if self.is_main:
            self._truncate_log(self.step)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step,
                    self.position.epoch, self.position.batch_in_epoch)

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
        """A float32 copy of the model (EMA weights when enabled) carrying the element references."""
        model = TransIPModel(self.model_config).to(self.device)
        state = self.ema.state if self.ema else self.model.state_dict()
        model.load_state_dict(with_references(state, self.element_energies))
        return model.eval()

    def validate(self) -> Dict[str, float]:
        if len(self.data.val) == 0:
            return {}
        predictor = ModelPredictor(self.eval_model(), device=str(self.device))
        return evaluate(predictor, self.data.val, self.cfg.data.max_atoms_per_batch,
                        rotation_structures=self.cfg.run.val_rotation_structures, seed=self.cfg.seed)

    def _checkpoint(self, improved: bool) -> None:
        ckpt = self.checkpoint()
        ckpt.save(self.output / "last.ckpt")
        if improved:
            ckpt.save(self.output / "best.ckpt")

    def _ddp_param_divergence(self) -> float:
        """Largest |θ_rank − θ_rank0| over all parameters and ranks (0 when DDP is in sync)."""
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in self.module.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    # ------------------------------------------------------------------ loop
    def _batches(self) -> Iterator[Batch]:
        """Collated batches from the current data position on, epoch after epoch; the
        position counts a batch as consumed when it is handed out."""
        while True:
            self.sampler.set_epoch(self.position.epoch, self.position.batch_in_epoch)
            for batch in self.loader:
                self.position.batch_in_epoch += 1
                if self.batch_log is not None:
                    self.batch_log.append(batch.indices.tolist())
                yield batch
            self.position = DataPosition(self.position.epoch + 1, 0)

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
        n_micro = cfg.optim.accumulate
        batches = self._batches()
        while self.step < end:
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            stats = torch.zeros(8, dtype=torch.float64)
            counts = torch.zeros(2, dtype=torch.float64)
            for micro in range(n_micro):
                batch = next(batches).to(self.device)
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step * 7919 + self.rank
                                                    + micro * 15_485_863)
                rotations = random_rotations(batch.size, gen).to(self.device)
                last = micro == n_micro - 1
                # DDP: gradients are all-reduced once per step, on the last micro-batch
                sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
                with sync:
                    out = net(batch, rotations)
                    (out["loss"] / n_micro).backward()
                micro_stats = torch.stack([out[k].detach().to(torch.float64).cpu() for k in (
                    "loss", "loss_energy", "loss_force", "loss_equiv", "energy_abs_err", "force_abs_err",
                    "n_struct", "n_force")])
                micro_stats[:4] /= n_micro  # losses: mean over micro-batches; errors and counts: sums
                stats += micro_stats
                counts += torch.tensor([float(batch.size), float(batch.n_atoms.sum())], dtype=torch.float64)
            if cfg.optim.grad_clip and cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step += 1
            if self.world > 1:
                stats[:4] /= self.world
                dist.all_reduce(stats)
                dist.all_reduce(counts)
            n_struct_all, n_atoms_all = int(counts[0]), int(counts[1])
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
                    "peak_memory_MB": peak_memory_mb(self.device), "elapsed_s": self.train_time,
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
            "ddp_max_param_diff": param_diff, "peak_memory_MB": peak_memory_mb(self.device),
            "num_workers": cfg.run.num_workers, "precision": cfg.run.precision,
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
