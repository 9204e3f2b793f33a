"""OpenMM MD speed: TransIP (each TransIPForce backend) against MACE through openmm-ml.

    python benchmarks/md_speed.py [--quick] [--json OUT.json] [--platform CPU]

Systems (all atoms ML, no MM terms): alanine dipeptide in vacuum (22 atoms) and a periodic
TIP3P-geometry water box (~1000 atoms). Models: TransIP at the candidate default sizes
(random weights; speed does not depend on them), with local attention on the water box
(absolute positions: the box is made whole around one atom; relative positions: true periodic
images), with 24-frame averaging on alanine dipeptide, the shipped models (``transip-default``,
``transip-local``) when present, ``transip-local-rebuilt`` (the shipped local weights in this
version's code, :func:`~transip_openmm.export.wrapper.rebuild_exported`: the shipped file predates
capture-safe neighbour lists, so only the rebuilt one runs in a CUDA graph on the water box),
and MACE with MACE-OFF23 small/medium hyper-parameters (random weights) through
``MLPotential('mace', modelPath=...)``. Langevin dynamics with a 0.05 fs step (random
models must not blow up; the cost of a step does not depend on its length).
JSON: a list of rows ``model, backend, system, n_atoms, steps_per_s, ms_per_step,
ratio_vs_mace_small``; machine facts in ``OUT.meta.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO,
    TRANSIP_SIZES,
    best_rate,
    load_average,
    machine_info,
    print_table,
    random_transip,
    setup_logging,
    write_json,
)

import torch  # noqa: E402  (before openmm-torch)
import openmm as mm  # noqa: E402
import openmm.app as app  # noqa: E402
import openmm.unit as u  # noqa: E402

logger = logging.getLogger("benchmarks.md_speed")

WATER_BOX_EDGE_NM = 2.15  # ~330 molecules, ~1000 atoms


def make_system_inputs(name: str):
    """(topology, positions) of a benchmark system: openmmtools' test systems, or the same
    structures built with openmm.app where openmmtools is not installed (the GPU script)."""
    try:
        from openmmtools import testsystems
    except ImportError:
        testsystems = None
    if name == "alanine-dipeptide":
        if testsystems is None:  # openmmtools' AlanineDipeptideVacuum, written as PDB
            pdb = app.PDBFile(str(REPO / "tests" / "data" / "alanine_dipeptide.pdb"))
            return pdb.topology, pdb.positions
        ts = testsystems.AlanineDipeptideVacuum(constraints=None)
    elif name == "water-box":
        if testsystems is None:  # what openmmtools' WaterBox does
            modeller = app.Modeller(app.Topology(), u.Quantity([], u.nanometer))
            modeller.addSolvent(app.ForceField("tip3p.xml"), model="tip3p",
                                boxSize=mm.Vec3(*[WATER_BOX_EDGE_NM] * 3) * u.nanometer)
            return modeller.getTopology(), modeller.getPositions()
        ts = testsystems.WaterBox(box_edge=WATER_BOX_EDGE_NM * u.nanometer, cutoff=0.9 * u.nanometer,
                                  constrained=False)
    else:
        raise ValueError(name)
    return ts.topology, ts.positions


def bare_system(topology) -> mm.System:
    """Particles with masses (and the box) and no forces."""
    system = mm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    box = topology.getPeriodicBoxVectors()
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    return system


def steps_per_second(system: mm.System, positions, platform: str, target_s: float, blocks: int) -> float:
    """Best MD steps/s of ``system`` over timed blocks (after warm-up steps)."""
    integrator = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1.0 / u.picosecond, 0.05 * u.femtosecond)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    integrator.step(3)  # first calls: TorchScript profiling/optimisation, allocations
    rate = best_rate(integrator.step, target_s, blocks=blocks)
    del context
    return rate


def export_transip(model, path: Path) -> Path:
    """Generic TorchScript export of ``model`` (float32) for TransIPForce."""
    from transip_openmm.export.exporter import export_model

    checkpoint = {"model_config": dict(getattr(model, "config_dict", {})), "elements": [1, 6, 7, 8]}
    if not checkpoint["model_config"]:
        checkpoint["model_config"] = dict(model.model.config_dict)
    export_model(model, checkpoint, path, spec=None, dtype="float32")
    return path


def rebuild_file(path: Path, out: Path) -> Path:
    """An exported file rebuilt with this version's code (same weights and metadata)."""
    import json

    from transip_openmm.artifacts import METADATA_ENTRY
    from transip_openmm.export.wrapper import rebuild_exported
    from transip_openmm.force import load_exported

    module, meta = load_exported(path)
    scripted = torch.jit.script(rebuild_exported(module, meta))
    torch.jit.save(scripted, str(out), _extra_files={METADATA_ENTRY: json.dumps(meta)})
    return out


def transip_force(factory, path, topology, backend: str, device: Optional[str]):
    """TransIPForce for a benchmark backend name: ``torch``, ``python`` or ``python-graphs``
    (python backend with the model captured in a CUDA graph)."""
    if backend == "python-graphs":
        return factory(path, topology, backend="python", device=device, use_cuda_graphs=True)
    return factory(path, topology, backend=backend, device=device)


def transip_cases(quick: bool) -> List[Dict[str, Any]]:
    """(model name, config, systems, frame averaging) of the TransIP rows."""
    sizes = dict(TRANSIP_SIZES)
    if quick:
        sizes.pop("transip-d96-L4")
    cases = [{"model": n, "config": c, "systems": ["alanine-dipeptide", "water-box"], "frames": False}
             for n, c in sizes.items()]
    cases.append({"model": "transip-d128-L4-local5A", "config": {**TRANSIP_SIZES["transip-d128-L4"],
                  "attention_cutoff": 5.0}, "systems": ["water-box"], "frames": False})
    cases.append({"model": "transip-d64-L3-local5A", "config": {**TRANSIP_SIZES["transip-d64-L3"],
                  "attention_cutoff": 5.0}, "systems": ["water-box"], "frames": False})
    cases.append({"model": "transip-d128-L4-local5A-relative", "config": {
                  **TRANSIP_SIZES["transip-d128-L4"], "attention_cutoff": 5.0, "position_encoding": "relative"},
                  "systems": ["water-box"], "frames": False})
    cases.append({"model": "transip-d64-L3-frames24", "config": TRANSIP_SIZES["transip-d64-L3"],
                  "systems": ["alanine-dipeptide"], "frames": True})
    return cases


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from transip_openmm import SHIPPED_MODELS, TransIPForce, shipped_model_path

    systems = {name: make_system_inputs(name) for name in args.systems}
    target_s, blocks = (0.6, 2) if args.quick else (2.0, 3)
    rows: List[Dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="transip-md-speed-"))

    def record(model: str, backend: str, system_name: str, system: mm.System) -> None:
        topology, positions = systems[system_name]
        n_atoms = topology.getNumAtoms()
        load = load_average()
        try:
            rate = steps_per_second(system, positions, args.platform, target_s, blocks)
        except Exception as exc:  # a row that fails must not hide the others
            logger.warning("%s/%s on %s failed: %s", model, backend, system_name, exc)
            rows.append({"model": model, "backend": backend, "system": system_name, "n_atoms": n_atoms,
                         "steps_per_s": None, "error": str(exc)[:200]})
            return
        rows.append({"model": model, "backend": backend, "system": system_name, "n_atoms": n_atoms,
                     "steps_per_s": rate, "ms_per_step": 1e3 / rate, "load_before": load})
        write_json(args.json, rows, args.meta)  # as it goes: a run stopped early keeps its rows
        logger.info("%-26s %-10s %-18s %6d atoms  %9.2f steps/s", model, backend, system_name, n_atoms, rate)

    # TransIP, random weights, every backend.
    for case in transip_cases(args.quick):
        if args.models and case["model"] not in args.models:
            continue
        model = random_transip(case["config"])
        if case["frames"]:
            from transip_openmm.frames import FrameAveragedModel

            model = FrameAveragedModel(model)
        path = export_transip(model, tmp / f"{case['model']}.pt")
        for system_name in case["systems"]:
            if system_name not in systems:
                continue
            topology, _ = systems[system_name]
            for backend in args.backends:
                system = bare_system(topology)
                try:
                    system.addForce(transip_force(TransIPForce, path, topology, backend, args.device))
                except Exception as exc:
                    logger.warning("%s/%s: %s", case["model"], backend, exc)
                    continue
                record(case["model"], backend, system_name, system)

    # The shipped models (``transip-default``, ``transip-local``), and the local one rebuilt.
    shipped_files: Dict[str, Any] = {}
    for shipped in SHIPPED_MODELS:
        try:
            shipped_files[f"transip-{shipped}"] = shipped_model_path(shipped)
        except FileNotFoundError:
            logger.info("no shipped %s model: its rows skipped", shipped)
    if "transip-local" in shipped_files and (not args.models or "transip-local-rebuilt" in args.models):
        shipped_files["transip-local-rebuilt"] = rebuild_file(shipped_files["transip-local"],
                                                              tmp / "local-rebuilt.pt")
    for name, path in shipped_files.items():
        if args.models and name not in args.models:
            continue
        for system_name, (topology, _) in systems.items():
            for backend in args.backends:
                try:
                    force = transip_force(TransIPForce, path, topology, backend, args.device)
                except Exception as exc:
                    logger.warning("%s on %s: %s", name, system_name, exc)
                    continue
                system = bare_system(topology)
                system.addForce(force)
                record(name, backend, system_name, system)

    # MACE through openmm-ml (its PythonForce).
    if not args.no_mace:
        try:
            mace_rows(args, systems, tmp, record)
        except Exception as exc:  # keep the TransIP rows
            logger.warning("MACE rows failed: %s", exc)

    for row in rows:
        ref = [r for r in rows if r["model"] == "mace-off-small" and r["system"] == row["system"]
               and r.get("steps_per_s")]
        if ref and row.get("steps_per_s"):
            row["ratio_vs_mace_small"] = row["steps_per_s"] / ref[0]["steps_per_s"]
    return rows


def mace_rows(args: argparse.Namespace, systems: Dict[str, Any], tmp: Path, record) -> None:
    """MACE-OFF-like models (random weights) through ``MLPotential('mace')``, one row each."""
    from mace_models import MACE_OFF, save_mace
    from openmmml import MLPotential

    sizes = ["mace-off-small"] if args.quick and args.mace_small_only else list(MACE_OFF)
    for size in sizes:
        if args.models and size not in args.models:
            continue
        path = save_mace(size, tmp / f"{size}.model")
        potential = MLPotential("mace", modelPath=str(path))
        for system_name, (topology, _) in systems.items():
            system = potential.createSystem(topology, precision="single",
                                            device=args.device if args.device else None)
            record(size, "openmm-ml", system_name, system)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, shorter timing blocks")
    parser.add_argument("--json", default=None, help="write the rows to this JSON file")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, CUDA, ...)")
    parser.add_argument("--device", default=None, help="torch device of python-backend/MACE models")
    parser.add_argument("--backends", default="torch,python",
                        help="TransIPForce backends, comma-separated: torch, python, python-graphs (CUDA)")
    parser.add_argument("--systems", default="alanine-dipeptide,water-box")
    parser.add_argument("--models", default="", help="only these model names (comma-separated)")
    parser.add_argument("--no-mace", action="store_true")
    parser.add_argument("--mace-small-only", action="store_true", help="with --quick: skip MACE-OFF-medium")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch default; 1 is fastest for small systems "
                             "and robust on a busy machine)")
    args = parser.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.systems = [s for s in args.systems.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = machine_info()
    meta.update({"benchmark": "md_speed", "platform": args.platform, "quick": args.quick,
                 "command": " ".join(sys.argv)})
    args.meta = meta
    t0 = time.time()
    rows = run(args)
    meta["load_average_1min_end"] = load_average()
    meta["wall_s"] = time.time() - t0
    print_table(rows, ["model", "backend", "system", "n_atoms", "steps_per_s", "ms_per_step",
                       "ratio_vs_mace_small", "load_before"])
    print(f"load average (1 min) at start {meta['load_average_1min']}, at end {meta['load_average_1min_end']}")
    write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
