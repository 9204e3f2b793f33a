"""Training objectives: the supervised energy/force loss and the module that adds a symmetry mode.

The symmetry modes (``none``, ``augment``, ``transip`` and its named variants) are objects
in :mod:`transip_openmm.training.symmetry_modes`; this module holds what every mode shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transip_openmm.training.batching import Batch
from transip_openmm.training.symmetry_modes import (  # noqa: F401  (re-exported)
    SYMMETRY_MODES,
    SymmetryMode,
    build_mode,
    energy_level,
    equivariance_loss,
    rotate,
)

from transip_openmm.model import TransIPModel, compute_forces


def random_rotations(n: int, generator: Optional[torch.Generator] = None,
                     dtype: torch.dtype = torch.float64) -> Tensor:
    """(n, 3, 3) rotation matrices, uniform (Haar) on SO(3): normalised Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=1).view(n, 3, 3)
    return rot.to(dtype)


def reference_sum(refs: Tensor, batch: Batch) -> Tensor:
    """Σ_i ref[Z_i] of each structure (B,) float64 eV: ``refs`` (N_Z,), or (n_levels, N_Z) with the
    batch's ``level`` choosing the row (padding atoms have Z = 0, whose reference is 0)."""
    if refs.dim() == 1:
        return refs[batch.numbers].sum(dim=1)
    level = batch.level if batch.level is not None else torch.zeros_like(batch.n_atoms)
    return refs[level.unsqueeze(1), batch.numbers].sum(dim=1)


@dataclass
class SupervisedLoss:
    """``w_E·mean((ΔE/n/e_norm)²) + w_F·force term``; the force term is the mean of
    (ΔF/f_scale)² (``mse``) or the Huber loss of ΔF/f_scale (``huber``, quadratic below
    ``huber_delta``). ``energy_norm``: the per-atom energy error that counts 1 (eV; None:
    the model's ``energy_scale``)."""

    energy_weight: float = 1.0
    force_weight: float = 10.0
    force_loss: str = "mse"
    huber_delta: float = 1.0
    energy_norm: Optional[float] = None

    def __post_init__(self) -> None:
        if self.force_loss not in ("mse", "huber"):
            raise ValueError(f"force_loss must be 'mse' or 'huber', got {self.force_loss!r}")


class TrainingModule(nn.Module):
    """Model + symmetry mode; ``forward`` returns the losses of one batch.

    Loss: the :class:`SupervisedLoss` on the mode's supervised view plus the mode's own terms.
    The model is trained on energies relative to the fixed per-element references ``refs``
    ((N_Z,) or, for a multi-level model, (n_levels, N_Z) float64, eV; subtracted from the
    targets in float64 so no precision is lost against the large absolute energies); the
    trainer stores them in the model's ``element_energies`` buffer when it writes a
    checkpoint. ``force_scale``: the training set's force RMS (eV/Å).
    """

    def __init__(self, model: TransIPModel, refs: Tensor, force_scale: float,
                 mode: SymmetryMode | str = "none", loss: Optional[SupervisedLoss] = None) -> None:
        super().__init__()
        self.model = model
        if isinstance(mode, str):
            mode = build_mode(mode, None, int(model.config_dict["d_model"]), model.n_layers)
        self.mode = mode
        self.loss = loss or SupervisedLoss()
        self.register_buffer("refs", refs.to(torch.float64).clone(), persistent=False)
        self.force_scale = float(force_scale)

    @classmethod
    def from_objective(cls, model: TransIPModel, refs: Tensor, force_scale: float, objective: Mapping[str, Any],
                       energy_norm: Optional[float] = None) -> "TrainingModule":
        """Built from an ``objective`` config section (as a mapping)."""
        mode = build_mode(str(objective.get("symmetry", "none")), objective, int(model.config_dict["d_model"]),
                          model.n_layers)
        loss = SupervisedLoss(float(objective.get("energy_weight", 1.0)), float(objective.get("force_weight", 10.0)),
                              str(objective.get("force_loss", "mse")), float(objective.get("huber_delta", 1.0)),
                              energy_norm)
        return cls(model, refs, force_scale, mode, loss)

    @property
    def symmetry(self) -> str:
        return self.mode.name

    def forward(self, batch: Batch, rotations: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Losses and detached training metrics of one batch.

        ``rotations`` (B, 3, 3): the random rotations of this step (used by the modes that
        rotate). Returns ``loss`` (scalar) and ``loss_energy``, ``loss_force``, ``loss_equiv``
        (the mode's weighted terms), ``energy_abs_err`` (eV/atom, sum), ``force_abs_err``
        (eV/Å, sum), counts ``n_struct`` (structures whose energy counts), ``n_force``.
        Force-only records (``batch.has_energy`` False) add to the force loss only.
        """
        positions, forces_ref = self.mode.inputs(batch, rotations)
        positions = positions.detach().requires_grad_(True)
        energy, hidden = self.model(batch.numbers, positions, batch.mask, batch.charge, batch.multiplicity, None,
                                    energy_level(self.model, batch))
        forces = compute_forces(energy, positions, training=True)
        cfg = self.loss

        ref_sum = reference_sum(self.refs, batch)
        target = (batch.energy - ref_sum).to(energy.dtype)
        n_atoms = batch.n_atoms.to(energy.dtype)
        norm = self.model.energy_scale if cfg.energy_norm is None else cfg.energy_norm
        e_err = (energy - target) / n_atoms * batch.has_energy.to(energy.dtype)  # 0 for force-only records
        n_energy = batch.has_energy.sum()
        loss_energy = ((e_err / norm) ** 2).sum() / n_energy.clamp(min=1)
        maskf = batch.mask.to(forces.dtype).unsqueeze(-1)
        f_err = (forces - forces_ref) * maskf
        n_comp = maskf.sum() * 3.0
        if cfg.force_loss == "huber":  # quadratic below delta·force_scale, linear above
            loss_force = F.huber_loss(f_err / self.force_scale, torch.zeros_like(f_err), reduction="sum",
                                      delta=cfg.huber_delta) * 2.0 / n_comp
        else:
            loss_force = (f_err / self.force_scale).pow(2).sum() / n_comp
        loss = cfg.energy_weight * loss_energy + cfg.force_weight * loss_force

        extra = self.mode.extra_loss(self.model, batch, rotations, positions, energy, hidden, float(norm))
        loss_equiv = torch.zeros((), dtype=energy.dtype, device=energy.device) if extra is None else extra.loss
        loss = loss + loss_equiv
        return {
            "loss": loss,
            "loss_energy": loss_energy.detach(),
            "loss_force": loss_force.detach(),
            "loss_equiv": loss_equiv.detach(),
            "energy_abs_err": e_err.detach().abs().sum(),
            "force_abs_err": f_err.detach().abs().sum(),
            "n_struct": n_energy.detach().to(torch.float64).cpu(),
            "n_force": n_comp.detach(),
        }
