"""``transip export CKPT -o model.pt [--topology FILE] [--charge Q] [--multiplicity M] [--atoms SEL]``.

Without ``--topology`` the file is generic: ``TransIPForce(path, topology)`` specialises it.
With it, the system (ML atoms, their indices, charge, multiplicity) is baked in and
``system.addForce(TransIPForce(path))`` needs nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="training checkpoint (.ckpt)")
    parser.add_argument("-o", "--output", required=True, help="exported TorchScript file to write")
    parser.add_argument("--topology", help="structure file (PDB, mmCIF, XYZ) whose system is baked in")
    parser.add_argument("--charge", type=int, default=0, help="total charge of the ML region (e)")
    parser.add_argument("--multiplicity", type=int, default=1, help="spin multiplicity 2S+1 of the ML region")
    parser.add_argument("--atoms", help="ML region: mdtraj selection, e.g. 'resname LIG' (default: all atoms)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="precision of the exported model (default float32)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA weights")
    parser.add_argument("--level", default=None,
                        help="level of theory whose energy head a multi-level model exports "
                             "(default: the model's default, the level of its data.train)")
    parser.add_argument("--frame-average", action="store_true",
                        help="average over the 24 octahedral rotations: energy exactly invariant to "
                             "them, closer to invariant for any rotation; 24 evaluations per step")


def run(args: argparse.Namespace) -> int:
    from transip_openmm.export.exporter import export_model

    from transip_openmm.artifacts import load_checkpoint, model_from_checkpoint
    from transip_openmm.errors import UsageError
    from transip_openmm.model import level_index
    from transip_openmm.system_spec import build_spec

    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise UsageError(f"--output {args.output} is the checkpoint itself: choose another file name")
    if not args.topology and (args.atoms or args.charge != 0 or args.multiplicity != 1):
        raise UsageError("--atoms, --charge and --multiplicity are baked only with --topology; "
                         "for a generic file pass them to TransIPForce instead")
    checkpoint = load_checkpoint(args.checkpoint)  # checked before anything is written
    try:
        level_index(list(checkpoint["model_config"].get("energy_levels") or []), args.level)
    except ValueError as exc:
        raise UsageError(f"--level: {args.checkpoint}: {exc}") from exc
    spec = None
    if args.topology:
        from transip_openmm.export.topology_io import load_structure

        topology, _ = load_structure(args.topology)
        spec = build_spec(topology, args.atoms, args.charge, args.multiplicity,
                          supported_elements=checkpoint["elements"], source=args.checkpoint)
    model = model_from_checkpoint(checkpoint, use_ema=not args.no_ema)
    meta = export_model(model, checkpoint, args.output, spec, args.dtype, source=Path(args.checkpoint).name,
                        frame_average=args.frame_average, level=args.level)
    summary = {k: meta[k] for k in ("format", "format_version", "elements", "baked", "dtype", "level_of_theory",
                                    "code_version")}
    if spec is not None:
        summary["n_particles"] = spec.n_particles
        summary["n_ml_atoms"] = len(spec.ml_indices)
        summary["charge"], summary["multiplicity"] = spec.charge, spec.multiplicity
    print(f"wrote {args.output}")
    print(json.dumps(summary, indent=1))
    return 0
