"""Force magnitudes of a generated corpus, per sampling job.

    python benchmarks/corpus_forces.py data_runs/default_corpus --limit 30 \\
        --json benchmarks/results/multifidelity/corpus_forces.json

For every record of the ``.aselmdb`` shards of a ``transip data generate`` folder: the largest
atomic force norm (eV/Å), grouped by the record's ``job``. Prints per job the count, the
median, 90th percentile and maximum of that force and the fraction above ``--limit`` (what
``data.max_force`` of a training config would drop); JSON rows carry the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, print_table, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.corpus_forces")


def job_forces(folder: Path) -> Dict[str, List[float]]:
    """{job: [largest atomic force norm (eV/Å) of each record]} over the folder's shards."""
    from ase.db import connect

    out: Dict[str, List[float]] = {}
    for shard in sorted(folder.glob("*.aselmdb")):
        with connect(str(shard), type="aselmdb") as db:
            for row in db.select():
                forces = np.asarray(row.forces, dtype=np.float64)
                out.setdefault(str(row.data.get("job", "?")), []).append(float(np.linalg.norm(forces, axis=1).max()))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="output folder of transip data generate")
    parser.add_argument("--limit", type=float, default=30.0, help="force (eV/Å) whose excess is counted")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    if not any(args.folder.glob("*.aselmdb")):
        print(f"{args.folder}: no .aselmdb shards", file=sys.stderr)
        return 1
    rows: List[Dict[str, Any]] = []
    everything: List[float] = []
    for job, values in sorted(job_forces(args.folder).items()):
        f = np.asarray(values)
        everything.extend(values)
        rows.append({"job": job, "structures": len(f), "median_eV_per_A": float(np.median(f)),
                     "p90_eV_per_A": float(np.percentile(f, 90)), "max_eV_per_A": float(f.max()),
                     "fraction_above_limit": float((f > args.limit).mean())})
    f = np.asarray(everything)
    rows.append({"job": "all", "structures": len(f), "median_eV_per_A": float(np.median(f)),
                 "p90_eV_per_A": float(np.percentile(f, 90)), "max_eV_per_A": float(f.max()),
                 "fraction_above_limit": float((f > args.limit).mean())})
    print_table(rows, ["job", "structures", "median_eV_per_A", "p90_eV_per_A", "max_eV_per_A",
                       "fraction_above_limit"])
    write_json(args.json, rows, {**machine_info(), "command": " ".join(sys.argv), "limit_eV_per_A": args.limit,
                                 "folder": args.folder.name})
    return 0


if __name__ == "__main__":
    sys.exit(main())
