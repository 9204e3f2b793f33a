"""Predictions and metrics of a model on a dataset (used by validation and ``transip evaluate``)."""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm
from transip_openmm.training import metrics
from transip_openmm.training.batching import Batch, collate, make_batches
from transip_openmm.training.dataset import MoleculeDataset
from transip_openmm.training.objectives import random_rotations, rotate

from transip_openmm.model import TransIPModel, compute_forces

logger = logging.getLogger(__name__)

#: batch -> (energies (B,) eV float64, forces (B, N, 3) eV/Å), both numpy
Predictor = Callable[[Batch], Tuple[np.ndarray, np.ndarray]]


class ModelPredictor:
    """Energies and forces of a :class:`TransIPModel` on padded batches.

    ``refs`` (float64, eV per element), when given, is added in float64 (the trainer's
    model carries zero references while training); ``dtype`` is the compute dtype. A
    multi-level model predicts with the energy head of each batch's ``level`` (collated
    without levels: head 0, the default level of theory).
    """

    def __init__(self, model: TransIPModel, refs: Optional[Tensor] = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.refs = None if refs is None else refs.to(torch.float64).cpu()
        self.device = device
        self.dtype = dtype

    def __call__(self, batch: Batch) -> Tuple[np.ndarray, np.ndarray]:
        b = batch.to(self.device, self.dtype)
        positions = b.positions.detach().requires_grad_(True)
        energy, _ = self.model(b.numbers, positions, b.mask, b.charge, b.multiplicity, None,
                               b.level if self.model.n_levels > 1 else None)
        forces = compute_forces(energy, positions, training=False)
        e = energy.detach().cpu().to(torch.float64)
        if self.refs is not None:
            e = e + self.refs[batch.numbers].sum(dim=1)
        return e.numpy(), forces.detach().cpu().to(torch.float64).numpy()


def predict(predictor: Predictor, dataset: MoleculeDataset, max_atoms: int = 1024,
            progress: bool = False) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Energies (M,) eV and per-structure forces [(n_i, 3)] eV/Å of every structure."""
    energies = np.zeros(len(dataset))
    forces: List[np.ndarray] = [None] * len(dataset)  # type: ignore[list-item]
    batches = make_batches(dataset.n_atoms, max_atoms, shuffle=False)
    for idx in tqdm(batches, desc="evaluate", disable=not progress, leave=False):
        batch = collate(dataset, idx)
        e, f = predictor(batch)
        for k, i in enumerate(idx):
            energies[i] = e[k]
            forces[i] = f[k, : dataset[i].n_atoms]
    return energies, forces


def rotation_errors(predictor: Predictor, dataset: MoleculeDataset, n_structures: int = 20,
                    n_rotations: int = 8, seed: int = 0) -> Dict[str, float]:
    """``rot_energy_std_meV`` and ``rot_force_err_rel`` over the first ``n_structures``.

    Each structure is evaluated at itself and at ``n_rotations`` Haar-random rotations
    (seeded): std of E over the rotated copies and mean ‖F(Rx) − R·F(x)‖/‖F(x)‖.
    """
    gen = torch.Generator().manual_seed(seed)
    n = min(n_structures, len(dataset))
    e_rot = np.zeros((n, n_rotations + 1))
    rotated_forces, base_forces, rots = [], [], []
    for s in range(n):
        single = collate(dataset, [s])
        r = random_rotations(n_rotations, gen)
        pos = torch.cat([single.positions, rotate(single.positions.expand(n_rotations, -1, -1), r)], 0)
        k = n_rotations + 1
        batch = Batch(
            numbers=single.numbers.expand(k, -1), positions=pos, mask=single.mask.expand(k, -1),
            charge=single.charge.expand(k), multiplicity=single.multiplicity.expand(k),
            energy=single.energy.expand(k), forces=single.forces.expand(k, -1, -1),
            n_atoms=single.n_atoms.expand(k), has_energy=single.has_energy.expand(k),
        )
        e, f = predictor(batch)
        e_rot[s] = e
        base_forces.append(f[0])
        rotated_forces.append(f[1:])
        rots.append(r.numpy())
    return {
        "rot_energy_std_meV": metrics.rotation_energy_std_meV(e_rot[:, 1:]),
        "rot_force_err_rel": metrics.rotation_force_err_rel(rotated_forces, base_forces, rots),
    }


def evaluate(predictor: Predictor, dataset: MoleculeDataset, max_atoms: int = 1024,
             rotation_structures: int = 20, n_rotations: int = 8, seed: int = 0,
             progress: bool = False) -> Dict[str, float]:
    """All metrics of the evaluation JSON for ``dataset``."""
    energies, forces = predict(predictor, dataset, max_atoms, progress)
    result = metrics.accuracy_metrics(
        energies, [m.energy for m in dataset], dataset.n_atoms, forces, [m.forces for m in dataset]
    )
    if rotation_structures > 0:
        result.update(rotation_errors(predictor, dataset, rotation_structures, n_rotations, seed))
    return result


@torch.no_grad()
def latent_equivariance_error(checkpoint: Dict, dataset: MoleculeDataset, n_structures: int = 20,
                              n_rotations: int = 4, seed: int = 0) -> Optional[float]:
    """``latent_equiv_err_rel`` of a TransIP checkpoint (None for other modes).

    Mean ‖T_ψ(h, R) − h_R‖/‖h_R‖ over the tokens of the first ``n_structures`` structures,
    each under ``n_rotations`` random rotations, at the mode's layers (raw weights:
    T_ψ was trained against them, not against the EMA average).
    """
    from transip_openmm.training.symmetry_modes import TransIP, mode_from_checkpoint

    from transip_openmm.artifacts import model_from_checkpoint

    if not checkpoint.get("transforms_state"):
        return None
    mode = mode_from_checkpoint(checkpoint)
    if not isinstance(mode, TransIP):
        return None
    model = model_from_checkpoint(checkpoint, use_ema=False)
    gen = torch.Generator().manual_seed(seed)
    errors = []
    for s in range(min(n_structures, len(dataset))):
        b = collate(dataset, [s] * n_rotations).to("cpu")
        rots = random_rotations(n_rotations, gen)
        errors += [metrics.latent_equivariance_err_rel(pred.numpy(), target.numpy())
                   for pred, target in mode.latent_pairs(model, b, rots)]
    return float(np.mean(errors))
