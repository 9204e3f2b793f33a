"""Train symmetry modes with the same number of steps and compare them on test data.

    python -m transip_openmm.training.compare_symmetry training/configs/acac.yaml \\
        --output runs/compare_acac --max-steps 400

Each mode is trained through the real ``transip train`` path into ``OUTPUT/<mode>``; the
checkpoint with the best validation metric (``best.ckpt``, EMA weights) is evaluated on the
config's *test* data (``data.test`` files or the held-out ``data.test_fraction``; never used
for training or selection) with the metrics of ``transip evaluate``, including the rotation
errors. The steps are matched, not the seconds: both are reported. For a wall-clock-matched
comparison over seeds and training-set sizes use ``benchmarks/scaling_data.py``. Writes
``OUTPUT/comparison.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from transip_openmm.training.config import load_config
from transip_openmm.training.evaluate import ModelPredictor, evaluate, latent_equivariance_error
from transip_openmm.training.splits import held_out_test

from transip_openmm.artifacts import load_checkpoint, model_from_checkpoint
from transip_openmm.cli import main as transip_main

logger = logging.getLogger(__name__)

COLUMNS = [
    ("energy_mae_meV", "E MAE (meV)", "{:.1f}"),
    ("energy_mae_meV_per_atom", "E MAE (meV/atom)", "{:.2f}"),
    ("force_mae_meV_per_A", "F MAE (meV/Å)", "{:.1f}"),
    ("force_cos_mean", "F cos", "{:.3f}"),
    ("rot_energy_std_meV", "rot E std (meV)", "{:.1f}"),
    ("rot_force_err_rel", "rot F err", "{:.3f}"),
    ("structures_per_s", "struct/s", "{:.1f}"),
    ("atoms_per_s", "atoms/s", "{:.0f}"),
]


def with_overrides(config: Path, output: Path, overrides: Dict[str, Dict[str, object]]) -> Path:
    """A copy of ``config`` in ``output`` with keys of its sections replaced (data root made
    absolute); ``overrides`` maps a section (``model``, ``objective``, ...) to its new keys."""
    if not any(overrides.values()):
        return config
    data = yaml.safe_load(config.read_text())
    for section, keys in overrides.items():
        data.setdefault(section, {}).update(keys)
    data.setdefault("data", {})["root"] = str(load_config(config).resolve("."))
    output.mkdir(parents=True, exist_ok=True)
    path = output / "config_override.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def local_model(cutoff: Optional[float]) -> Dict[str, object]:
    """Model keys for relative positions with local attention (``cutoff`` Å); {} for None."""
    return {} if cutoff is None else {"position_encoding": "relative", "attention_cutoff": float(cutoff)}


def compare(config: Path, output: Path, max_steps: Optional[int], modes: List[str],
            rotation_structures: int = 20) -> Dict[str, Dict[str, float]]:
    cfg = load_config(config)
    test = held_out_test(cfg)
    results: Dict[str, Dict[str, float]] = {}
    for mode in modes:
        run_dir = output / mode
        if not (run_dir / "summary.json").is_file():
            argv = ["train", str(config), "--output", str(run_dir), "--symmetry", mode, "--no-progress"]
            if max_steps is not None:
                argv += ["--max-steps", str(max_steps)]
            if (run_dir / "last.ckpt").is_file():
                argv.append("--resume")
            if transip_main(argv) != 0:
                raise RuntimeError(f"training {mode} failed")
        summary = json.loads((run_dir / "summary.json").read_text())
        checkpoint = load_checkpoint(run_dir / "best.ckpt")  # selected on validation
        model = model_from_checkpoint(checkpoint)
        metrics = evaluate(ModelPredictor(model), test, cfg.data.max_atoms_per_batch,
                           rotation_structures=rotation_structures, n_rotations=8, seed=0)
        metrics["latent_equiv_err_rel"] = latent_equivariance_error(checkpoint, test, rotation_structures)
        metrics.update({k: summary[k] for k in ("structures_per_s", "atoms_per_s", "step", "train_time_s")})
        results[mode] = metrics
        logger.info("%s: %s", mode, metrics)
    output.mkdir(parents=True, exist_ok=True)
    (output / "comparison.json").write_text(json.dumps(results, indent=2))
    return results


def markdown_table(results: Dict[str, Dict[str, float]]) -> str:
    lines = ["| symmetry | steps | train s | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for mode, m in results.items():
        lines.append(f"| {mode} | {m['step']} | {m['train_time_s']:.0f} | "
                     + " | ".join(fmt.format(m[k]) for k, _, fmt in COLUMNS) + " |")
    if "transip" in results and "augment" in results:
        ratio = results["transip"]["force_mae_meV_per_A"] / results["augment"]["force_mae_meV_per_A"]
        lines.append(f"\nforce MAE ratio transip/augment = {ratio:.3f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--modes", nargs="+", default=["none", "augment", "transip"])
    parser.add_argument("--rotation-structures", type=int, default=20)
    parser.add_argument("--equiv-weight", type=float, default=None, help="override objective.equiv_weight (λ)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="override objective.layers")
    parser.add_argument("--local", type=float, default=None, metavar="CUTOFF",
                        help="relative positions and local attention with this cutoff (Å) for every mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    objective = {k: v for k, v in (("equiv_weight", args.equiv_weight), ("layers", args.layers)) if v is not None}
    config = with_overrides(args.config, args.output, {"objective": objective, "model": local_model(args.local)})
    results = compare(config, args.output, args.max_steps, args.modes, args.rotation_structures)
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
