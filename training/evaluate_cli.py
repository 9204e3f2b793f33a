"""``transip evaluate MODEL (DATA... | --test-of CONFIG) --json OUT.json [--plot OUT.png]``.

MODEL is a training checkpoint (``*.ckpt``) or an exported TorchScript file
(``forward(positions_nm (n, 3)) -> (energy kJ/mol, forces kJ/mol/nm)``). An exported module
with system buffers (``ml_indices`` ...) is specialised to each structure in turn
(:func:`transip_openmm.system_spec.specialise_module`), so generic exports evaluate any data;
a module without them must have been baked for the structures' exact atoms.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from transip_openmm.training.batching import Batch

from transip_openmm.training.dataset import DataError

from transip_openmm.artifacts import (
    TORCHSCRIPT,
    ArtifactError,
    load_checkpoint,
    model_from_checkpoint,
    read_exported_metadata,
    torch_file_kind,
)
from transip_openmm.atomic_io import atomic_write_text
from transip_openmm.errors import UsageError
from transip_openmm.units import ANGSTROM_TO_NM, EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="training checkpoint or exported TorchScript model")
    parser.add_argument("data", type=Path, nargs="*",
                        help="data files (.aselmdb, .xyz, .extxyz, .hdf5), folders of them, or glob patterns")
    parser.add_argument("--test-of", type=Path, default=None, metavar="CONFIG",
                        help="evaluate on the test data of this training config (its data.test files or its "
                             "held-out test part) instead of DATA")
    parser.add_argument("--json", type=Path, required=True, help="write the metrics here")
    parser.add_argument("--plot", type=Path, default=None, help="energy/force parity plot (PNG)")
    parser.add_argument("--rotation-structures", type=int, default=20,
                        help="structures used for the rotation errors (0: skip)")
    parser.add_argument("--rotations", type=int, default=8, help="random rotations per structure")
    parser.add_argument("--max-atoms", type=int, default=1024, help="padded atoms per batch")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rotations")


class ExportedPredictor:
    """Predictor for an exported TorchScript model of one baked system (units converted)."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.meta = read_exported_metadata(path)
        self.module = torch.jit.load(str(path), map_location=device)
        self.device = device
        numbers = self.meta.get("atomic_numbers") or (self.meta.get("system") or {}).get("atomic_numbers")
        self.numbers: Optional[List[int]] = None if numbers is None else [int(z) for z in numbers]
        self.path = path
        self.specialisable = hasattr(self.module, "ml_indices")

    def _prepare(self, z: List[int], charge: int, multiplicity: int) -> None:
        if self.specialisable:
            from transip_openmm.system_spec import SystemSpec, specialise_module

            spec = SystemSpec(atomic_numbers=z, ml_indices=list(range(len(z))), n_particles=len(z),
                              charge=charge, multiplicity=multiplicity)
            specialise_module(self.module, spec)
        elif self.numbers is not None and z != self.numbers:
            raise ArtifactError(f"{self.path} was exported for atoms {self.numbers}; the data has {z}")

    def __call__(self, batch: Batch) -> Tuple[np.ndarray, np.ndarray]:
        b, n = batch.numbers.shape
        energies = np.zeros(b)
        forces = np.zeros((b, n, 3))
        for k in range(b):
            na = int(batch.n_atoms[k])
            self._prepare(batch.numbers[k, :na].tolist(), int(batch.charge[k]), int(batch.multiplicity[k]))
            pos_nm = (batch.positions[k, :na] * ANGSTROM_TO_NM).to(self.device, torch.float32)
            out = self.module(pos_nm)
            e, f = out if isinstance(out, (tuple, list)) else (out, None)
            if f is None:
                raise ArtifactError(f"{self.path} returns no forces")
            energies[k] = float(e.detach()) / EV_TO_KJ_PER_MOL
            forces[k, :na] = f.detach().cpu().double().numpy() / EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM
        return energies, forces


def load_predictor(path: Path, device: str = "cpu", use_ema: bool = True):
    """(predictor, elements or None, description) for a checkpoint or exported file."""
    from transip_openmm.training.evaluate import ModelPredictor

    if not Path(path).is_file():
        raise ArtifactError(f"model file {path} does not exist")
    if torch_file_kind(Path(path)) == TORCHSCRIPT:
        pred = ExportedPredictor(path, device)
        return pred, pred.meta.get("elements"), {"kind": "exported", "metadata": pred.meta}
    data = load_checkpoint(path)  # refuses text, truncated and foreign files with one line
    model = model_from_checkpoint(data, use_ema=use_ema).to(device)
    info = {"kind": "checkpoint", "step": data.get("step"), "symmetry": data.get("symmetry"), "checkpoint": data}
    return ModelPredictor(model, device=device), data["elements"], info


#: suffixes of the data files a folder given as DATA contributes
DATA_SUFFIXES = (".aselmdb", ".xyz", ".extxyz", ".h5", ".hdf5")


def expand_data_paths(items: List[Path]) -> List[Path]:
    """Data files named by DATA arguments: files as given, a folder's data files (sorted), and
    the matches of a glob pattern the shell left unexpanded (e.g. quoted)."""
    files: List[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"data folder {item} holds no {', '.join(DATA_SUFFIXES)} file")
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item)) if Path(p).is_file())
            if not found:
                raise DataError(f"no data file matches {item}")
        elif not item.is_file():
            raise DataError(f"data file {item} does not exist")
        else:
            found = [item]
        files.extend(found)
    return files


def config_test_data(config: Path, elements: Optional[List[int]]):
    """(test dataset, its source files as the config names them, relative to its ``data.root``) of a
    training config: its ``data.test`` files, else the part its molecule split holds out of
    ``data.train`` (``data.test_fraction``)."""
    from transip_openmm.training.config import load_config
    from transip_openmm.training.splits import held_out_test

    cfg = load_config(config)
    if not cfg.data.test and cfg.data.test_fraction <= 0.0:
        raise UsageError(f"--test-of {config}: the config names no test data (data.test is empty and "
                         "data.test_fraction is 0)")
    names = list(cfg.data.test or cfg.data.train)
    missing = [str(cfg.resolve(p)) for p in names if not cfg.resolve(p).exists()]
    if missing:
        raise DataError(f"--test-of {config}: data file {missing[0]} does not exist")
    dataset = held_out_test(cfg)
    if elements is not None:
        dataset.validate(elements)
    return dataset, names


def run(args: argparse.Namespace) -> int:
    from transip_openmm.training.evaluate import evaluate, predict
    from transip_openmm.training.readers import read_datasets

    for name in ("rotation_structures", "max_atoms", "rotations"):
        if getattr(args, name) < (0 if name == "rotation_structures" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and path.is_dir():
            raise UsageError(f"{option} {path} is a folder: give a file name, e.g. {path / 'eval.json'}"
                             if option == "--json" else f"{option} {path} is a folder: give a file name")
    if bool(args.data) == (args.test_of is not None):
        raise UsageError("give DATA files or --test-of CONFIG (one of them)")
    data_files = expand_data_paths(args.data) if args.data else []
    predictor, elements, info = load_predictor(args.model, args.device, use_ema=not args.no_ema)
    if args.test_of is not None:
        dataset, data_files = config_test_data(args.test_of, elements)
    else:
        dataset = read_datasets(data_files, elements)
    with torch.inference_mode(False):
        result = evaluate(predictor, dataset, args.max_atoms, args.rotation_structures, args.rotations,
                          args.seed, progress=True)
    if info.get("kind") == "checkpoint" and args.rotation_structures > 0:
        from transip_openmm.training.evaluate import latent_equivariance_error

        latent = latent_equivariance_error(info["checkpoint"], dataset, args.rotation_structures)
        if latent is not None:
            result["latent_equiv_err_rel"] = latent
    data_source = {"test_of": str(args.test_of)} if args.test_of is not None else {}
    result = {**result, "model": str(args.model), **data_source, "data": [str(p) for p in data_files],
              "model_info": {k: v for k, v in info.items() if k not in ("metadata", "checkpoint")}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2))
    if args.plot is not None:
        from transip_openmm.training.plots import plot_parity

        energies, forces = predict(predictor, dataset, args.max_atoms)
        plot_parity(energies, [m.energy for m in dataset], dataset.n_atoms,
                    np.concatenate(forces), np.concatenate([m.forces for m in dataset]), args.plot,
                    title=f"{args.model.name} on {len(dataset)} structures")
    print(json.dumps({k: v for k, v in result.items() if k not in ("data", "model_info")}, indent=2))
    return 0
