"""``transip simulate PROTOCOL.yaml --output DIR [--max-steps N] [--resume] [--platform NAME]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from transip_openmm.simulations.protocol import PLATFORMS, load_protocol



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", type=Path, help="protocol YAML file")
    parser.add_argument("--output", "-o", type=Path, required=True, help="run directory")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap every stage at N MD steps (and N minimiser iterations): smoke runs")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --output from its last checkpoint")
    parser.add_argument("--platform", choices=PLATFORMS, default=None,
                        help="OpenMM platform (overrides the protocol's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the protocol; a ``ProtocolError``/``SimulationError`` reaches ``transip_openmm.cli.main``,
    which prints it as one line (exit status 2)."""
    from transip_openmm.simulations.runner import run_protocol

    protocol = load_protocol(args.protocol).capped(args.max_steps)
    info = run_protocol(protocol, args.output, resume=args.resume, platform=args.platform,
                        show_progress=not args.no_progress)
    print(f"run directory: {args.output}")
    if info.get("trajectory"):
        print(f"trajectory:    {args.output / info['trajectory']} ({info['trajectory_frames']} frames)")
    print(f"state data:    {args.output / 'state_data.csv'}")
    if info.get("ns_per_day"):
        print(f"speed:         {info['md_wall_s_per_ps']:.2f} s of MD per simulated ps "
              f"({info['wall_s_per_ps']:.2f} s per ps with setup) on {info['platform']}")
    return 0
