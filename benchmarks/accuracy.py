"""Accuracy side by side: TransIP, the augmentation and no-symmetry baselines, and MACE.

    python benchmarks/accuracy.py [--quick] [--json OUT.json] [--datasets acac,omol25]

For each dataset (``acac``: BOTNet acetylacetone train_300K (validation: its last 10 % block)
-> test_MD_300K; ``omol25``: the shared OMol25 sample split by molecule into train /
validation / test) the three TransIP symmetry modes are
trained through the real ``transip train`` path (``training/configs/<dataset>.yaml``; via
``transip_openmm.training.compare_symmetry``) and MACE (MACE-OFF-small-like: 96x0e,
max_L 0, correlation 3, r_max 4.5 Å) is trained with mace-torch's own ``mace_run_train`` on
the same train/validation structures. Its number of epochs is chosen so its training time
matches the mean TransIP training time (from a timed first epoch), i.e. the same wall-clock
budget; both times are reported. Checkpoints are picked on validation data; every model is
evaluated on the test data only, with the same metric code
(``transip_openmm.training.evaluate``): energy MAE, force MAE/RMSE, force cosine, rotation
errors. Needs ``../shared/data`` (exits with a message when absent).
JSON: rows ``dataset, model, train_time_s, energy_mae_meV, force_mae_meV_per_A, ...``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SHARED_DATA, load_average, machine_info, print_table, setup_logging, write_json  # noqa: E402

import numpy as np  # noqa: E402

logger = logging.getLogger("benchmarks.accuracy")

CONFIGS = {"acac": REPO / "training" / "configs" / "acac.yaml",
           "omol25": REPO / "training" / "configs" / "omol25_sample.yaml"}
MODES = ["transip", "augment", "none"]
MACE_HPARAMS = ["--model", "MACE", "--num_channels", "96", "--max_L", "0", "--correlation", "3",
                "--r_max", "4.5", "--num_interactions", "2", "--max_ell", "3", "--num_radial_basis", "8",
                "--num_cutoff_basis", "5", "--radial_MLP", "[64, 64, 64]"]


def write_extxyz(dataset, path: Path) -> None:
    """Structures of a MoleculeDataset as extxyz with REF_energy (eV) and REF_forces (eV/Å)."""
    import ase
    import ase.io

    frames = []
    for mol in dataset:
        atoms = ase.Atoms(numbers=np.asarray(mol.numbers), positions=np.asarray(mol.positions))
        atoms.info["REF_energy"] = float(mol.energy)
        atoms.info["total_charge"] = int(mol.charge)
        atoms.info["total_spin"] = int(mol.multiplicity)
        atoms.arrays["REF_forces"] = np.asarray(mol.forces, dtype=np.float64)
        frames.append(atoms)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(str(path), frames, format="extxyz")


def train_mace(train_xyz: Path, val_xyz: Path, workdir: Path, epochs: int, seed: int) -> Tuple[Path, float]:
    """Run mace-torch's training; returns (model file, wall time in s)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "mace.cli.run_train", "--name", "mace", "--seed", str(seed),
           "--train_file", str(train_xyz), "--valid_file", str(val_xyz),
           "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", "average",
           "--batch_size", "5", "--valid_batch_size", "10", "--max_num_epochs", str(epochs),
           "--eval_interval", str(max(1, epochs)), "--device", "cpu", "--default_dtype", "float32",
           "--energy_weight", "1.0", "--forces_weight", "10.0", "--lr", "0.01",
           "--work_dir", str(workdir), "--model_dir", str(workdir), "--restart_latest"] + MACE_HPARAMS
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError("mace training failed: " + (proc.stderr or proc.stdout)[-1500:])
    model = workdir / "mace.model"
    if not model.is_file():
        candidates = sorted(workdir.glob("*.model"))
        if not candidates:
            raise RuntimeError(f"mace training wrote no model in {workdir}")
        model = candidates[0]
    return model, wall


class MacePredictor:
    """``Predictor`` (batch -> energies (B,), forces (B, N, 3), eV and eV/Å) for a MACE file."""

    def __init__(self, model_path: Path) -> None:
        from mace.calculators import MACECalculator

        self.calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")

    def __call__(self, batch) -> Tuple[np.ndarray, np.ndarray]:
        import ase

        b, n = batch.numbers.shape
        energies = np.zeros(b)
        forces = np.zeros((b, n, 3))
        for i in range(b):
            k = int(batch.n_atoms[i])
            atoms = ase.Atoms(numbers=batch.numbers[i, :k].numpy(),
                              positions=batch.positions[i, :k].detach().double().numpy())
            atoms.calc = self.calc
            energies[i] = atoms.get_potential_energy()
            forces[i, :k] = atoms.get_forces()
        return energies, forces


def run_dataset(name: str, args: argparse.Namespace, out: Path) -> List[Dict[str, Any]]:
    from transip_openmm.training.compare_symmetry import compare, local_model, with_overrides
    from transip_openmm.training.config import load_config
    from transip_openmm.training.evaluate import evaluate
    from transip_openmm.training.splits import held_out_test
    from transip_openmm.training.trainer import prepare_data

    config = with_overrides(CONFIGS[name], out / name, {"model": local_model(args.local)})
    steps = args.transip_steps if args.transip_steps else (150 if args.quick else None)
    # Finished runs are reused (compare skips them): keep each model variant in its own folder.
    variant = "transip" if args.local is None else f"transip-relative-local{args.local:g}A"
    results = compare(config, out / name / variant, steps, args.modes, args.rotation_structures)
    rows = []
    for mode, m in results.items():
        model = f"transip-{mode}" if mode != "transip" else "transip"
        if args.local is not None:
            model += f"-relative-local{args.local:g}A"
        rows.append({"dataset": name, "model": model,
                     "train_time_s": m.get("train_time_s"), "steps": m.get("step"), **_metric_cols(m)})

    if args.no_mace:
        return rows
    data = prepare_data(load_config(config))
    train_xyz, val_xyz = out / name / "mace" / "train.xyz", out / name / "mace" / "val.xyz"
    write_extxyz(data.train, train_xyz)
    # MACE validates on this small subset of the validation part only (it picks its checkpoint
    # with it); the reported metrics come from our evaluation on the test part below.
    write_extxyz(data.val.subset(range(min(20, len(data.val)))), val_xyz)
    budget = float(np.mean([m.get("train_time_s") or 0.0 for m in results.values()]))
    # Time one epoch (with start-up), then train from scratch for as many epochs as fit.
    _, one_epoch = train_mace(train_xyz, val_xyz, out / name / "mace" / "probe", 1, args.seed)
    epochs = args.mace_epochs or max(1, int(round(budget / max(one_epoch, 1e-3))))
    logger.info("%s: TransIP budget %.0f s, MACE epoch %.0f s (incl. start-up) -> %d epochs",
                name, budget, one_epoch, epochs)
    model_path, wall = train_mace(train_xyz, val_xyz, out / name / "mace" / "run", epochs, args.seed)
    cfg = load_config(config)
    metrics = evaluate(MacePredictor(model_path), held_out_test(cfg), data_max_atoms(cfg),
                       rotation_structures=args.rotation_structures, n_rotations=8, seed=0)
    rows.append({"dataset": name, "model": "mace-off-small-like", "train_time_s": wall,
                 "steps": f"{epochs} epochs", **_metric_cols(metrics)})
    return rows


def data_max_atoms(cfg) -> int:
    return int(cfg.data.max_atoms_per_batch)


def _metric_cols(m: Dict[str, Any]) -> Dict[str, Any]:
    keys = ["energy_mae_meV", "energy_mae_meV_per_atom", "force_mae_meV_per_A", "force_rmse_meV_per_A",
            "force_cos_mean", "rot_energy_std_meV", "rot_force_err_rel"]
    return {k: m.get(k) for k in keys}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150 TransIP steps, few MACE epochs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--datasets", default="acac,omol25")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "accuracy_benchmark")
    parser.add_argument("--transip-steps", type=int, default=None, help="override training steps")
    parser.add_argument("--mace-epochs", type=int, default=None, help="override the budget-matched epochs")
    parser.add_argument("--no-mace", action="store_true")
    parser.add_argument("--local", type=float, default=None, metavar="CUTOFF",
                        help="TransIP modes with relative positions and local attention of this cutoff (Å)")
    parser.add_argument("--rotation-structures", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if args.quick:
        args.rotation_structures = min(args.rotation_structures, 5)
    setup_logging()
    if not SHARED_DATA.is_dir():
        print(f"reference data not found at {SHARED_DATA}; nothing to benchmark")
        return 1
    meta = machine_info()
    meta.update({"benchmark": "accuracy", "quick": args.quick, "command": " ".join(sys.argv)})
    rows: List[Dict[str, Any]] = []
    for name in [d for d in args.datasets.split(",") if d]:
        rows.extend(run_dataset(name, args, args.output))
    for name in {r["dataset"] for r in rows}:
        ref = {r["model"]: r for r in rows if r["dataset"] == name}
        for r in rows:
            if r["dataset"] == name and "transip" in ref and r["force_mae_meV_per_A"]:
                r["force_mae_vs_transip"] = r["force_mae_meV_per_A"] / ref["transip"]["force_mae_meV_per_A"]
    meta["load_average_1min_end"] = load_average()
    print_table(rows, ["dataset", "model", "steps", "train_time_s", "energy_mae_meV", "force_mae_meV_per_A",
                       "force_rmse_meV_per_A", "force_cos_mean", "rot_energy_std_meV", "rot_force_err_rel"])
    write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
