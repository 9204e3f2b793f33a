"""Test error vs training-set size for the symmetry modes, at a matched compute budget (CPU seconds).

    python benchmarks/scaling_data.py --modes none augment transip --sizes 150,300,all \\
        --seeds 0,1,2 --budget-s 60 --json benchmarks/results/scaling_data.json \\
        --plot benchmarks/results/scaling_data.png

The data of ``--config`` (default ``training/configs/compare_omol25_sample.yaml``) are split
once by molecule into train / validation / test; the size-N training set is the first N of a
fixed order of the training part whose first few records hold every element (so the
reference energies of every element are fitted; the sets are nested). Each run trains one
mode (``NAME`` or ``NAME:key=value;...`` with objective overrides, e.g.
``transip:equiv_weight=0.3;layers=[0,-1]``) through the real trainer, picks the checkpoint
(EMA weights) with the lowest validation force MAE, and evaluates it on the test part only:
force MAE, energy MAE per atom, the energy spread over random rotations (std of E over 8
rotations, meV) and the force rotation error (mean ‖F(Rx) − R·F(x)‖/‖F‖).

Compute matching: every mode gets the same compute budget. The CPU seconds per step of each
mode (1 thread) are measured first (``--probe-steps`` steps after 10 warm-up steps, the
modes round-robin, twice; the smaller value counts), and a run gets ``budget / (CPU s/step)``
steps (its cosine schedule ends there). On a shared machine wall time follows the other
processes' load, so the wall seconds each run really took (validation excluded) are reported
next to its steps: they match only as well as the load allowed. Finished runs are reused.
Needs ``../shared/data`` (exits with a message when absent).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SHARED_DATA, load_average, machine_info, print_table, setup_logging, write_json  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

logger = logging.getLogger("benchmarks.scaling_data")

DEFAULT_CONFIG = REPO / "training" / "configs" / "compare_omol25_sample.yaml"
METRICS = ["force_mae_meV_per_A", "energy_mae_meV_per_atom", "rot_energy_std_meV", "rot_force_err_rel"]


def parse_mode(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``NAME[:key=value,...]`` -> (name, objective overrides); values are read as YAML."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def write_extxyz(dataset, path: Path) -> None:
    """Records as extxyz (energy eV, forces eV/Å, charge, multiplicity, family in the info line)."""
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for mol in dataset:
        atoms = ase.Atoms(numbers=np.asarray(mol.numbers), positions=np.asarray(mol.positions))
        atoms.calc = SinglePointCalculator(atoms, energy=float(mol.energy), forces=np.asarray(mol.forces))
        atoms.info.update({"charge": int(mol.charge), "multiplicity": int(mol.multiplicity), "family": mol.family})
        frames.append(atoms)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(str(path), frames, format="extxyz")


def element_covering_order(dataset, seed: int = 0) -> List[int]:
    """A fixed order of the records: first a few that together hold every element (greedy), then
    the rest shuffled; the first N of it is the size-N training set (nested, every element seen)."""
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(dataset))]
    missing = set(dataset.elements)
    first: List[int] = []
    while missing:
        best = max(order, key=lambda i: len(missing & set(dataset[i].numbers.tolist())))
        first.append(best)
        missing -= set(dataset[best].numbers.tolist())
        order.remove(best)
    return first + order


def prepare_files(base: Path, sizes: Sequence[Optional[int]], work: Path,
                  max_force: Optional[float] = None) -> Dict[str, Any]:
    """Split the config's data once (by molecule) and write the size-N training files, the
    validation and the test files; returns their paths and the element list. With
    ``max_force`` (eV/Å), records whose largest atomic force exceeds it are dropped from all
    three parts before the split."""
    from transip_openmm.training.config import load_config
    from transip_openmm.training.filters import drop_large_forces
    from transip_openmm.training.splits import config_parts, molecule_key
    from transip_openmm.training.trainer import open_data

    cfg = load_config(base)
    cfg.data.lazy = False  # files, folders and globs as the trainer reads them, all in memory
    full = open_data(cfg, cfg.data.train)
    dropped = 0
    if max_force is not None:
        full, dropped = drop_large_forces(full, max_force, what="study data")
    train, val, test = config_parts(cfg, full)
    order = element_covering_order(train)
    data_dir = work / "data"
    files: Dict[str, Any] = {"val": data_dir / "val.xyz", "test": data_dir / "test.xyz",
                             "elements": [int(z) for z in full.elements], "train": {},
                             "split": split_summary({"train": train, "val": val, "test": test}, molecule_key, dropped)}
    for size in sizes:
        n = len(train) if size is None else min(size, len(train))
        files["train"][size] = data_dir / f"train_{n}.xyz"
        if not files["train"][size].is_file():
            write_extxyz(train.subset(order[:n]), files["train"][size])
    for part, ds in (("val", val), ("test", test)):
        if not files[part].is_file():
            write_extxyz(ds, files[part])
    return files


def split_summary(parts: Dict[str, Any], key, dropped: int) -> Dict[str, Any]:
    """Structures and molecule keys per part, the records dropped by the force filter, and the
    test part's zero-force MAE (meV/Å: the error of predicting no force at all)."""
    summary: Dict[str, Any] = {"dropped_by_max_force": int(dropped)}
    for name, ds in parts.items():
        summary[name] = {"structures": len(ds), "molecules": len({key(m) for m in ds})}
    test_forces = np.concatenate([np.asarray(m.forces) for m in parts["test"]])
    summary["test_zero_force_mae_meV_per_A"] = float(1000.0 * np.abs(test_forces).mean())
    return summary


def run_config(base: Path, files: Dict[str, Any], spec: str, size: Optional[int], seed: int,
               steps: int) -> Dict[str, Any]:
    """The config dict of one run: ``base`` with the subset files, the mode and the steps."""
    name, overrides = parse_mode(spec)
    data = yaml.safe_load(base.read_text())
    data["seed"] = int(seed)
    data["data"].update({"root": "/", "train": [str(files["train"][size])], "val": [str(files["val"])],
                         "test": [str(files["test"])], "elements": files["elements"], "test_fraction": 0.0})
    data.setdefault("objective", {}).update({"symmetry": name, **overrides})
    for key in ("equiv_weight", "layers", "temperature", "transform_hidden"):
        if key not in overrides:  # the variant's preset, not the base config's value
            data["objective"].pop(key, None)
    data["optim"]["max_steps"] = int(steps)
    every = max(10, steps // 6)
    data["run"].update({"val_every": every, "checkpoint_every": every, "progress": False, "threads": 1,
                        "val_rotation_structures": 0, "log_every": 10})
    return data


def train_run(cfg_dict: Dict[str, Any], out: Path, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Train through the real trainer; returns its summary."""
    from transip_openmm.training.config import config_from_dict
    from transip_openmm.training.trainer import Trainer

    cfg = config_from_dict(cfg_dict, out)
    return Trainer(cfg, out, stop_after=stop_after).train()


def seconds_per_step(base: Path, files: Dict[str, Any], specs: Sequence[str], probe_steps: int,
                     work: Path, rounds: int = 2) -> Dict[str, float]:
    """CPU seconds per training step of each mode (1 thread): steps 11..10+``probe_steps`` of a
    run on the largest training set, the modes probed round-robin ``rounds`` times, the
    smallest value kept. CPU time, not wall time: on a shared machine the wall time of a
    probe moved by 2x with the other processes' load, the CPU time far less."""
    from transip_openmm.training.config import config_from_dict
    from transip_openmm.training.trainer import Trainer

    cache = work / "seconds_per_step.json"
    rates: Dict[str, float] = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [s for s in specs if s not in rates]
    largest = list(files["train"])[-1]
    measured: Dict[str, List[float]] = {s: [] for s in todo}
    for _ in range(rounds):
        for spec in todo:
            probe = work / "probe"
            shutil.rmtree(probe, ignore_errors=True)
            trainer = Trainer(config_from_dict(run_config(base, files, spec, largest, 0, 10_000), probe), probe,
                              stop_after=10)
            trainer.validate = lambda: {}  # steps only
            trainer.train()
            trainer.stop_after = 10 + probe_steps
            t0 = time.process_time()
            trainer.train()
            measured[spec].append((time.process_time() - t0) / probe_steps)
            logger.info("%s: %.3f CPU s/step", spec, measured[spec][-1])
    rates.update({s: min(v) for s, v in measured.items()})
    work.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rates, indent=2))
    shutil.rmtree(work / "probe", ignore_errors=True)
    return rates


def evaluate_run(run_dir: Path, cfg_dict: Dict[str, Any], rotation_structures: int) -> Dict[str, Any]:
    """Test metrics of the run's best-validation checkpoint (EMA weights)."""
    from transip_openmm.training.config import config_from_dict
    from transip_openmm.training.evaluate import ModelPredictor, evaluate, latent_equivariance_error
    from transip_openmm.training.splits import held_out_test
    from transip_openmm.artifacts import load_checkpoint, model_from_checkpoint

    cfg = config_from_dict(cfg_dict, run_dir)
    test = held_out_test(cfg)
    checkpoint = load_checkpoint(run_dir / "best.ckpt")
    metrics = evaluate(ModelPredictor(model_from_checkpoint(checkpoint)), test, cfg.data.max_atoms_per_batch,
                       rotation_structures=rotation_structures, n_rotations=8, seed=0)
    metrics["latent_equiv_err_rel"] = latent_equivariance_error(checkpoint, test, min(rotation_structures, 10))
    metrics["best_step"] = int(checkpoint["step"])
    return metrics


def one_run(base: Path, files: Dict[str, Any], spec: str, size: Optional[int], seed: int, steps: int, out: Path,
            rotation_structures: int) -> Dict[str, Any]:
    result_path = out / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    cfg_dict = run_config(base, files, spec, size, seed, steps)
    summary = train_run(cfg_dict, out)
    row = {"mode": spec, "size": summary["n_train"], "seed": seed, "steps": summary["step"],
           "train_time_s": summary["train_time_s"], "n_val": summary["n_val"],
           **evaluate_run(out, cfg_dict, rotation_structures)}
    row["n_test"] = row.pop("n_structures")
    result_path.write_text(json.dumps(row, indent=2))
    for name in ("last.ckpt", "best.ckpt"):  # keep the folder small; result.json holds what is reported
        (out / name).unlink(missing_ok=True)
    return row


def _read(path: Path):
    from transip_openmm.training.readers import read_datasets

    return read_datasets([path])


def max_atoms_of(base: Path) -> int:
    return int(yaml.safe_load(base.read_text())["data"].get("max_atoms_per_batch", 384))


def mace_seconds_per_step(base: Path, files: Dict[str, Any], probe_steps: int, work: Path) -> float:
    """CPU seconds per MACE step on the largest training set (cached with the other modes')."""
    import mace_training

    cache = work / "seconds_per_step.json"
    rates: Dict[str, float] = json.loads(cache.read_text()) if cache.is_file() else {}
    if "mace" not in rates:
        largest = list(files["train"])[-1]
        rates["mace"] = mace_training.seconds_per_step(_read(files["train"][largest]), _read(files["val"]),
                                                       files["elements"], max_atoms_of(base), probe_steps)
        work.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rates, indent=2))
    return rates["mace"]


def one_mace_run(base: Path, files: Dict[str, Any], size: Optional[int], seed: int, steps: int, out: Path,
                 rotation_structures: int) -> Dict[str, Any]:
    """One MACE run on the files of one TransIP run (``mace_training``); its result row."""
    import mace_training

    result_path = out / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    train = _read(files["train"][size])
    max_atoms = max_atoms_of(base)
    result = mace_training.train_mace(train, _read(files["val"]), files["elements"], steps, seed, max_atoms)
    row = {"mode": "mace", "size": len(train), "seed": seed, "steps": result["steps"],
           "train_time_s": result["train_wall_s"], "train_cpu_s": result["train_cpu_s"],
           "structures_per_batch": result["structures_per_batch"], "val_log": result["val_log"],
           **mace_training.evaluate_mace(result, _read(files["test"]), files["elements"], max_atoms,
                                         rotation_structures)}
    row["n_test"] = row.pop("n_structures")
    result_path.write_text(json.dumps(row, indent=2))
    return row


def run_task(task: Tuple) -> Dict[str, Any]:
    """One run of the study (a TransIP-trainer mode or MACE), 1 torch thread; its result row."""
    import torch

    torch.set_num_threads(1)
    setup_logging()
    base, files, spec, size, seed, steps, out, rotation_structures = task
    if spec == "mace":
        row = one_mace_run(base, files, size, seed, steps, out, rotation_structures)
    else:
        row = one_run(base, files, spec, size, seed, steps, out, rotation_structures)
    logger.info("%s n=%s seed %d: test F MAE %.1f meV/Å (%d steps, %.0f s)", spec, size, seed,
                row["force_mae_meV_per_A"], row["steps"], row["train_time_s"])
    return row


def aggregate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and std over seeds per (mode, size)."""
    groups: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["size"]), []).append(r)
    out = []
    for (mode, size), rs in groups.items():
        agg: Dict[str, Any] = {"mode": mode, "size": size, "seeds": len(rs),
                               "steps": f"{min(r['steps'] for r in rs)}-{max(r['steps'] for r in rs)}",
                               "train_s": f"{np.mean([r['train_time_s'] for r in rs]):.0f}"}
        for key in METRICS:
            vals = np.array([r[key] for r in rs], dtype=float)
            agg[key] = f"{vals.mean():.4g} ± {vals.std(ddof=1) if len(vals) > 1 else 0.0:.2g}"
            agg[key + "_mean"] = float(vals.mean())
            agg[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        aug = {r["seed"]: r["force_mae_meV_per_A"] for r in rows if r["mode"] == "augment" and r["size"] == size}
        ratios = np.array([r["force_mae_meV_per_A"] / aug[r["seed"]] for r in rs if r["seed"] in aug])
        if len(ratios):  # paired by seed: the seed moves every mode alike
            agg["paired_ratio_mean"] = float(ratios.mean())
            agg["paired_ratio_std"] = float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0
        out.append(agg)
    return out


def markdown(summary: List[Dict[str, Any]]) -> str:
    """The summary as a Markdown table, with each mode's force MAE relative to ``augment``'s of the
    same seed and size (mean ± std of the per-seed ratios)."""
    lines = ["| mode | N train | seeds | steps | wall s | test F MAE (meV/Å) | F MAE / augment (paired by seed) | "
             "E MAE (meV/atom) | rot E spread (meV) | rot F err |", "|---" * 10 + "|"]
    for r in sorted(summary, key=lambda r: (r["size"], r["mode"])):
        ratio = (f"{r['paired_ratio_mean']:.3f} ± {r['paired_ratio_std']:.3f}" if "paired_ratio_mean" in r else "—")
        lines.append(f"| {r['mode']} | {r['size']} | {r['seeds']} | {r['steps']} | {r['train_s']} | "
                     f"{r['force_mae_meV_per_A']} | {ratio} | {r['energy_mae_meV_per_atom']} | "
                     f"{r['rot_energy_std_meV']} | {r['rot_force_err_rel']} |")
    return "\n".join(lines)


def plot(summary: List[Dict[str, Any]], path: Path) -> None:
    """Log-log error vs training-set size, one panel per metric, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"force_mae_meV_per_A": "test force MAE (meV/Å)", "energy_mae_meV_per_atom": "test energy MAE (meV/atom)",
              "rot_energy_std_meV": "rotation energy spread (meV)", "rot_force_err_rel": "force rotation error"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, key in zip(axes, METRICS):
        for mode in dict.fromkeys(r["mode"] for r in summary):
            rs = sorted((r for r in summary if r["mode"] == mode), key=lambda r: r["size"])
            ax.errorbar([r["size"] for r in rs], [r[key + "_mean"] for r in rs], yerr=[r[key + "_std"] for r in rs],
                        marker="o", capsize=3, label=mode)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training structures")
        ax.set_title(titles[key], fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--modes", nargs="+", default=["none", "augment", "transip"],
                        help="NAME or NAME:key=value;key=value (objective overrides, values as YAML)")
    parser.add_argument("--sizes", default="150,300,all", help="training structures per run ('all': the whole part)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget-s", type=float, default=60.0, help="training CPU seconds per run (all modes)")
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--cost-as", default="none=augment",
                        help="MODE=OTHER,...: MODE gets OTHER's measured step cost (none and augment run the "
                             "same computation; separate probes of the two differed by noise)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel (each 1 thread; steps are set by CPU seconds, so the "
                             "load of the other runs changes their wall time, not their compute)")
    parser.add_argument("--rotation-structures", type=int, default=20)
    parser.add_argument("--max-force", type=float, default=None,
                        help="eV/Å: drop records with a larger atomic force from train, validation and test "
                             "(e.g. a generated corpus's close contacts deep in the repulsive wall)")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "scaling_data")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.cost_as = dict(item.split("=", 1) for item in args.cost_as.split(",") if item)
    setup_logging()
    if not SHARED_DATA.is_dir():
        print(f"reference data not found at {SHARED_DATA}; nothing to benchmark")
        return 1
    import torch

    torch.set_num_threads(1)
    specs = list(args.modes)
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    files = prepare_files(args.config, sizes, args.output, args.max_force)
    rates = seconds_per_step(args.config, files, [s for s in specs if s not in args.cost_as and s != "mace"],
                             args.probe_steps, args.output)
    if "mace" in specs:
        rates["mace"] = mace_seconds_per_step(args.config, files, args.probe_steps, args.output)
    for spec, other in args.cost_as.items():  # modes whose step costs the same by construction
        rates[spec] = rates[other] if other in rates else seconds_per_step(
            args.config, files, [other], args.probe_steps, args.output)[other]
    tasks = []
    for size in sizes:
        for spec in specs:
            steps = max(20, int(math.floor(args.budget_s / rates[spec])))
            for seed in seeds:
                tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec)
                out = args.output / tag / f"n{size or 'all'}" / f"seed{seed}"
                tasks.append((args.config, files, spec, size, seed, steps, out, args.rotation_structures))
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(run_task, tasks))
    else:
        rows = [run_task(task) for task in tasks]
    summary = aggregate(rows)
    print_table(summary, ["mode", "size", "seeds", "steps", "train_s"] + METRICS)
    print(markdown(summary))
    meta = machine_info()
    meta.update({"benchmark": "scaling_data", "command": " ".join(sys.argv), "budget_s": args.budget_s,
                 "seconds_per_step": rates, "config": str(args.config.resolve().relative_to(REPO))
                 if args.config.resolve().is_relative_to(REPO) else args.config.name, "max_force": args.max_force,
                 "split": files["split"],
                 "load_average_1min_end": load_average()})
    write_json(args.json, rows + [{"summary": s} for s in summary], meta)
    if args.plot is not None:
        plot(summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
