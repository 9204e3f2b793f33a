"""``transip train CONFIG --output DIR [--max-steps N] [--symmetry MODE] [--resume]``.

Under ``torchrun --nproc_per_node K -m transip_openmm.cli train ...`` the same command
trains data-parallel on K processes (gloo on the CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional

from transip_openmm.training.config import ConfigError, TrainConfig, load_config
from transip_openmm.training.dataset import DataError
from transip_openmm.training.objectives import SYMMETRY_MODES

from transip_openmm.errors import UsageError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML training config")
    parser.add_argument("--output", "-o", type=Path, required=True, help="output directory")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="total optimiser steps (overrides optim.max_steps; sets the LR schedule)")
    parser.add_argument("--symmetry", choices=SYMMETRY_MODES, default=None,
                        help="override objective.symmetry")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.ckpt")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop (and checkpoint) after this step without changing the schedule")
    parser.add_argument("--device", default=None, help="override run.device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--seed", type=int, default=None, help="override seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.max_steps is not None:
        cfg.optim.max_steps = int(args.max_steps)
    if args.symmetry is not None:
        cfg.objective.symmetry = args.symmetry
    if args.device is not None:
        cfg.run.device = args.device
    if args.seed is not None:
        cfg.seed = int(args.seed)
    if args.no_progress:
        cfg.run.progress = False
    cfg.validate()
    check_run_inputs(cfg, args.output, args.resume, args.stop_after)
    from transip_openmm.training.trainer import Trainer  # heavy imports only when training

    trainer = Trainer(cfg, args.output, resume=args.resume, stop_after=args.stop_after)
    summary = trainer.train()
    if trainer.is_main:
        print(json.dumps(summary, indent=2))
    return 0


def check_run_inputs(cfg: TrainConfig, output: Path, resume: bool, stop_after: Optional[int]) -> None:
    """Refuse, before anything is written, what would fail later: missing data files, an
    output folder that holds another run (or no run to resume), an absent CUDA device."""
    for section in ("train", "val", "extra_train", "force_only"):
        for name in getattr(cfg.data, section):
            path = cfg.resolve(name)
            if not (path.exists() or any(path.parent.glob(path.name))):  # a file, a folder or a glob
                raise DataError(f"data.{section} file {name!r} does not exist (looked for {path}; relative "
                                "paths are resolved against data.root, relative to the config file)")
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    has_run = (output / "last.ckpt").exists()
    if resume and not has_run:
        raise UsageError(f"nothing to resume: {output / 'last.ckpt'} does not exist; drop --resume to start a run")
    if not resume and has_run:
        raise UsageError(f"{output} already holds a run (last.ckpt); use --resume or another --output")
    if stop_after is not None and stop_after < 1:
        raise UsageError(f"--stop-after must be at least 1, got {stop_after}")
    if cfg.run.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"run.device is {cfg.run.device!r} but torch sees no CUDA device; use --device cpu")
