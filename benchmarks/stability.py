"""MD stability screen of exported models: does the molecule stay intact at 300 K?

    python benchmarks/stability.py [--quick] [--models default local runs/x/model.pt ...]
        [--time-ps 10] [--seeds 1 2 3] [--json OUT.json] [--plot OUT.png]
        [--test-of training/configs/omol25_local_split.yaml [--max-molecules 12]]

For each model and seed: alanine dipeptide in vacuum (every atom ML, OpenMM CPU platform), local
energy minimisation (200 iterations), then Langevin dynamics at 300 K (friction 1/ps,
0.5 fs) for ``--time-ps``. Every 0.1 ps it records the largest bond-length ratio against
the input structure (bonds from the PDB topology), the instantaneous temperature, the
potential energy and the largest atomic force. A bond ratio above 1.3 counts as broken; a
non-bonded pair within 1.1 × the sum of covalent radii as a new bond (changed chemistry).
This is the cheap screen to pass before a 100 ps protocol run. JSON: a list of rows
``model, minimise_dE_kJ_per_mol, minimise_worst_bond_ratio, md_time_ps, worst_bond_ratio,
broken_at_ps, new_bond_at_ps, T_mean_K, max_force_kJ_per_mol_nm``; the traces go to ``OUT.traces.json``.

``--test-of CONFIG`` screens unseen molecules instead: the held-out test part of a training
config (``held_out_test``), one structure per molecule key (the first), the first
``--max-molecules`` whose elements the model supports. Each runs all-ML with the record's
total charge and multiplicity; its bonds are the atom pairs closer than 1.2 × the sum of
covalent radii in the input structure (the new-bond rule with a looser factor: the input
has no new bond, and a stretched bond of a distorted input conformer is still a bond).
A molecule is intact when no bond ratio exceeded 1.3 and no new bond formed. Rows carry
``molecule, formula, n_atoms, n_bonds, charge, multiplicity, intact`` in addition; a summary
per model and seed gives the intact count and fraction.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, print_table, setup_logging, write_json  # noqa: E402

import torch  # noqa: E402  (before openmm-torch)
import openmm as mm  # noqa: E402
import openmm.app as app  # noqa: E402
import openmm.unit as u  # noqa: E402

logger = logging.getLogger("benchmarks.stability")

BROKEN_RATIO = 1.3
#: Held-out molecules: atom pairs closer than this × the sum of covalent radii in the input are bonds.
#: Above the new-bond factor (1.1), so the input has no "new" bond; OMol25 structures are distorted
#: conformers, and at 1.1 × a stretched C-H of the input (1.2 Å) would be missing from the topology
#: and flagged as a new bond when it relaxes (38 such atoms in the 64 test molecules of the OMol25
#: sample at 1.1, 9 at 1.2); 1.25 and above start to bond atoms across (F and Cl with two bonds).
TOPOLOGY_BOND_FACTOR = 1.2
BLOCK_PS = 0.1
TIMESTEP_FS = 0.5
STRUCTURE = REPO / "simulations" / "inputs" / "alanine-dipeptide.pdb"


def _bond_ratios(x: np.ndarray, pairs: np.ndarray, d0: np.ndarray) -> np.ndarray:
    """(B,) bond lengths of positions x (N, 3) over their lengths d0 (B,) at the start; pairs (B, 2)."""
    if not len(pairs):
        return np.ones(0)
    return np.linalg.norm(x[pairs[:, 0]] - x[pairs[:, 1]], axis=1) / d0


def _worst(r: np.ndarray) -> Tuple[float, int]:
    """(largest ratio, its bond index) of r (B,); (1.0, -1) for a structure without bonds."""
    if not r.size:
        return 1.0, -1
    i = int(np.argmax(r))
    return float(r[i]), i


def run_md(model: str, topology: Any, x0_nm: np.ndarray, time_ps: float, seed: int = 1,
           charge: Optional[int] = None, multiplicity: Optional[int] = None) -> Dict[str, Any]:
    """Minimise and run ``time_ps`` of 300 K MD of ``topology`` (every atom ML) at x0_nm (N, 3) nm.

    Bonds are the topology's; charge (e) and multiplicity (2S+1) go to ``TransIPForce`` (None:
    its default). Returns ``{"row": ..., "trace": ...}`` (see the module docstring).
    """
    from transip_openmm import TransIPForce
    from transip_openmm.simulations.analysis import new_bond_pairs

    bonds = list(topology.bonds())
    pairs = np.array([[a.index, b.index] for a, b in bonds], dtype=int).reshape(-1, 2)
    numbers = [atom.element.atomic_number for atom in topology.atoms()]
    names = [f"{a.residue.name}:{a.name}-{b.name}" for a, b in bonds]
    atom_names = [f"{a.residue.name}:{a.name}" for a in topology.atoms()]
    x0 = np.asarray(x0_nm, dtype=np.float64)
    d0 = np.linalg.norm(x0[pairs[:, 0]] - x0[pairs[:, 1]], axis=1)
    system = mm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    system.addForce(TransIPForce(model, topology, charge=charge, multiplicity=multiplicity))
    integrator = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, TIMESTEP_FS * u.femtosecond)
    integrator.setRandomNumberSeed(seed)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName("CPU"))
    context.setPositions(x0)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    mm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    state = context.getState(getEnergy=True, getPositions=True)
    e_min = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    min_ratio, worst_min = _worst(_bond_ratios(state.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                                               pairs, d0))
    context.setVelocitiesToTemperature(300 * u.kelvin, seed)
    n_dof = 3 * system.getNumParticles() - 3
    steps = int(round(BLOCK_PS * 1000 / TIMESTEP_FS))
    trace: Dict[str, List[float]] = {"time_ps": [], "worst_bond_ratio": [], "temperature_K": [],
                                     "potential_kJ_per_mol": [], "max_force_kJ_per_mol_nm": []}
    broken_at = new_bond_at = None
    new_bond = ""
    worst_ratio, worst_name = 0.0, ""
    for block in range(int(round(time_ps / BLOCK_PS))):
        try:
            integrator.step(steps)
        except mm.OpenMMException as exc:  # coordinates became NaN: the structure blew up
            if broken_at is None:
                broken_at = (block + 1) * BLOCK_PS
            logger.info("%s: the run failed at %.1f ps (%s)", model, (block + 1) * BLOCK_PS, str(exc).strip())
            break
        st = context.getState(getEnergy=True, getPositions=True, getForces=True)
        x = st.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        r = _bond_ratios(x, pairs, d0)
        r_max, r_arg = _worst(r)
        kinetic = st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        forces = st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        trace["time_ps"].append((block + 1) * BLOCK_PS)
        trace["worst_bond_ratio"].append(r_max)
        trace["temperature_K"].append(2 * kinetic / (n_dof * u.MOLAR_GAS_CONSTANT_R.value_in_unit(
            u.kilojoule_per_mole / u.kelvin)))
        trace["potential_kJ_per_mol"].append(st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
        trace["max_force_kJ_per_mol_nm"].append(float(np.linalg.norm(forces, axis=1).max()))
        if r_max > worst_ratio:
            worst_ratio, worst_name = r_max, names[r_arg]
        formed = new_bond_pairs(x, numbers, pairs) if new_bond_at is None else []
        if len(formed):
            new_bond_at = (block + 1) * BLOCK_PS
            new_bond = ", ".join(f"{atom_names[i]}...{atom_names[j]}" for i, j in formed)
            logger.info("%s: a bond the topology does not have formed at %.1f ps (%s)", model, new_bond_at,
                        new_bond)
        if broken_at is None and r_max > BROKEN_RATIO:
            broken_at = (block + 1) * BLOCK_PS
            logger.info("%s: bond %s broken at %.1f ps (ratio %.2f)", model, worst_name, broken_at, r_max)
        if not np.isfinite(r).all() or r_max > 5.0:
            break  # fragments flying apart: nothing more to learn
    row = {
        "model": model,
        "minimise_dE_kJ_per_mol": e_min - e0,
        "minimise_worst_bond_ratio": min_ratio,
        "minimise_worst_bond": names[worst_min] if worst_min >= 0 else "",
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


def screen(model: str, time_ps: float, seed: int = 1) -> Dict[str, Any]:
    """Alanine dipeptide: minimise and run ``time_ps`` of 300 K MD with ``model``; return the row and its traces."""
    pdb = app.PDBFile(str(STRUCTURE))
    return run_md(model, pdb.topology, pdb.getPositions(asNumpy=True).value_in_unit(u.nanometer), time_ps, seed)


def molecule_topology(numbers: Sequence[int], positions_nm: np.ndarray,
                      factor: float = TOPOLOGY_BOND_FACTOR) -> app.Topology:
    """One-residue topology ("MOL") of atoms numbers (N,) at positions_nm (N, 3) nm, atoms named
    element + index; bonded: every pair closer than ``factor`` × the sum of covalent radii (the
    rule of ``new_bond_pairs``, with a factor at least its 1.1, so the input has no new bond)."""
    from transip_openmm.simulations.analysis import NEW_BOND_FACTOR, new_bond_pairs

    if factor < NEW_BOND_FACTOR:
        raise ValueError(f"the bond factor {factor} is below the new-bond factor {NEW_BOND_FACTOR}: "
                         "the input structure would already have new bonds")

    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    atoms = [topology.addAtom(f"{app.Element.getByAtomicNumber(int(z)).symbol}{i + 1}",
                              app.Element.getByAtomicNumber(int(z)), residue) for i, z in enumerate(numbers)]
    for i, j in new_bond_pairs(positions_nm, numbers, np.empty((0, 2), dtype=int), factor=factor):
        topology.addBond(atoms[int(i)], atoms[int(j)])
    return topology


def screen_molecule(model: str, mol: Any, time_ps: float, seed: int = 1) -> Dict[str, Any]:
    """Screen one ``Molecule`` (positions Å) at its total charge and multiplicity; the row adds
    ``molecule, formula, n_atoms, charge, multiplicity, intact``."""
    from transip_openmm.training.splits import formula, molecule_key

    x0 = np.asarray(mol.positions, dtype=np.float64) / 10.0  # Å -> nm
    topology = molecule_topology(mol.numbers, x0)
    result = run_md(model, topology, x0, time_ps, seed, charge=int(mol.charge), multiplicity=int(mol.multiplicity))
    row = result["row"]
    row.update({
        "molecule": molecule_key(mol),
        "formula": formula(mol.numbers),
        "n_atoms": mol.n_atoms,
        "n_bonds": topology.getNumBonds(),
        "charge": int(mol.charge),
        "multiplicity": int(mol.multiplicity),
        "intact": row["broken_at_ps"] is None and row["new_bond_at_ps"] is None,
    })
    return result


def missing_data(config_path: str) -> Optional[str]:
    """One line naming the config's absent data files (those ``held_out_test`` reads), or None."""
    from transip_openmm.training.config import load_config

    cfg = load_config(config_path)
    files = cfg.data.test or cfg.data.train
    absent = [str(cfg.resolve(p)) for p in files if not cfg.resolve(p).exists()]
    if absent:
        return f"{config_path}: data files absent ({', '.join(absent)}); the test part cannot be read"
    return None


def held_out_molecules(config_path: str, supported: Sequence[int], max_molecules: int = 12) -> Tuple[List[Any], int]:
    """(molecules, n_skipped): the first structure of each molecule key in the config's held-out
    test part, in order, at most ``max_molecules`` of those whose elements are all in ``supported``;
    n_skipped counts the molecules passed over for an unsupported element."""
    from transip_openmm.training.config import load_config
    from transip_openmm.training.splits import formula, held_out_test, molecule_key

    allowed = {int(z) for z in supported}
    seen, chosen, skipped = set(), [], 0
    for mol in held_out_test(load_config(config_path)):
        key = molecule_key(mol)
        if key in seen:
            continue
        seen.add(key)
        if not {int(z) for z in mol.numbers} <= allowed:
            skipped += 1
            logger.info("skipping %s (%s): an element the model does not support", key, formula(mol.numbers))
            continue
        chosen.append(mol)
        if len(chosen) >= max_molecules:
            break
    return chosen, skipped


def plot_traces(traces: Dict[str, Dict[str, List[float]]], path: str,
                title: str = "Alanine dipeptide, vacuum, 300 K") -> None:
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
    ax_bond.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    logger.info("wrote %s", path)


def _summary(rows: List[Dict[str, Any]], model: str, seed: int, skipped: int) -> Dict[str, Any]:
    """Intact count and fraction of one model's molecule rows for one seed."""
    mine = [r for r in rows if r["model"] == model and r["seed"] == seed]
    intact = sum(bool(r["intact"]) for r in mine)
    return {"model": model, "seed": seed, "molecules": len(mine), "intact": intact,
            "intact_fraction": intact / len(mine) if mine else float("nan"), "skipped_elements": skipped}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default"],
                        help="exported files, or the shipped 'default' / 'local'")
    parser.add_argument("--time-ps", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="2 ps per model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="one run per seed (velocities and Langevin noise)")
    parser.add_argument("--test-of", default=None, metavar="CONFIG.yaml",
                        help="screen the unseen molecules of this training config's held-out test part "
                             "instead of alanine dipeptide")
    parser.add_argument("--max-molecules", type=int, default=12, help="with --test-of: molecules per model")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    time_ps = 2.0 if args.quick else args.time_ps
    if args.test_of:
        return main_test_of(args, time_ps)
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


def main_test_of(args: argparse.Namespace, time_ps: float) -> int:
    """``--test-of``: screen the held-out test molecules of a training config with every model."""
    from transip_openmm.artifacts import read_exported_metadata
    from transip_openmm.errors import TransIPError
    from transip_openmm.force import resolve_model_path

    try:
        absent = missing_data(args.test_of)
        if absent:
            print(f"error: {absent}", file=sys.stderr)
            return 1
        chosen = {model: held_out_molecules(args.test_of, read_exported_metadata(resolve_model_path(model))["elements"],
                                            args.max_molecules) for model in args.models}
    except (TransIPError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows, summaries, traces = [], [], {}
    for model in args.models:
        molecules, skipped = chosen[model]
        for seed in args.seeds:
            for mol in molecules:
                result = screen_molecule(model, mol, time_ps, seed)
                rows.append({**result["row"], "seed": seed})
                traces[f"{model} seed {seed} {result['row']['molecule']}"] = result["trace"]
                logger.info("%s seed %d: %s (%d atoms) %s", model, seed, result["row"]["formula"], mol.n_atoms,
                            "intact" if result["row"]["intact"] else "NOT intact")
            summaries.append(_summary(rows, model, seed, skipped))
    for model in args.models:
        print(f"\n{model}: held-out test molecules of {args.test_of}, {time_ps:g} ps at 300 K")
        print_table([r for r in rows if r["model"] == model],
                    ["seed", "molecule", "formula", "n_atoms", "charge", "multiplicity", "worst_bond_ratio",
                     "worst_bond", "broken_at_ps", "new_bond_at_ps", "new_bond", "T_mean_K", "intact"])
    print()
    print_table(summaries, ["model", "seed", "molecules", "intact", "intact_fraction", "skipped_elements"])
    write_json(args.json, rows, {**machine_info(), "time_ps": time_ps, "seeds": args.seeds, "test_of": args.test_of,
                                 "max_molecules": args.max_molecules, "summary": summaries})
    if args.json:
        Path(args.json).with_suffix(".traces.json").write_text(json.dumps(traces))
    if args.plot:
        plot_traces(traces, args.plot, title=f"Held-out test molecules of {Path(args.test_of).name}, vacuum, 300 K")
    return 0


if __name__ == "__main__":
    sys.exit(main())
