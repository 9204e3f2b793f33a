"""MD stability screen of exported models: does the molecule stay intact at 300 K?

    python benchmarks/stability.py [--quick] [--models default runs/x/model.pt ...]
        [--time-ps 10] [--seeds 1 2 3] [--json OUT.json] [--plot OUT.png]

For each model and seed: alanine dipeptide in vacuum (every atom ML, OpenMM CPU platform), local
energy minimisation (200 iterations), then Langevin dynamics at 300 K (friction 1/ps,
0.5 fs) for ``--time-ps``. Every 0.1 ps it records the largest bond-length ratio against
the input structure (bonds from the PDB topology), the instantaneous temperature, the
potential energy and the largest atomic force. A bond ratio above 1.3 counts as broken; a
non-bonded pair within 1.1 × the sum of covalent radii as a new bond (changed chemistry).
This is the cheap screen to pass before a 100 ps protocol run. JSON: a list of rows
``model, minimise_dE_kJ_per_mol, minimise_worst_bond_ratio, md_time_ps, worst_bond_ratio,
broken_at_ps, new_bond_at_ps, T_mean_K, max_force_kJ_per_mol_nm``; the traces go to ``OUT.traces.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, print_table, setup_logging, write_json  # noqa: E402

import torch  # noqa: E402  (before openmm-torch)
import openmm as mm  # noqa: E402
import openmm.app as app  # noqa: E402
import openmm.unit as u  # noqa: E402

logger = logging.getLogger("benchmarks.stability")

BROKEN_RATIO = 1.3
BLOCK_PS = 0.1
TIMESTEP_FS = 0.5
STRUCTURE = REPO / "simulations" / "inputs" / "alanine-dipeptide.pdb"


def _bond_ratios(x: np.ndarray, pairs: np.ndarray, d0: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1) / d0


def screen(model: str, time_ps: float, seed: int = 1) -> Dict[str, Any]:
    """Minimise and run ``time_ps`` of 300 K MD with ``model``; return the row and its traces."""
    from transip_openmm import TransIPForce
    from transip_openmm.simulations.analysis import new_bond_pairs

    pdb = app.PDBFile(str(STRUCTURE))
    pairs = np.array([[a.index, b.index] for a, b in pdb.topology.bonds()])
    numbers = [atom.element.atomic_number for atom in pdb.topology.atoms()]
    names = [f"{a.residue.name}:{a.name}-{b.name}" for a, b in pdb.topology.bonds()]
    atom_names = [f"{a.residue.name}:{a.name}" for a in pdb.topology.atoms()]
    x0 = pdb.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    d0 = np.linalg.norm(x0[pairs[:, 0]] - x0[pairs[:, 1]], axis=1)
    system = mm.System()
    for atom in pdb.topology.atoms():
        system.addParticle(atom.element.mass)
    system.addForce(TransIPForce(model, pdb.topology))
    integrator = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, TIMESTEP_FS * u.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName("CPU"))
    context.setPositions(x0)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    mm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    state = context.getState(getEnergy=True, getPositions=True)
    e_min = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    ratios = _bond_ratios(state.getPositions(asNumpy=True).value_in_unit(u.nanometer), pairs, d0)
    worst_min = int(np.argmax(ratios))
    context.setVelocitiesToTemperature(300 * u.kelvin, seed)
    n_dof = 3 * system.getNumParticles() - 3
    steps = int(round(BLOCK_PS * 1000 / TIMESTEP_FS))
    trace: Dict[str, List[float]] = {"time_ps": [], "worst_bond_ratio": [], "temperature_K": [],
                                     "potential_kJ_per_mol": [], "max_force_kJ_per_mol_nm": []}
    broken_at = new_bond_at = None
    new_bond = ""
    worst_ratio, worst_name = 0.0, ""
    for block in range(int(round(time_ps / BLOCK_PS))):
        integrator.step(steps)
        st = context.getState(getEnergy=True, getPositions=True, getForces=True)
        x = st.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        r = _bond_ratios(x, pairs, d0)
        kinetic = st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        forces = st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        trace["time_ps"].append((block + 1) * BLOCK_PS)
        trace["worst_bond_ratio"].append(float(r.max()))
        trace["temperature_K"].append(2 * kinetic / (n_dof * u.MOLAR_GAS_CONSTANT_R.value_in_unit(
            u.kilojoule_per_mole / u.kelvin)))
        trace["potential_kJ_per_mol"].append(st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
        trace["max_force_kJ_per_mol_nm"].append(float(np.linalg.norm(forces, axis=1).max()))
        if r.max() > worst_ratio:
            worst_ratio, worst_name = float(r.max()), names[int(np.argmax(r))]
        formed = new_bond_pairs(x, numbers, pairs) if new_bond_at is None else []
        if len(formed):
            new_bond_at = (block + 1) * BLOCK_PS
            new_bond = ", ".join(f"{atom_names[i]}...{atom_names[j]}" for i, j in formed)
            logger.info("%s: a bond the topology does not have formed at %.1f ps (%s)", model, new_bond_at,
                        new_bond)
        if broken_at is None and r.max() > BROKEN_RATIO:
            broken_at = (block + 1) * BLOCK_PS
            logger.info("%s: bond %s broken at %.1f ps (ratio %.2f)", model, worst_name, broken_at, r.max())
        if not np.isfinite(r).all() or r.max() > 5.0:
            break  # fragments flying apart: nothing more to learn
    row = {
        "model": model,
        "minimise_dE_kJ_per_mol": e_min - e0,
        "minimise_worst_bond_ratio": float(ratios[worst_min]),
        "minimise_worst_bond": names[worst_min],
        "md_time_ps": trace["time_ps"][-1] if trace["time_ps"] else 0.0,
        "worst_bond_ratio": worst_ratio,
        "worst_bond": worst_name,
        "broken_at_ps": broken_at,
        "new_bond_at_ps": new_bond_at,
        "new_bond": new_bond,
        "T_mean_K": float(np.mean(trace["temperature_K"])) if trace["temperature_K"] else float("nan"),
        "max_force_kJ_per_mol_nm": max(trace["max_force_kJ_per_mol_nm"], default=float("nan")),
    }
    return {"row": row, "trace": trace}


def plot_traces(traces: Dict[str, Dict[str, List[float]]], path: str) -> None:
    """Worst bond ratio and temperature against time, one line per ``"<model> seed <seed>"`` key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_bond, ax_temp) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, trace in traces.items():
        model, _, seed = key.partition(" seed ")
        label = f"{Path(model).name} seed {seed}"
        ax_bond.plot(trace["time_ps"], trace["worst_bond_ratio"], label=label)
        ax_temp.plot(trace["time_ps"], trace["temperature_K"], label=label)
    ax_bond.axhline(BROKEN_RATIO, color="k", ls="--", lw=0.8)
    ax_bond.set_ylabel("largest bond length / start")
    ax_bond.set_yscale("log")
    ax_temp.set_ylabel("T (K)")
    ax_temp.set_xlabel("time (ps)")
    ax_bond.legend(fontsize=8)
    ax_bond.set_title("Alanine dipeptide, vacuum, 300 K")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    logger.info("wrote %s", path)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default"], help="exported files, or 'default'")
    parser.add_argument("--time-ps", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="2 ps per model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="one run per seed (velocities and Langevin noise)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    time_ps = 2.0 if args.quick else args.time_ps
    rows, traces = [], {}
    for model in args.models:
        for seed in args.seeds:
            result = screen(model, time_ps, seed)
            rows.append({**result["row"], "seed": seed})
            traces[f"{model} seed {seed}"] = result["trace"]
    print_table(rows, ["model", "seed", "minimise_dE_kJ_per_mol", "minimise_worst_bond_ratio", "md_time_ps",
                       "worst_bond_ratio", "worst_bond", "broken_at_ps", "new_bond_at_ps", "new_bond", "T_mean_K",
                       "max_force_kJ_per_mol_nm"])
    write_json(args.json, rows, {**machine_info(), "time_ps": time_ps, "seeds": args.seeds})
    if args.json:
        Path(args.json).with_suffix(".traces.json").write_text(json.dumps(traces))
    if args.plot:
        plot_traces(traces, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
