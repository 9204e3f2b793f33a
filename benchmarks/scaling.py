"""Energy+forces time and peak memory of TransIP against the number of atoms.

    python benchmarks/scaling.py [--quick] [--json OUT.json] [--device cpu|cuda]

Structures: random water-density atom clouds (0.1 atoms/Å³, H:O = 2:1, no pair closer than
~1.4 Å). Variants of one model size (default d=128, 4 layers, 8 heads; random weights):
``dense`` (all pairs, distance bias: quadratic memory), ``dense-nobias`` (all pairs, fused
attention, no bias), ``local5A`` (attention cutoff 5 Å over a cell-list neighbour list:
linear) and ``local5A-periodic`` (the same with relative positions, the cloud filling a
periodic cube: every atom has a full neighbour shell, as in a solvent box); ``...-graph``: the
same two, capture-safe (static neighbour list, capacity fitted on the structure with a 25 %
margin) and, on CUDA, captured in a CUDA graph and replayed (on the CPU: capture-safe, eager).
Every case runs
in a fresh subprocess so that peak memory is its own: peak resident set size growth on the
CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Cases whose estimated memory exceeds
``--max-gb`` are reported as skipped.
JSON: rows ``model, variant, device, n_atoms, ms_per_eval, peak_mem_mb`` (+ ``skipped``; graph
variants: ``max_neighbors``, ``max_cell_atoms``, ``overflow``).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TRANSIP_SIZES, load_average, machine_info, print_table, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.scaling")

VARIANTS: Dict[str, Dict[str, Any]] = {
    "dense": {},
    "dense-nobias": {"distance_bias": False},
    "local5A": {"attention_cutoff": 5.0},
    "local5A-periodic": {"attention_cutoff": 5.0, "position_encoding": "relative"},
    "local5A-graph": {"attention_cutoff": 5.0},
    "local5A-periodic-graph": {"attention_cutoff": 5.0, "position_encoding": "relative"},
}
WATER_DENSITY_SPACING = 0.1 ** (-1.0 / 3.0)  # Å between grid points: 0.1 atoms/Å³
CPU_SIZES = [22, 100, 300, 1000, 3000, 10000]
GPU_SIZES = [22, 100, 1000, 3000, 10000, 30000, 100000]
QUICK_SIZES = [22, 300, 1000, 3000]


def estimate_gb(variant: str, n: int, config: Dict[str, Any]) -> float:
    """Rough peak memory (GB) of one float32 energy+forces evaluation."""
    d, layers, heads = config["d_model"], config["n_layers"], config["n_heads"]
    if variant.startswith("local5A"):
        m = 80  # neighbours within 5 Å at 0.1 atoms/Å³, padded
        return n * m * (2 * d + 40 + layers * heads * 4) * 4 * 3 / 1e9
    pairs = n * n
    per_pair = 3 + 1  # diff, r
    if variant == "dense":
        per_pair += 32 * 3 + layers * heads * 4  # rbf and its intermediates; biases, scores, softmax saved
    else:
        per_pair += 0  # fused attention: no N x N score matrices kept
    return (pairs * per_pair + n * d * layers * 12) * 4 / 1e9


def cloud_side(n: int) -> int:
    """Grid points per edge of the cube that holds ``n`` atoms."""
    return int(round(n ** (1.0 / 3.0))) + 1


def water_cloud(n: int, seed: int = 0):
    """(atomic_numbers (1, n), positions (1, n, 3) Å) at 0.1 atoms/Å³, on the sites of a cube
    of edge ``cloud_side(n) * WATER_DENSITY_SPACING`` Å."""
    import torch

    g = torch.Generator().manual_seed(seed)
    spacing = WATER_DENSITY_SPACING
    side = cloud_side(n)
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pick = torch.randperm(grid.shape[0], generator=g)[:n]
    pos = grid[pick].float() * spacing + 0.35 * torch.rand(n, 3, generator=g)
    z = torch.where(torch.arange(n) % 3 == 0, 8, 1)
    return z.unsqueeze(0), pos.unsqueeze(0)


def worker(variant: str, n: int, size: str, device: str, target_s: float, threads: int) -> Dict[str, Any]:
    """Time one case in this process; returns a row."""
    import torch

    from _common import random_transip
    from transip_openmm.model import prepare_for_inference

    if threads:
        torch.set_num_threads(threads)
    config = {**TRANSIP_SIZES[size], **VARIANTS[variant]}
    model = prepare_for_inference(random_transip(config)).to(device)
    scripted = torch.jit.script(model)
    z, pos = water_cloud(n)
    z, pos = z.to(device), pos.to(device)
    mask = torch.ones_like(z, dtype=torch.bool)
    charge = torch.zeros(1, dtype=torch.long, device=device)
    mult = torch.ones(1, dtype=torch.long, device=device)
    cell = None
    if "periodic" in variant:
        edge = cloud_side(n) * WATER_DENSITY_SPACING
        cell = torch.eye(3, dtype=pos.dtype, device=device) * edge
    cuda = device.startswith("cuda")
    graph_mode = variant.endswith("-graph")
    if graph_mode:  # static shapes, no host reads: capturable
        scripted.capture_safe = True
        scripted.fit_neighbor_capacity(pos[0], cell, 0.25)
    static_pos = pos.clone()

    def energy_forces() -> torch.Tensor:
        p = static_pos.detach().requires_grad_(True)
        energy, _ = scripted(z, p, mask, charge, mult, cell)
        return torch.autograd.grad([energy.sum()], [p])[0]

    graph = None
    if graph_mode and cuda:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # the profiling executor settles before capture
                energy_forces()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            energy_forces()

    def evaluate() -> None:
        if graph is not None:
            graph.replay()
        else:
            energy_forces()
        if cuda:
            torch.cuda.synchronize()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    evaluate()
    first = time.perf_counter() - t0
    evaluate()  # the profiling executor optimises on the second call
    times = []
    deadline = time.perf_counter() + target_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter()
        evaluate()
        times.append(time.perf_counter() - t0)
        if first > 5.0 and len(times) >= 1:
            break  # very large cases: one timed evaluation is enough
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024.0  # KiB on Linux
    row = {"model": size, "variant": variant, "device": device, "n_atoms": n,
           "ms_per_eval": 1e3 * min(times), "ms_median": 1e3 * sorted(times)[len(times) // 2],
           "peak_mem_mb": peak_mb, "n_timed": len(times)}
    if graph_mode:
        row.update({"cuda_graph": graph is not None, "max_neighbors": scripted.max_neighbors,
                    "max_cell_atoms": scripted.max_cell_atoms, "overflow": scripted.neighbor_overflow()})
    return row


def run_case(variant: str, n: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Run one case in a subprocess (fresh memory high-water mark)."""
    cmd = [sys.executable, __file__, "--worker", variant, str(n), "--size", args.size, "--device", args.device,
           "--target-s", str(args.target_s), "--threads", str(args.threads)]
    load = load_average()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return {"model": args.size, "variant": variant, "device": args.device, "n_atoms": n,
                "skipped": f"timed out after {args.case_timeout:g} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"model": args.size, "variant": variant, "device": args.device, "n_atoms": n,
                "skipped": f"failed: {tail[0][:160]}"}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_before"] = load
    return row


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="transip-d128-L4", choices=sorted(TRANSIP_SIZES))
    parser.add_argument("--sizes", default="", help="atom counts, comma-separated (default by device)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--max-gb", type=float, default=None,
                        help="skip cases estimated above this (default 6 on CPU, 60 on CUDA)")
    parser.add_argument("--target-s", type=float, default=None, help="timing budget per case (s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--case-timeout", type=float, default=900.0)
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.target_s is None:
        args.target_s = 0.5 if args.quick else 2.0
    if args.worker:
        row = worker(args.worker[0], int(args.worker[1]), args.size, args.device, args.target_s, args.threads)
        print(json.dumps(row))
        return 0
    setup_logging()
    max_gb = args.max_gb if args.max_gb is not None else (60.0 if cuda else 6.0)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else (GPU_SIZES if cuda else CPU_SIZES)
    variants = [v for v in args.variants.split(",") if v]
    meta = machine_info()
    meta.update({"benchmark": "scaling", "device": args.device, "size": args.size, "quick": args.quick,
                 "threads": args.threads, "command": " ".join(sys.argv)})
    rows: List[Dict[str, Any]] = []
    config = TRANSIP_SIZES[args.size]
    for variant in variants:
        for n in sizes:
            est = estimate_gb(variant, n, config)
            if "periodic" in variant and cloud_side(n) * WATER_DENSITY_SPACING < 2 * 5.0:
                rows.append({"model": args.size, "variant": variant, "device": args.device, "n_atoms": n,
                             "skipped": "periodic box narrower than twice the 5 Å cutoff"})
                continue
            if est > max_gb:
                rows.append({"model": args.size, "variant": variant, "device": args.device, "n_atoms": n,
                             "skipped": f"estimated {est:.0f} GB > {max_gb:g} GB"})
                logger.info("%-12s %7d atoms: skipped (estimated %.0f GB)", variant, n, est)
                continue
            row = run_case(variant, n, args)
            rows.append(row)
            write_json(args.json, rows, meta)  # as it goes: a run stopped early keeps its rows
            logger.info("%-12s %7d atoms: %s", variant, n,
                        row.get("skipped") or f"{row['ms_per_eval']:.2f} ms, {row['peak_mem_mb']:.0f} MB")
    meta["load_average_1min_end"] = load_average()
    print_table(rows, ["model", "variant", "device", "n_atoms", "ms_per_eval", "peak_mem_mb", "load_before", "skipped"])
    write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
