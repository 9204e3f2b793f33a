"""Training objectives: energy/force losses and the three symmetry settings.

* ``none``: the structures as given.
* ``augment``: each structure randomly rotated (positions and forces), every step.
* ``transip``: the learned transformation network T_ψ(h, R) and the contrastive
  embedding objective: for each molecule a Haar-random rotation R; h = f(x) and
  h_R = f(R x) are token embeddings at the configured layer(s); T_ψ predicts h_R from
  (h, R); the loss is an alignment term plus InfoNCE over all atoms of the batch
  (temperature τ), weighted by λ. T_ψ is used in training only.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transip_openmm.training.batching import Batch

from transip_openmm.model import TransIPModel, compute_forces

SYMMETRY_MODES = ("none", "augment", "transip")


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


def rotate(vectors: Tensor, rotations: Tensor) -> Tensor:
    """Apply per-molecule rotations: vectors (B, N, 3), rotations (B, 3, 3) -> R·v (B, N, 3)."""
    return torch.einsum("bij,bnj->bni", rotations.to(vectors.dtype), vectors)


class TransformationNetwork(nn.Module):
    """T_ψ(h, R): predicts the embedding of the rotated structure, h_R ≈ h + MLP([LN(h), vec(R)]).

    h: (M, d) token embeddings; rot9: (M, 9) the entries of each token's rotation.
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model + 9, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, d_model),
        )

    def forward(self, h: Tensor, rot9: Tensor) -> Tensor:
        return h + self.mlp(torch.cat([self.norm(h), rot9.to(h.dtype)], dim=-1))


def equivariance_loss(pred: Tensor, target: Tensor, temperature: float) -> Dict[str, Tensor]:
    """Alignment (1 − cosine) and InfoNCE over the M atoms: pred, target (M, d)."""
    zp = F.normalize(pred, dim=-1)
    zt = F.normalize(target, dim=-1)
    align = (1.0 - (zp * zt).sum(-1)).mean()
    logits = zp @ zt.transpose(0, 1) / temperature
    labels = torch.arange(pred.shape[0], device=pred.device)
    nce = F.cross_entropy(logits, labels)
    return {"align": align, "nce": nce}


class TrainingModule(nn.Module):
    """Model + (for ``transip``) transformation networks; ``forward`` returns the losses.

    Loss: ``w_E·mean((ΔE/n/e_norm)²) + w_F·mean((ΔF/f_scale)²) + λ·L_equiv``, with
    ``e_norm`` the model's ``energy_scale`` (or ``energy_norm`` when given) and ``f_scale``
    the force RMS of the training set.

    The model is trained on energies relative to the fixed per-element references
    ``refs`` (float64, eV; subtracted from the targets in float64 so no precision is lost
    against the large absolute energies); the trainer stores the references in the
    model's ``element_energies`` buffer when it writes a checkpoint.
    """

    def __init__(self, model: TransIPModel, refs: Tensor, force_scale: float, symmetry: str,
                 energy_weight: float = 1.0, force_weight: float = 10.0,
                 equiv_weight: float = 0.1, layers: Sequence[int] = (-1,),
                 temperature: float = 0.1, transform_hidden: int = 256, force_loss: str = "mse",
                 huber_delta: float = 1.0, energy_norm: Optional[float] = None) -> None:
        super().__init__()
        if symmetry not in SYMMETRY_MODES:
            raise ValueError(f"symmetry must be one of {SYMMETRY_MODES}, got {symmetry!r}")
        self.model = model
        self.symmetry = symmetry
        self.register_buffer("refs", refs.to(torch.float64).clone(), persistent=False)
        self.force_scale = float(force_scale)
        #: per-atom energy error that counts as 1 in the energy loss (eV); None: the model's energy_scale
        self.energy_norm = None if energy_norm is None else float(energy_norm)
        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        self.equiv_weight = float(equiv_weight)
        self.temperature = float(temperature)
        if force_loss not in ("mse", "huber"):
            raise ValueError(f"force_loss must be 'mse' or 'huber', got {force_loss!r}")
        self.force_loss = force_loss
        self.huber_delta = float(huber_delta)
        n_hidden = model.n_layers + 1
        self.layers: List[int] = sorted({layer % n_hidden for layer in layers})
        d = int(model.config_dict["d_model"])
        if symmetry == "transip":
            self.transforms = nn.ModuleList([TransformationNetwork(d, transform_hidden) for _ in self.layers])
        else:
            self.transforms = nn.ModuleList()

    def forward(self, batch: Batch, rotations: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Losses and detached training metrics of one batch.

        ``rotations`` (B, 3, 3): the random rotations of this step (``augment``: applied to
        the input; ``transip``: the pair rotation). Returns ``loss`` (scalar) and
        ``loss_energy``, ``loss_force``, ``loss_equiv``, ``energy_mae`` (eV/atom, sum),
        ``force_abs_err`` (eV/Å, sum), counts ``n_struct`` (structures whose energy counts),
        ``n_force``. Force-only records (``batch.has_energy`` False) add to the force loss only.
        """
        positions = batch.positions
        forces_ref = batch.forces
        if self.symmetry == "augment":
            assert rotations is not None
            positions = rotate(positions, rotations)
            forces_ref = rotate(forces_ref, rotations)
        positions = positions.detach().requires_grad_(True)
        energy, hidden = self.model(batch.numbers, positions, batch.mask, batch.charge, batch.multiplicity)
        forces = compute_forces(energy, positions, training=True)

        ref_sum = self.refs[batch.numbers].sum(dim=1)
        target = (batch.energy - ref_sum).to(energy.dtype)
        n_atoms = batch.n_atoms.to(energy.dtype)
        norm = self.model.energy_scale if self.energy_norm is None else self.energy_norm
        e_err = (energy - target) / n_atoms * batch.has_energy.to(energy.dtype)  # 0 for force-only records
        n_energy = batch.has_energy.sum()
        loss_energy = ((e_err / norm) ** 2).sum() / n_energy.clamp(min=1)
        maskf = batch.mask.to(forces.dtype).unsqueeze(-1)
        f_err = (forces - forces_ref) * maskf
        n_comp = maskf.sum() * 3.0
        if self.force_loss == "huber":  # quadratic below delta·force_scale, linear above
            loss_force = F.huber_loss(f_err / self.force_scale, torch.zeros_like(f_err), reduction="sum",
                                      delta=self.huber_delta) * 2.0 / n_comp
        else:
            loss_force = (f_err / self.force_scale).pow(2).sum() / n_comp
        loss = self.energy_weight * loss_energy + self.force_weight * loss_force

        loss_equiv = torch.zeros((), dtype=energy.dtype, device=energy.device)
        if self.symmetry == "transip":
            assert rotations is not None
            rot_pos = rotate(batch.positions, rotations)
            hidden_rot, _ = self.model.embed(batch.numbers, rot_pos, batch.mask, batch.charge, batch.multiplicity)
            rot9 = rotations.to(energy.dtype).reshape(-1, 1, 9).expand(-1, batch.mask.shape[1], 9)[batch.mask]
            for transform, layer in zip(self.transforms, self.layers):
                h = hidden[layer][batch.mask]
                h_rot = hidden_rot[layer][batch.mask]
                terms = equivariance_loss(transform(h, rot9), h_rot, self.temperature)
                loss_equiv = loss_equiv + (terms["align"] + terms["nce"]) / len(self.layers)
            loss = loss + self.equiv_weight * loss_equiv

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
