"""Training throughput: the shipped recipe (float32 and bf16 autocast) beside MACE on the same data.

    python benchmarks/training_throughput.py [--device cpu|cuda] [--steps N] [--json OUT.json]
    python benchmarks/training_throughput.py --write-extxyz OUT.extxyz   (data for a machine without ase-db-backends)

TransIP: the real trainer (``Trainer``) with the shipped local model's recipe
(``training/configs/local_model.yaml``: d128/L4, relative positions, 5 Å local attention, pair
term, augmentation, batches of up to 768 atoms, AdamW, EMA), its data replaced by ``--data``,
in each ``--precisions`` (``float32``; ``bf16``: the Transformer blocks under bfloat16
autocast, ``run.precision``). Throughput counts the optimiser steps only (the trainer's own
``train_time``: no validation, no checkpoint writing), after ``--warmup`` steps.
MACE: MACE-OFF23-small hyper-parameters (random weights, the data's elements), float32, energy
and force MSE with AdamW, batches of as many structures as hold ~768 atoms on average; the
same molecules. Data (default): the OMol25 sample of the reference data if present, else
``.whl/omol25_sample.extxyz`` (written by ``benchmarks/gpu_wheels.sh``), else the repository's
``tests/data/omol25_mini.aselmdb``.
JSON rows: ``model, precision, device, steps, structures_per_s, atoms_per_s, ms_per_step,
mean_atoms_per_step, peak_memory_mb`` (+ ``error``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SHARED_DATA, load_average, machine_info, print_table, setup_logging, write_json  # noqa: E402

logger = logging.getLogger("benchmarks.training_throughput")

RECIPE = REPO / "training" / "configs" / "local_model.yaml"
CARRIED_DATA = REPO / ".whl" / "omol25_sample.extxyz"
MAX_ATOMS_PER_BATCH = 768


def default_data() -> List[str]:
    """The OMol25 sample (reference data), else its carried extxyz copy, else the repository's mini copy."""
    shards = sorted((SHARED_DATA / "omol25_sample").glob("*.aselmdb"))
    if shards:
        return [str(p) for p in shards]
    if CARRIED_DATA.is_file():
        return [str(CARRIED_DATA)]
    return [str(REPO / "tests" / "data" / "omol25_mini.aselmdb")]


def write_extxyz(paths: Sequence[str], out: Path) -> int:
    """Copy the molecules of ``paths`` into one extxyz file (energy eV, forces eV/Å, charge,
    multiplicity, family), readable with ase alone. Returns the number of structures."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from transip_openmm.training.readers import read_datasets

    frames = []
    for mol in read_datasets(paths).molecules:
        atoms = ase.Atoms(numbers=mol.numbers, positions=mol.positions)
        atoms.info.update({"charge": int(mol.charge), "multiplicity": int(mol.multiplicity), "family": mol.family})
        atoms.calc = SinglePointCalculator(atoms, energy=float(mol.energy), forces=mol.forces)
        frames.append(atoms)
    out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(str(out), frames, format="extxyz")
    return len(frames)


def peak_memory_mb(device: str) -> Optional[float]:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def transip_row(paths: Sequence[str], device: str, precision: str, warmup: int, steps: int,
                threads: int) -> Dict[str, Any]:
    """Steps of the shipped recipe through the real trainer; throughput of the timed steps."""
    import torch
    import yaml

    from transip_openmm.training.config import config_from_dict
    from transip_openmm.training.trainer import Trainer

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data"].update({"root": "/", "train": [str(Path(p).resolve()) for p in paths], "val_fraction": 0.05})
    recipe["optim"]["max_steps"] = warmup + steps
    recipe["run"].update({"device": device, "threads": threads, "precision": precision, "val_every": 10**9,
                          "checkpoint_every": 10**9, "log_every": 10**9, "val_rotation_structures": 0,
                          "progress": False})
    cfg = config_from_dict(recipe, RECIPE.parent)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="transip-throughput-") as tmp:
        trainer = Trainer(cfg, Path(tmp), stop_after=warmup)
        trainer.train()
        t0, s0, a0 = trainer.train_time, trainer.structures_seen, trainer.atoms_seen
        trainer.stop_after = warmup + steps
        trainer.train()
        dt = trainer.train_time - t0
        structures, atoms = trainer.structures_seen - s0, trainer.atoms_seen - a0
    return {"model": "transip (local_model.yaml recipe)", "precision": precision, "device": device, "steps": steps,
            "structures_per_s": structures / dt, "atoms_per_s": atoms / dt, "ms_per_step": 1e3 * dt / steps,
            "mean_atoms_per_step": atoms / steps, "peak_memory_mb": peak_memory_mb(device)}


def mace_row(paths: Sequence[str], device: str, warmup: int, steps: int) -> Dict[str, Any]:
    """MACE-OFF-small-like training steps on the same molecules (float32)."""
    import ase
    import numpy as np
    import torch
    from mace import data as mace_data
    from mace.data.utils import KeySpecification
    from mace.tools import AtomicNumberTable, torch_geometric
    from mace_models import MACE_OFF, build_mace

    from transip_openmm.training.readers import read_datasets

    molecules = read_datasets(paths).molecules
    elements = sorted({int(z) for mol in molecules for z in mol.numbers})
    r_max = MACE_OFF["mace-off-small"]["r_max"]
    model = build_mace("mace-off-small", elements=elements).to(device).train()
    table = AtomicNumberTable(elements)
    keys = KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    graphs = []
    for mol in molecules:
        atoms = ase.Atoms(numbers=mol.numbers, positions=mol.positions)
        atoms.info["REF_energy"] = float(mol.energy)
        atoms.arrays["REF_forces"] = np.asarray(mol.forces)
        graphs.append(mace_data.AtomicData.from_config(
            mace_data.config_from_atoms(atoms, key_specification=keys), z_table=table, cutoff=r_max))
    mean_atoms = float(np.mean([len(mol.numbers) for mol in molecules]))
    batch_size = max(1, int(round(MAX_ATOMS_PER_BATCH / mean_atoms)))
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def batches():
        while True:
            yield from loader

    source = batches()
    dt, structures, atoms_seen = 0.0, 0, 0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for step in range(warmup + steps):
        batch = next(source).to(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(batch.to_dict(), training=True, compute_force=True)
        n_atoms = batch.ptr[1:] - batch.ptr[:-1]
        loss = (((out["energy"] - batch.energy) / n_atoms) ** 2).mean() \
            + 100.0 * ((out["forces"] - batch.forces) ** 2).mean()
        loss.backward()
        optimizer.step()
        float(loss.detach())  # waits for the step to finish
        if step >= warmup:
            dt += time.perf_counter() - t0
            structures += int(batch.num_graphs)
            atoms_seen += int(batch.num_nodes)
    return {"model": "mace-off-small-like", "precision": "float32", "device": device, "steps": steps,
            "structures_per_s": structures / dt, "atoms_per_s": atoms_seen / dt, "ms_per_step": 1e3 * dt / steps,
            "mean_atoms_per_step": atoms_seen / steps, "peak_memory_mb": peak_memory_mb(device)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="*", default=None, help="training files (default: see the module doc)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--no-mace", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--write-extxyz", metavar="OUT", default=None,
                        help="only write the data as one extxyz file (for a machine without ase-db-backends)")
    args = parser.parse_args(argv)
    setup_logging()
    paths = args.data or default_data()
    if args.write_extxyz:
        n = write_extxyz(paths, Path(args.write_extxyz))
        print(f"wrote {n} structures to {args.write_extxyz}")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    meta = machine_info()
    meta.update({"benchmark": "training_throughput", "device": args.device, "data": paths,
                 "recipe": str(RECIPE.relative_to(REPO)), "command": " ".join(sys.argv)})
    rows: List[Dict[str, Any]] = []
    jobs = [("transip", p) for p in args.precisions.split(",") if p] + ([] if args.no_mace else [("mace", "float32")])
    for kind, precision in jobs:
        load = load_average()
        try:
            if kind == "transip":
                row = transip_row(paths, args.device, precision, args.warmup, args.steps, args.threads)
            else:
                row = mace_row(paths, args.device, args.warmup, args.steps)
        except Exception as exc:  # a row that fails must not hide the others
            logger.warning("%s %s failed: %s", kind, precision, exc)
            row = {"model": kind, "precision": precision, "device": args.device, "error": str(exc)[:300]}
        row["load_before"] = load
        rows.append(row)
        write_json(args.json, rows, meta)  # as it goes
    meta["load_average_1min_end"] = load_average()
    print_table(rows, ["model", "precision", "device", "steps", "structures_per_s", "atoms_per_s", "ms_per_step",
                       "mean_atoms_per_step", "peak_memory_mb", "error"])
    write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
