"""Data-generation throughput: labelled structures per CPU-hour with GFN2-xTB (tblite).

    python benchmarks/data_generation.py [--quick] [--config data/configs/default_corpus.yaml]
        [--tasks-per-job 2] --json benchmarks/results/data_generation.json

One process with one OpenMP thread; the rates divide by the CPU time of this process
(``time.process_time``), so they are structures per CPU-hour even on a busy machine (the
wall-clock rate is stored too); N workers on N free cores make N times as many. Two tables:

* ``label``: the labeller alone (energy + forces of one structure, displaced by 0.01 Å each
  time) on the generator's own systems of 9–60 atoms;
* ``job``: each job of a config end to end (build the structure, sample, label; MD frames
  carry the teacher's own label), the first ``--tasks-per-job`` tasks of each job through
  the same ``TaskRunner`` the workers use. The ``corpus`` row weighs the jobs by their
  share of the config (total structures / total time).
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before tblite / numpy load their thread pools

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, load_average, machine_info, print_table, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.data_generation")

TARGET_PER_CPU_HOUR = 20_000


def label_rows(target_s: float) -> List[Dict[str, Any]]:
    """Labeller-only throughput on representative systems of up to 60 atoms."""
    from transip_openmm.data import electrolytes, peptides, water
    from transip_openmm.data.labellers import XTBLabeller

    rng = np.random.default_rng(0)
    systems = {
        "water x3": water.water_cluster(3, rng),
        "ACE-ALA-NME": peptides.build_capped_peptide(["ALA"], 0),
        "water x10": water.water_cluster(10, rng),
        "Na+ + 8 water": water.ion_water_cluster("Na+", 8, rng),
        "ACE-TRP-ARG-NME": peptides.build_capped_peptide(["TRP", "ARG"], 0),
        "Li+ EC4 PF6-": electrolytes.electrolyte_cluster("Li+", ["EC"] * 4, "PF6-", rng),
        "water x20": water.water_cluster(20, rng),
    }
    labeller = XTBLabeller()
    rows = []
    for name, s in systems.items():
        labeller.label(s.atoms, s.charge, s.multiplicity)  # warm-up
        calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.process_time() - cpu0 < target_s:
            atoms = s.atoms.copy()
            atoms.positions += rng.normal(0.0, 0.01, size=atoms.positions.shape)
            labeller.label(atoms, s.charge, s.multiplicity)
            calls += 1
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rows.append({"table": "label", "case": name, "atoms": len(s.atoms), "charge": s.charge, "calls": calls,
                     "cpu_ms_per_structure": 1000.0 * cpu / calls, "wall_ms_per_structure": 1000.0 * wall / calls,
                     "structures_per_cpu_hour": calls / cpu * 3600.0})
        logger.info("label %-16s %3d atoms: %.1f ms CPU", name, len(s.atoms), 1000.0 * cpu / calls)
    return rows


def job_rows(config_path: Path, tasks_per_job: int) -> List[Dict[str, Any]]:
    """End-to-end throughput of the first tasks of every job of a config."""
    from transip_openmm.data.config import load_config
    from transip_openmm.data.plan import make_plan
    from transip_openmm.data.worker import TaskRunner

    config = load_config(config_path)
    runner = TaskRunner(config)
    plan = make_plan(config)
    rows = []
    for j, job in enumerate(config.jobs):
        tasks = [t for t in plan if t.job == j][:tasks_per_job]
        runner.builders[j](0, np.random.default_rng(0))  # warm caches (water box, seed files) outside the clock
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = [runner.run(t) for t in tasks]
        seconds, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        made = sum(len(r.records) for r in results)
        atoms = [len(rec.numbers) for r in results for rec in r.records]
        rows.append({
            "table": "job", "case": job.name, "sampler": job.sampler["kind"], "share": job.structures,
            "structures": made, "dropped": sum(r.dropped for r in results),
            "atoms": float(np.mean(atoms)) if atoms else None, "max_atoms": max(atoms) if atoms else None,
            "cpu_seconds": seconds, "wall_seconds": wall,
            "structures_per_cpu_hour": made / seconds * 3600.0 if seconds > 0 else None,
        })
        logger.info("job %-26s %4d structures in %6.1f s CPU", job.name, made, seconds)
    measured = [r for r in rows if r["structures"]]
    share = sum(r["share"] for r in measured)
    hours = sum(r["share"] / r["structures_per_cpu_hour"] for r in measured)
    rows.append({"table": "job", "case": "corpus (weighted)", "sampler": "mix", "share": share,
                 "structures": sum(r["structures"] for r in measured), "dropped": sum(r["dropped"] for r in measured),
                 "atoms": None, "max_atoms": max(r["max_atoms"] for r in measured),
                 "cpu_seconds": sum(r["cpu_seconds"] for r in measured),
                 "wall_seconds": sum(r["wall_seconds"] for r in measured), "structures_per_cpu_hour": share / hours})
    return rows


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "data" / "configs" / "default_corpus.yaml"))
    parser.add_argument("--tasks-per-job", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="short label blocks, one task per job")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    load_start = load_average()
    labels = label_rows(0.5 if args.quick else 3.0)
    jobs = job_rows(Path(args.config), 1 if args.quick else args.tasks_per_job)
    print(f"\nGFN2-xTB labelling alone, one CPU (target >= {TARGET_PER_CPU_HOUR:,} structures per CPU-hour)")
    print_table(labels, ["case", "atoms", "charge", "cpu_ms_per_structure", "structures_per_cpu_hour"])
    print(f"\nEnd to end per job of {Path(args.config).name} (build + sample + label), one CPU")
    print_table(jobs, ["case", "sampler", "share", "structures", "dropped", "atoms", "max_atoms", "cpu_seconds",
                       "structures_per_cpu_hour"])
    config = Path(args.config).resolve()
    shown = str(config.relative_to(REPO)) if config.is_relative_to(REPO) else config.name
    meta = {**machine_info(), "omp_threads": 1, "config": shown, "tasks_per_job": args.tasks_per_job,
            "quick": args.quick, "load_average_start": load_start, "load_average_end": load_average(),
            "command": " ".join(["python", "benchmarks/data_generation.py", *(argv or sys.argv[1:])])}
    write_json(args.json, labels + jobs, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
