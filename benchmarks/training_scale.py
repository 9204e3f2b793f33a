"""Training at scale on the CPU: memory against dataset size, and throughput with DataLoader workers.

    python benchmarks/training_scale.py --json benchmarks/results/training_scale.json
    python benchmarks/training_scale.py --sizes 10000 100000 --steps 300 --json OUT.json

Synthetic data: small molecules (3-24 atoms of H, C, N, O on a random chain with 1.0-1.6 Å
bonds; 5 conformers per family; energy = Σ element references + noise, random forces;
charge 0, multiplicity 1 or 2 by electron count, ``level_of_theory`` "synthetic"), written once as ``.aselmdb``
shards of at most 50,000 structures in the OMol25 layout into the git-ignored
``benchmarks/data/training_scale/<size>/`` and reused; a separate 256-structure shard is the
validation set. The labels only have to be well-formed: this measures the data path.

Every case is one ``transip train`` process (the real CLI) of ``--steps`` steps: a d64/L2
model, symmetry ``none``, 256-atom batches, 1 torch thread, references from a stated sample
(``data.stats_sample`` 5,000 structures), validation on 64 structures at the end only.
Memory phase: the lazy sharded dataset with 0 and 2 workers at every size and the in-memory
path (``data.lazy: false``: every record decoded into memory, collated on the main thread)
at sizes up to 100,000, one run each. Throughput phase (the machine's load is shared, so the
cases take turns): at the smallest size, the in-memory path and the lazy one with 0, 1 and 2
workers, ``--rounds`` rounds; the median per case is reported. Reported: peak RSS of the training process (the
trainer's own ``peak_memory_MB``, from ``getrusage``), the peak summed PSS of the process and
its workers (sampled every 0.2 s; shared pages counted once), start-up seconds (opening the
data, statistics, model) and structures/s (median of the 25-step log windows after step 50),
and for each case its paired ratio to the in-memory run of the same round (geometric mean of
window-by-window ratios: same seed, same batches, so window i holds the same structures in
every case), whose median over rounds is the throughput comparison.
Shard indexes are built (in parallel, 2 processes) before the cases and timed separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, load_average, machine_info, print_table, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.training_scale")

DATA = REPO / "benchmarks" / "data" / "training_scale"
SHARD_SIZE = 50_000
ELEMENTS = np.array([1, 6, 7, 8])
REFERENCES = {1: -13.6, 6: -1030.0, 7: -1485.0, 8: -2040.0}  # eV, OMol25-like magnitudes
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_ratio": 2.0, "n_rbf": 16, "rbf_cutoff": 6.0,
         "distance_bias": True, "coord_scale": 1.0, "zbl_repulsion": False}


# ------------------------------------------------------------------------ synthetic shards

def _record(rng: np.random.Generator, index: int) -> Dict[str, Any]:
    """One synthetic structure as the row dict an ASE aselmdb database stores."""
    n = int(rng.integers(3, 25))
    numbers = rng.choice(ELEMENTS, size=n, p=[0.5, 0.3, 0.1, 0.1])
    steps = rng.normal(size=(n, 3))
    steps *= rng.uniform(1.0, 1.6, size=(n, 1)) / np.linalg.norm(steps, axis=1, keepdims=True)
    positions = np.round(np.cumsum(steps, axis=0), 4)
    energy = float(sum(REFERENCES[int(z)] for z in numbers) + rng.normal(0.0, 0.05) * n)
    return {
        "numbers": numbers, "positions": positions, "unique_id": f"{index:032x}", "calculator": "unknown",
        "calculator_parameters": {}, "energy": energy, "forces": np.round(rng.normal(0.0, 0.5, (n, 3)), 4),
        "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool), "ctime": 0.0, "user": None, "mtime": 0.0,
        "data": {"charge": 0, "spin": 1 + int(numbers.sum()) % 2,
                 "source": f"synthetic/mol{index // 5:07d}_0_1/orca.tar.zst", "level_of_theory": "synthetic"},
    }


def write_shard(path: Path, first: int, count: int, seed: int) -> Path:
    """Records ``first .. first + count - 1`` into an ``.aselmdb`` shard (ASE's codec, one transaction)."""
    import lmdb
    from ase_db_backends.aselmdb import encode_object

    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        tmp.unlink()
    rng = np.random.default_rng([seed, first])
    env = lmdb.open(str(tmp), subdir=False, map_size=2**36, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for k in range(count):
            txn.put(str(k + 1).encode("ascii"), encode_object(_record(rng, first + k), compress=True, json_encode=True))
        txn.put(b"nextid", encode_object(count + 1, compress=True, json_encode=True))
    env.close()
    for lock in (tmp.with_name(tmp.name + "-lock"),):
        if lock.exists():
            lock.unlink()
    tmp.replace(path)
    return path


def make_dataset(size: int, workers: int = 2, seed: int = 0) -> Path:
    """The folder of ``size`` synthetic structures (written once, then reused)."""
    folder = DATA / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    for k, first in enumerate(range(0, size, SHARD_SIZE)):
        path = folder / f"data{k:04d}.aselmdb"
        if not path.exists():
            jobs.append((path, first, min(SHARD_SIZE, size - first), seed))
    if jobs:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write_shard, *zip(*jobs)))
        logger.info("wrote %d shard(s) of %d structures in %.0f s", len(jobs), size, time.perf_counter() - t0)
    return folder


def build_indexes(folder: Path, workers: int = 2) -> Dict[str, float]:
    """Index the shards of ``folder`` (cached beside them); seconds and cache size."""
    from transip_openmm.training.shards import INDEX_DIR, ShardedDataset

    t0 = time.perf_counter()
    data = ShardedDataset(folder, index_workers=workers)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (folder / INDEX_DIR).glob("*.npz"))
    return {"index_s": seconds, "index_MB": size / 2**20, "n_structures": len(data)}


# ------------------------------------------------------------------------ one training case

def _children(pid: int) -> List[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def tree_pss_mb(pid: int) -> float:
    """Summed PSS (MiB) of ``pid`` and all its descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _pss_mb(p)
        todo.extend(_children(p))
    return total


def config_for(train: Path, val: Path, lazy: bool, workers: int, steps: int) -> Dict[str, Any]:
    return {
        "seed": 0,
        "data": {"train": [str(train)], "val": [str(val)], "lazy": lazy, "max_atoms_per_batch": 256,
                 "max_val": 64, "stats_sample": 5000},
        "model": dict(MODEL),
        "objective": {"symmetry": "none", "energy_scale": "force_rms"},
        "optim": {"lr": 1e-3, "warmup_steps": 20, "max_steps": steps},
        "run": {"log_every": 25, "val_every": 100_000, "checkpoint_every": 100_000, "threads": 1,
                "progress": False, "num_workers": workers},
    }


def run_case(name: str, size: int, train: Path, val: Path, lazy: bool, workers: int, steps: int,
             out: Path, timeout: float) -> Dict[str, Any]:
    run_dir = out / f"{name}-{size}-w{workers}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cfg_path = run_dir / "config.in.yaml"
    cfg_path.write_text(yaml.safe_dump(config_for(train, val, lazy, workers, steps)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "transip_openmm.cli", "train", str(cfg_path), "--output", str(run_dir / "run")]
    row: Dict[str, Any] = {"case": name, "n_structures": size, "workers": workers, "load_start": load_average()}
    t0 = time.perf_counter()
    with open(run_dir / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        peak_pss = 0.0
        while proc.poll() is None:
            peak_pss = max(peak_pss, tree_pss_mb(proc.pid))
            time.sleep(0.2)
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                row["error"] = f"timeout after {timeout:.0f} s"
                break
    row["wall_s"] = time.perf_counter() - t0
    row["peak_pss_tree_MB"] = peak_pss
    if proc.returncode not in (0, None) and "error" not in row:
        row["error"] = (run_dir / "stderr.log").read_text()[-500:]
    summary_path = run_dir / "run" / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        row["peak_rss_MB"] = summary["peak_memory_MB"]
        row["setup_s"] = row["wall_s"] - summary["train_time_s"]
        import csv

        with open(run_dir / "run" / "log.csv", newline="") as f:
            rates = [float(r["structures_per_s"]) for r in csv.DictReader(f)
                     if r["structures_per_s"] and int(r["step"]) > 50]
        row["structures_per_s"] = statistics.median(rates) if rates else None
        row["window_structures_per_s"] = [round(r, 1) for r in rates]
    row["load_end"] = load_average()
    logger.info("%s", row)
    return row


# ------------------------------------------------------------------------ main

def paired_ratio(windows: List[float], reference: List[float]) -> float:
    """Geometric mean over log windows of ``windows[i] / reference[i]``: every case trains on
    the same batches in the same order (same seed), so window i of two runs holds the same
    structures, and the ratio removes the spread between batches of different sizes."""
    pairs = [(a, b) for a, b in zip(windows, reference) if a > 0 and b > 0]
    return math.exp(statistics.fmean(math.log(a / b) for a, b in pairs))


def _median_by_case(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (case, workers): the median structures/s over the rounds and the values,
    and the median over rounds of the paired ratio to the in-memory run of the same round."""
    out: Dict[Any, Dict[str, Any]] = {}
    memory_of_round = {row["round"]: row for row in rows
                       if row["case"] == "memory" and row.get("window_structures_per_s")}
    for row in rows:
        if row.get("structures_per_s") is None:
            continue
        key = (row["case"], row["workers"])
        entry = out.setdefault(key, {"case": row["case"], "n_structures": row["n_structures"],
                                     "workers": row["workers"], "values": [], "ratios_to_memory": [],
                                     "loads": []})
        entry["values"].append(round(row["structures_per_s"], 1))
        entry["loads"].append(round(row["load_start"] or 0.0, 1))
        reference = memory_of_round.get(row["round"])
        if reference is not None:
            ratio = paired_ratio(row["window_structures_per_s"], reference["window_structures_per_s"])
            entry["ratios_to_memory"].append(round(ratio, 3))
    for entry in out.values():
        entry["median_structures_per_s"] = statistics.median(entry["values"])
        ratios = entry["ratios_to_memory"]
        entry["median_ratio_to_memory"] = statistics.median(ratios) if ratios else None
    return list(out.values())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--memory-max", type=int, default=100_000,
                        help="largest size also run on the in-memory path")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the throughput cases (smallest size)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="skip the memory phase (only the throughput rounds at the smallest size)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "training_scale")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    meta = {**machine_info(), "command": " ".join(sys.argv), "steps": args.steps, "model": MODEL}
    val = make_dataset(256, seed=1)
    rows: List[Dict[str, Any]] = []
    sizes = sorted(args.sizes)
    # memory against size: one run per case
    for size in [] if args.throughput_only else sizes:
        folder = make_dataset(size)
        meta[f"index_{size}"] = index = build_indexes(folder)
        logger.info("index of %d structures: %.0f s, %.1f MB", size, index["index_s"], index["index_MB"])
        cases = [("lazy", True, 0), ("lazy", True, 2)]
        if size <= args.memory_max:
            cases.insert(0, ("memory", False, 0))
        for name, lazy, workers in cases:
            row = run_case(name, size, folder, val, lazy, workers, args.steps, args.output, args.timeout)
            rows.append({"phase": "memory", **row})
            write_json(args.json, rows, meta)
    # throughput: the cases of the smallest size in turn, round after round (machine load is shared)
    folder = make_dataset(sizes[0])
    for k in range(args.rounds):
        for name, lazy, workers in (("memory", False, 0), ("lazy", True, 0), ("lazy", True, 1), ("lazy", True, 2)):
            row = run_case(name, sizes[0], folder, val, lazy, workers, args.steps, args.output, args.timeout)
            rows.append({"phase": "throughput", "round": k, **row})
            write_json(args.json, rows, meta)
    meta["load_average_end"] = load_average()
    meta["throughput_medians"] = medians = _median_by_case([r for r in rows if r["phase"] == "throughput"])
    if not args.throughput_only:
        print_table([r for r in rows if r["phase"] == "memory"],
                    ["case", "n_structures", "workers", "peak_rss_MB", "peak_pss_tree_MB", "setup_s",
                     "structures_per_s", "load_start", "error"])
        print()
    print_table(medians, ["case", "n_structures", "workers", "median_structures_per_s", "median_ratio_to_memory",
                          "values", "ratios_to_memory", "loads"])
    write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
