"""``transip demo --output DIR``: a short alanine-dipeptide-in-vacuum run with the shipped
model, analysed, ending with the paths of the trajectory and the plots. Errors (a missing
model, an --output that already holds a run) reach ``transip_openmm.cli.main``: one line."""

from __future__ import annotations

import argparse
from pathlib import Path


DEMO_PROTOCOL = "alanine-dipeptide-vacuum.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", type=Path, default=Path("transip_demo"), help="run directory")
    parser.add_argument("--steps", type=int, default=2000,
                        help="MD steps per stage (0.5 fs each; default 2000 = 1 ps)")
    parser.add_argument("--model", default="default",
                        help="a shipped model's name (default, local) or an exported model file")
    parser.add_argument("--platform", default=None, help="OpenMM platform (default: fastest available)")


def run(args: argparse.Namespace) -> int:
    from transip_openmm import SHIPPED_MODELS, shipped_model_path
    from transip_openmm.artifacts import read_exported_metadata
    from transip_openmm.simulations.analyze_cli import analyze_run
    from transip_openmm.simulations.protocol import (
        ProtocolError,
        bundled_protocols_dir,
        load_protocol,
    )
    from transip_openmm.simulations.runner import PROGRESS_FILE, SimulationError, run_protocol

    if (args.output / PROGRESS_FILE).exists():
        raise SimulationError(f"--output: {args.output} already holds a run; choose another --output "
                              "(or delete that directory)")
    protocol = load_protocol(bundled_protocols_dir() / DEMO_PROTOCOL).capped(args.steps)
    if args.model in SHIPPED_MODELS:
        try:
            shipped_model_path(args.model)
        except FileNotFoundError as exc:
            raise ProtocolError(f"{exc}; pass --model FILE (an exported model)") from exc
        protocol.model.path = args.model
    else:
        model_path = Path(args.model).resolve()
        if not model_path.is_file():
            raise ProtocolError(f"--model: {model_path} does not exist; pass a shipped model's name "
                                f"({', '.join(sorted(SHIPPED_MODELS))}) or an exported model file")
        read_exported_metadata(model_path)  # a checkpoint, a text file or a foreign file: one line, before any output
        protocol.model.path = str(model_path)
    info = run_protocol(protocol, args.output, platform=args.platform)
    summary = analyze_run(args.output, args.output / "analysis")
    print()
    print(f"demo finished: {info['md_steps_this_run']} MD steps of {protocol.name} on {info['platform']}"
          + (f", {info['ns_per_day']:.2f} ns/day" if info.get("ns_per_day") else ""))
    print(f"trajectory: {args.output / info['trajectory']}" if info.get("trajectory") else "trajectory: none")
    print(f"state data: {args.output / 'state_data.csv'}")
    print(f"summary:    {args.output / 'analysis' / 'summary.json'}")
    for plot in summary["plots"]:
        print(f"plot:       {plot}")
    return 0
