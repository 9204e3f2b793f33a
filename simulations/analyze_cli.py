"""``transip analyze RUN_DIR``: PNG plots and ``analysis/summary.json`` for a simulation run.

Always: potential/total energy, temperature and (periodic runs) density traces from
``state_data.csv`` (energies relative to the first row). With a trajectory: RMSD of the solute
(Å, to the first trajectory frame, said in the plot and in ``summary.json``), Ramachandran φ/ψ
for peptides (circular statistics), and for ions the ion-oxygen RDFs and coordination numbers.
Every quantity has one unit, named in its ``summary.json`` key.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from transip_openmm.simulations import analysis as A
from transip_openmm.units import NM_TO_ANGSTROM

logger = logging.getLogger(__name__)


#: A bond stretched beyond this ratio of its starting length counts as broken.
BROKEN_BOND_RATIO = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="directory written by `transip simulate`")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="where to write plots and summary.json (default RUN_DIR/analysis)")


def _stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


def _plot_traces(data: dict[str, np.ndarray], out: Path, periodic: bool) -> Path:
    """Energy (relative to the first row: an absolute ML energy is ~1e6 kJ/mol), temperature
    and (periodic runs) density against time, one colour per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("potential_kj_per_mol", "potential energy", True), ("total_kj_per_mol", "total energy", True),
              ("temperature_k", "temperature (K)", False)]
    if periodic:
        panels.append(("density_g_per_ml", "density (g/mL)", False))
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.5, 2.1 * len(panels)), sharex=True)
    for ax, (key, label, relative) in zip(axes, panels):
        offset = float(data[key][0]) if relative else 0.0
        for stage in dict.fromkeys(data["stage"]):
            m = data["stage"] == stage
            ax.plot(data["time_ps"][m], data[key][m] - offset, lw=1, label=stage)
        if relative:
            ax.set_ylabel(f"{label} − E₀\n(kJ/mol)", fontsize=8)
            ax.set_title(f"{label}, E₀ = {offset:.1f} kJ/mol at t = {data['time_ps'][0]:g} ps", fontsize=8)
        else:
            ax.set_ylabel(label, fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("time (ps)")
    fig.tight_layout()
    path = out / "traces.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def analyze_run(run_dir: Path, out: Path) -> dict[str, Any]:
    """Write plots into ``out`` and return the summary (also written to ``out/summary.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    summary: dict[str, Any] = {"run_dir": str(run_dir), "protocol": info.get("protocol"), "plots": []}
    plots: list[Path] = []
    data = A.read_state_data(run_dir / "state_data.csv")
    periodic = bool(data) and np.isfinite(data["volume_nm3"]).any()
    if data:
        summary["state_data"] = {
            "rows": len(data["step"]),
            "potential_kj_per_mol": _stats(data["potential_kj_per_mol"]),
            "temperature_k": _stats(data["temperature_k"]),
            "max_force_kj_per_mol_nm": _stats(data["max_force_kj_per_mol_nm"]),
        }
        if periodic:
            summary["state_data"]["density_g_per_ml"] = _stats(data["density_g_per_ml"])
        prod = np.char.find(data["stage"].astype(str), "production") >= 0
        if prod.sum() >= 2:
            t, e = data["time_ps"][prod], data["total_kj_per_mol"][prod]
            summary["state_data"]["production_total_energy_slope_kj_per_mol_ps"] = float(np.polyfit(t, e, 1)[0])
        plots.append(_plot_traces(data, out, periodic))

    traj_name = info.get("trajectory")
    if traj_name and (run_dir / traj_name).exists():
        import mdtraj
        from transip_openmm.simulations.runner import quiet_stdout

        with quiet_stdout():
            traj = mdtraj.load(str(run_dir / traj_name), top=str(run_dir / "topology.pdb"))
        dt = info.get("frame_interval_ps", 1.0)
        steps = np.asarray(info.get("frame_steps", []), float)
        time = steps * info["timestep_fs"] / 1000.0 if len(steps) == traj.n_frames else np.arange(traj.n_frames) * dt
        summary["trajectory"] = {"file": traj_name, "frames": int(traj.n_frames),
                                 "time_ps": [float(time[0]), float(time[-1])] if len(time) else []}
        top = traj.topology
        ml = np.asarray(info.get("ml_atoms") or [], int)
        pep = A.peptide_atoms(top)
        solute = pep if len(pep) else (ml if 0 < len(ml) < traj.n_atoms else np.arange(traj.n_atoms))
        heavy = np.array([i for i in solute if top.atom(int(i)).element.symbol != "H"]) if len(solute) else solute
        rmsd_atoms = heavy if len(heavy) >= 3 else solute
        rmsd_angstrom = A.compute_rmsd(traj, rmsd_atoms) * NM_TO_ANGSTROM
        reference = (f"trajectory frame 0 (t = {time[0]:g} ps), after optimal superposition of the same atoms"
                     if len(time) else "trajectory frame 0")
        summary["rmsd_angstrom"] = _stats(rmsd_angstrom) | {
            "atoms": f"solute {'heavy ' if rmsd_atoms is heavy else ''}atoms ({len(rmsd_atoms)})",
            "reference": reference}
        with quiet_stdout():
            start = mdtraj.load(str(run_dir / "topology.pdb"))
        stretch = A.compute_bond_stretch(traj, start, solute)
        if stretch.size:
            worst = stretch.max(axis=1)
            broken = np.nonzero(worst > BROKEN_BOND_RATIO)[0]
            sub = traj.atom_slice(solute)
            sub_bonds = np.array([[a.index, b.index] for a, b in sub.topology.bonds], dtype=int)
            new_bonds = A.count_new_bonds(sub.xyz, [a.element.atomic_number for a in sub.topology.atoms],
                                          sub_bonds, boxes_nm=sub.unitcell_vectors)
            formed = np.nonzero(new_bonds > 0)[0]
            summary["bonds"] = {
                "max_length_ratio": float(worst.max()),
                "max_new_bonds": int(new_bonds.max()),
                "intact": bool(len(broken) == 0 and len(formed) == 0),
                "first_broken_frame_time_ps": float(time[broken[0]]) if len(broken) else None,
                "first_new_bond_frame_time_ps": float(time[formed[0]]) if len(formed) else None,
                "criterion": (f"no solute bond longer than {BROKEN_BOND_RATIO} x its length in topology.pdb, and "
                              f"no non-bonded solute pair closer than {A.NEW_BOND_FACTOR} x the sum of "
                              "covalent radii (a bond the topology does not have)"),
            }
            if len(broken):
                logger.warning("the solute did not stay intact: a bond is %.1fx its starting length "
                               "from t = %.2f ps on (see bonds in summary.json)", worst.max(), time[broken[0]])
            if len(formed):
                logger.warning("the solute's chemistry changed: %d bond(s) the topology does not have "
                               "from t = %.2f ps on (see bonds in summary.json)", new_bonds.max(), time[formed[0]])
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.plot(time, rmsd_angstrom, lw=1)
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("RMSD (Å)")
        ax.set_title(f"{summary['rmsd_angstrom']['atoms']}, superposed on trajectory frame 0"
                     + (f" (t = {time[0]:g} ps)" if len(time) else ""), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "rmsd.png", dpi=80)
        plt.close(fig)
        plots.append(out / "rmsd.png")

        if len(pep):
            phi, psi = A.compute_ramachandran(traj)
            if phi.size and psi.size:
                n = min(phi.shape[1], psi.shape[1])
                summary["ramachandran_deg"] = {"phi": A.circular_stats_deg(phi[:, :n]),
                                              "psi": A.circular_stats_deg(psi[:, :n]),
                                              "n_angle_pairs": int(n),
                                              "statistics": "circular (mean direction; std = sqrt(-2 ln R))"}
                fig, ax = plt.subplots(figsize=(4.8, 4))
                points = ax.scatter(phi[:, :n].ravel(), psi[:, :n].ravel(), s=6, c=np.repeat(time, n), cmap="viridis")
                fig.colorbar(points, ax=ax, label="time (ps)")
                ax.set_xlim(-180, 180)
                ax.set_ylim(-180, 180)
                ax.set_xlabel("φ (deg)")
                ax.set_ylabel("ψ (deg)")
                ax.set_title("Ramachandran", fontsize=9)
                fig.tight_layout()
                fig.savefig(out / "ramachandran.png", dpi=80)
                plt.close(fig)
                plots.append(out / "ramachandran.png")

        ions = A.find_ions(top)
        if ions:
            oxygens = [a.index for a in top.atoms if a.element is not None and a.element.symbol == "O"]
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
            summary["ions"] = {}
            for index, symbol in ions.items():
                r, g = A.compute_rdf(traj, [index], oxygens, r_max_nm=0.8)
                cutoff = A.ION_O_CUTOFF_NM[symbol]
                cn = A.compute_coordination_number(traj, index, oxygens, cutoff)
                label = f"{symbol}{index}"
                summary["ions"][label] = {"rdf_first_peak_nm": float(r[np.argmax(g)]),
                                          "coordination_cutoff_nm": cutoff,
                                          "coordination_number_O": _stats(cn),
                                          "rdf_normalisation": "bulk density" if traj.unitcell_volumes is not None
                                          else "local density nm^-3 (no box)"}
                ax1.plot(r, g, lw=1, label=label)
                ax2.plot(time, cn, lw=1, label=label)
            if len(ions) == 2:
                a, b = list(ions)
                d = A.compute_pair_distances(traj, [a], [b])[:, 0]
                summary["ion_pair_distance_nm"] = _stats(d)
            ax1.set_xlabel("r (nm)")
            ax1.set_ylabel("g(r) ion-O" if traj.unitcell_volumes is not None else "ion-O density (nm⁻³)")
            ax2.set_xlabel("time (ps)")
            ax2.set_ylabel("O coordination number")
            ax1.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / "ions.png", dpi=80)
            plt.close(fig)
            plots.append(out / "ions.png")
    else:
        logger.warning("no trajectory in %s: only the state-data traces are analysed", run_dir)
    summary["plots"] = [str(p) for p in plots]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir
    if not (run_dir / "state_data.csv").exists():
        from transip_openmm.simulations.runner import SimulationError

        raise SimulationError(f"{run_dir} is not a simulation run directory (no state_data.csv): give the "
                              "--output folder of `transip simulate`")
    out = args.output or run_dir / "analysis"
    summary = analyze_run(run_dir, out)
    print(f"summary: {out / 'summary.json'}")
    for plot in summary["plots"]:
        print(f"plot:    {plot}")
    return 0
