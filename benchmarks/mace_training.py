"""MACE trained on the same data as a TransIP run, for the data-scaling study (``scaling_data.py``).

A MACE-OFF23-small-like model (``mace_models.build_mace``: 2 interactions, 96x0e, r_max 4.5 Å,
correlation 3) trained with mace-torch's own model, data and loss code in a plain loop:
element reference energies fitted by least squares on the training set (mace's
``compute_average_E0s``), interaction energy scaled by the RMS force and shifted by the mean
interaction energy per atom, Adam (amsgrad) with a cosine schedule to the step budget, an
exponential moving average of the weights (decay min(0.99, (1 + t)/(10 + t)) at step t, the
warm-up of mace's own ``torch_ema`` use), energy weight 1 and force weight 100 (mace's
defaults for ``WeightedEnergyForcesLoss``), float32 like the TransIP runs. The checkpoint with
the lowest validation force MAE is kept and evaluated on the test part with the same metrics
code as every other mode (:func:`transip_openmm.training.evaluate.evaluate`).

MACE here sees neither the total charge nor the spin multiplicity (MACE-OFF has no inputs
for them); the TransIP model does.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from mace_models import build_mace

logger = logging.getLogger("benchmarks.mace_training")

MODEL_SIZE = "mace-off-small"
ENERGY_WEIGHT = 1.0
FORCES_WEIGHT = 100.0
LEARNING_RATE = 0.01
EMA_DECAY = 0.99


def configurations(dataset) -> list:
    """mace ``Configuration`` s of a MoleculeDataset (energy eV, forces eV/Å)."""
    import ase
    from mace.data.utils import KeySpecification, config_from_atoms_list

    atoms_list = []
    for mol in dataset:
        atoms = ase.Atoms(numbers=np.asarray(mol.numbers), positions=np.asarray(mol.positions))
        atoms.info["REF_energy"] = float(mol.energy)
        atoms.arrays["REF_forces"] = np.asarray(mol.forces, dtype=np.float64)
        atoms_list.append(atoms)
    keys = KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={"forces": "REF_forces"})
    return config_from_atoms_list(atoms_list, key_specification=keys)


class MaceData:
    """Graphs of one dataset for a model of ``elements`` with cutoff ``r_max`` (Å)."""

    def __init__(self, dataset, elements: Sequence[int], r_max: float) -> None:
        from mace.data import AtomicData
        from mace.tools.utils import AtomicNumberTable

        self.z_table = AtomicNumberTable([int(z) for z in elements])
        self.configs = configurations(dataset)
        self.graphs = [AtomicData.from_config(c, z_table=self.z_table, cutoff=r_max) for c in self.configs]
        self.n_atoms = np.array([len(c.atomic_numbers) for c in self.configs])

    def loader(self, structures_per_batch: int, shuffle: bool, seed: int = 0):
        from mace.tools.torch_geometric import DataLoader

        return DataLoader(self.graphs, batch_size=structures_per_batch, shuffle=shuffle, drop_last=False,
                          generator=torch.Generator().manual_seed(seed))


def build_model(train: MaceData, elements: Sequence[int], seed: int) -> torch.nn.Module:
    """A MACE-OFF-small-like model with references, scale and shift from the training data."""
    from mace.data.utils import compute_average_E0s

    e0 = compute_average_E0s(train.configs, train.z_table)
    model = build_mace(MODEL_SIZE, torch.float32, seed=seed, elements=elements).train()
    model.atomic_energies_fn.atomic_energies.copy_(
        torch.tensor([e0[int(z)] for z in elements], dtype=model.atomic_energies_fn.atomic_energies.dtype))
    forces = np.concatenate([c.properties["forces"] for c in train.configs])
    inter = [(c.properties["energy"] - sum(e0[int(z)] for z in c.atomic_numbers)) / len(c.atomic_numbers)
             for c in train.configs]
    model.scale_shift.scale.fill_(float(np.sqrt(np.mean(forces ** 2))))
    model.scale_shift.shift.fill_(float(np.mean(inter)))
    neighbours = [g.edge_index.shape[1] / g.num_nodes for g in train.graphs]
    for block in model.interactions:
        block.avg_num_neighbors = float(np.mean(neighbours))
    return model


def structures_per_batch(train: MaceData, max_atoms: int) -> int:
    """Structures per batch so that a batch holds about ``max_atoms`` atoms on average."""
    return max(1, int(round(max_atoms / float(train.n_atoms.mean()))))


def _loss(model: torch.nn.Module, batch) -> torch.Tensor:
    from mace.modules.loss import WeightedEnergyForcesLoss

    out = model(batch.to_dict(), training=True, compute_force=True)
    return WeightedEnergyForcesLoss(ENERGY_WEIGHT, FORCES_WEIGHT)(batch, out)


def force_mae(model: torch.nn.Module, data: MaceData, structures: int) -> float:
    """Force MAE (meV/Å) of ``model`` on ``data``."""
    errors = []
    for batch in data.loader(structures, shuffle=False):
        out = model(batch.to_dict(), training=False, compute_force=True)
        errors.append((out["forces"].detach() - batch.forces).abs().flatten())
    return 1000.0 * float(torch.cat(errors).mean())


class MacePredictor:
    """A :data:`~transip_openmm.training.evaluate.Predictor` of a MACE model: padded batch ->
    energies (B,) eV and forces (B, N, 3) eV/Å (float64 numpy), zero on padding atoms."""

    def __init__(self, model: torch.nn.Module, elements: Sequence[int], r_max: float) -> None:
        from mace.tools.utils import AtomicNumberTable

        self.model = model.eval()
        self.z_table = AtomicNumberTable([int(z) for z in elements])
        self.r_max = r_max

    def __call__(self, batch) -> Tuple[np.ndarray, np.ndarray]:
        import ase
        from mace.data import AtomicData
        from mace.data.utils import config_from_atoms
        from mace.tools.torch_geometric import Batch as GraphBatch

        graphs = []
        for k in range(batch.numbers.shape[0]):
            n = int(batch.n_atoms[k])
            atoms = ase.Atoms(numbers=batch.numbers[k, :n].numpy(), positions=batch.positions[k, :n].numpy())
            graphs.append(AtomicData.from_config(config_from_atoms(atoms), z_table=self.z_table, cutoff=self.r_max))
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(dtype) if torch.is_tensor(v) and torch.is_floating_point(v) else v
                  for k, v in GraphBatch.from_data_list(graphs).to_dict().items()}
        out = self.model(inputs, training=False, compute_force=True)
        energies = out["energy"].detach().to(torch.float64).numpy()
        forces = np.zeros(tuple(batch.positions.shape))
        flat = out["forces"].detach().to(torch.float64).numpy()
        start = 0
        for k in range(len(graphs)):
            n = int(batch.n_atoms[k])
            forces[k, :n] = flat[start:start + n]
            start += n
        return energies, forces


def train_mace(train_set, val_set, elements: Sequence[int], steps: int, seed: int, max_atoms: int,
               val_every: Optional[int] = None, stop_after: Optional[int] = None) -> Dict[str, object]:
    """Train for ``steps`` optimiser steps (the cosine schedule ends there; ``stop_after``
    stops early, for timing probes); returns the best-validation EMA model and the run facts."""
    r_max = 4.5
    torch.manual_seed(seed)
    train, val = MaceData(train_set, elements, r_max), MaceData(val_set, elements, r_max)
    model = build_model(train, elements, seed)
    ema = copy.deepcopy(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, amsgrad=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    per_batch = structures_per_batch(train, max_atoms)
    val_every = val_every or max(10, steps // 6)
    best = (math.inf, None, 0)
    step, epoch, train_time, train_wall, log = 0, 0, 0.0, 0.0, []
    last = stop_after if stop_after is not None else steps
    while step < last:
        for batch in train.loader(per_batch, shuffle=True, seed=seed * 100_003 + epoch):
            t0, w0 = time.process_time(), time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            loss = _loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            schedule.step()
            decay = min(EMA_DECAY, (1.0 + step) / (10.0 + step))  # warm-up, as mace's torch_ema does
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.mul_(decay).add_(p, alpha=1.0 - decay)
            train_time += time.process_time() - t0
            train_wall += time.perf_counter() - w0
            step += 1
            if stop_after is None and (step % val_every == 0 or step == steps):
                mae = force_mae(ema, val, per_batch)
                log.append({"step": step, "val_force_mae_meV_per_A": mae, "loss": float(loss.detach())})
                logger.info("mace step %d: loss %.4g, val force MAE %.1f meV/Å", step, float(loss.detach()), mae)
                if mae < best[0]:
                    best = (mae, copy.deepcopy(ema), step)
            if step >= last:
                break
        epoch += 1
    return {"model": best[1] if best[1] is not None else ema, "best_step": best[2], "steps": step,
            "train_cpu_s": train_time, "train_wall_s": train_wall,
            "val_log": log, "structures_per_batch": per_batch, "r_max": r_max}


def seconds_per_step(train_set, val_set, elements: Sequence[int], max_atoms: int, probe_steps: int,
                     rounds: int = 2) -> float:
    """CPU seconds per training step (after 10 warm-up steps), the smallest of ``rounds`` probes."""
    values = []
    for _ in range(rounds):
        warm = train_mace(train_set, val_set, elements, 10_000, 0, max_atoms, stop_after=10)["train_cpu_s"]
        full = train_mace(train_set, val_set, elements, 10_000, 0, max_atoms, stop_after=10 + probe_steps)
        values.append((float(full["train_cpu_s"]) - float(warm)) / probe_steps)
        logger.info("mace: %.3f CPU s/step", values[-1])
    return min(values)


def evaluate_mace(result: Dict[str, object], test_set, elements: Sequence[int], max_atoms: int,
                  rotation_structures: int) -> Dict[str, float]:
    """Test metrics of a :func:`train_mace` result (the metrics code of every other mode)."""
    from transip_openmm.training.evaluate import evaluate

    predictor = MacePredictor(result["model"], elements, float(result["r_max"]))
    metrics = evaluate(predictor, test_set, max_atoms, rotation_structures=rotation_structures, n_rotations=8,
                       seed=0)
    metrics["best_step"] = int(result["best_step"])
    return metrics

