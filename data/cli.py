"""``transip data generate CONFIG.yaml --output DIR``: make labelled training data."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from transip_openmm.data.config import load_config

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="sample structures and label them into .aselmdb shards",
                         description="Sample structures (teacher MD, displacements, bond scans, close contacts) "
                                     "and label them (GFN2-xTB or wB97M-V) into .aselmdb shards.")
    gen.add_argument("config", help="YAML config, e.g. data/configs/water.yaml")
    gen.add_argument("--output", required=True, help="output folder (shards and manifest.json)")
    gen.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    gen.add_argument("--threads-per-worker", type=int, default=1, help="OpenMP threads per worker (default 1)")
    gen.add_argument("--max-structures", type=int, default=None, help="stop after about this many structures")
    gen.add_argument("--resume", action="store_true", help="continue the run in --output")
    gen.add_argument("--seed", type=int, default=None, help="random seed (default: the config's)")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from transip_openmm.data.generate import generate

    config = load_config(args.config)
    if args.seed is not None:
        config.seed = int(args.seed)
    summary = generate(config, Path(args.output), workers=args.workers, max_structures=args.max_structures,
                       resume=args.resume, threads_per_worker=args.threads_per_worker,
                       progress=not args.no_progress)
    logger.info("done: %d structures in %s (%d frames dropped)", summary.structures, args.output, summary.dropped)
    return 0
