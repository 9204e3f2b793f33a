"""``transip train CONFIG --output DIR [--max-steps N] [--symmetry MODE] [--resume]``.

Under ``torchrun --nproc_per_node K -m transip_openmm.cli train ...`` the same command
trains data-parallel on K processes (gloo on the CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from transip_openmm.training.config import load_config
from transip_openmm.training.objectives import SYMMETRY_MODES

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
    if not args.resume and (args.output / "last.ckpt").exists():
        logger.error("%s already holds a run (last.ckpt); use --resume or another --output", args.output)
        return 2
    from transip_openmm.training.trainer import Trainer  # heavy imports only when training

    trainer = Trainer(cfg, args.output, resume=args.resume, stop_after=args.stop_after)
    summary = trainer.train()
    if trainer.is_main:
        print(json.dumps(summary, indent=2))
    return 0
