"""The TorchScript module inside an exported model file.

:class:`OpenMMTransIP` wraps a :class:`~transip_openmm.model.TransIPModel` for OpenMM:

``forward(positions (n_particles, 3) nm[, box (3, 3) nm]) -> (energy () kJ/mol float64,
forces (n_particles, 3) kJ/mol/nm, dtype of positions)``, the signature openmm-torch's ``TorchForce`` calls with
``setOutputsForces(True)``. Particles outside the ML region get zero force.

State held as buffers/attributes (so a loaded ScriptModule can be specialised to a system
without re-scripting, see :mod:`transip_openmm.system_spec`):

* ``atomic_numbers`` (n_ml,) int64 and ``ml_indices`` (n_ml,) int64: the ML atoms and their
  indices in the full system;
* ``charge`` (1,) int64 and ``multiplicity`` (1,) int64 of the ML region;
* ``n_particles`` (int): particles in the full system, ``-1`` for a generic (unspecialised)
  export, which refuses to run;
* ``check_finite`` (bool): raise on non-finite positions or energy (needs a host sync, so it is
  switched off when the module is captured in a CUDA graph).

Periodic boxes: a model with relative positions and local attention
(``model.supports_periodic``) gets the box and sees the periodic images itself (minimum image
within its cutoff), which is what an all-ML periodic box (an electrolyte, a solvent) needs.
Any other model gets the ML region made whole by the minimum image of every ML atom relative
to the first ML atom and sees an isolated cluster: right for an ML region smaller than half
the box (ML/MM regions, small solutes). Either way shifting any ML atom by a box vector
leaves energy and forces unchanged.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from transip_openmm.model import TransIPModel
from transip_openmm.neighbors import minimum_image
from transip_openmm.units import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM


class OpenMMTransIP(nn.Module):
    """OpenMM-facing wrapper: nm and kJ/mol outside, Å and eV inside."""

    def __init__(
        self,
        model: TransIPModel,
        atomic_numbers: Optional[List[int]] = None,
        ml_indices: Optional[List[int]] = None,
        n_particles: int = -1,
        charge: int = 0,
        multiplicity: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        # Per-element reference energies (eV) are added in float64 here rather than inside a
        # float32 model: their sum (~1e6 kJ/mol) would otherwise round the energy to ~0.1 kJ/mol.
        self.register_buffer("reference_energies", model.element_energies.detach().to(torch.float64).clone())
        with torch.no_grad():
            model.element_energies.zero_()
        z = list(atomic_numbers or [])
        idx = list(ml_indices) if ml_indices is not None else list(range(len(z)))
        if len(idx) != len(z):
            raise ValueError(f"{len(z)} atomic numbers but {len(idx)} ML indices")
        self.register_buffer("atomic_numbers", torch.tensor(z, dtype=torch.int64))
        self.register_buffer("ml_indices", torch.tensor(idx, dtype=torch.int64))
        self.register_buffer("charge", torch.tensor([int(charge)], dtype=torch.int64))
        self.register_buffer("multiplicity", torch.tensor([int(multiplicity)], dtype=torch.int64))
        self.n_particles: int = int(n_particles)
        self.check_finite: bool = True
        self.length_scale: float = float(NM_TO_ANGSTROM)
        self.energy_scale: float = float(EV_TO_KJ_PER_MOL)

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Energy () kJ/mol and forces (n_particles, 3) kJ/mol/nm of the full system."""
        if self.n_particles < 0:
            raise RuntimeError(
                "TransIP: this exported model is generic (no system baked in); build the force "
                "with TransIPForce(path, topology) so it is specialised to your system"
            )
        if positions.dim() != 2 or positions.shape[0] != self.n_particles or positions.shape[1] != 3:
            raise RuntimeError(
                "TransIP: expected positions of shape (" + str(self.n_particles) + ", 3), got "
                + str(positions.shape)
            )
        positions_ml = positions.index_select(0, self.ml_indices)
        energy, forces_ml = self.ml_energy_forces(positions_ml, box)
        forces = torch.zeros_like(positions).index_copy(0, self.ml_indices, forces_ml)
        return energy, forces

    @torch.jit.export
    def ml_energy_forces(self, positions: Tensor, box: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Energy () kJ/mol and forces (n_ml, 3) kJ/mol/nm from the ML atoms' positions (nm)."""
        if self.check_finite:
            if not bool(torch.isfinite(positions).all()):
                raise ValueError("TransIP: particle positions contain NaN or infinity")
        dtype = self.model.element_energies.dtype
        # Gradient mode must be on (it is inside OpenMM; Python callers must not use no_grad).
        pos = positions.detach().to(dtype).requires_grad_(True)
        x = pos
        cell: Optional[Tensor] = None
        if box is not None:
            if self.model.supports_periodic:
                cell = box.to(dtype) * self.length_scale
            else:
                x = self.make_whole(x, box.to(dtype))
        n = x.shape[0]
        mask = torch.ones(1, n, dtype=torch.bool, device=x.device)
        energy_ev, _ = self.model(
            self.atomic_numbers.unsqueeze(0),
            (x * self.length_scale).unsqueeze(0),
            mask,
            self.charge,
            self.multiplicity,
            cell,
        )
        energy = energy_ev.sum() * self.energy_scale
        reference = self.reference_energies[self.atomic_numbers].sum() * self.energy_scale
        grads = torch.autograd.grad([energy], [pos])
        grad = grads[0]
        if grad is None:
            grad = torch.zeros_like(pos)
        if self.check_finite:
            if not bool(torch.isfinite(energy)):
                raise ValueError(
                    "TransIP: the model returned a non-finite energy (atoms too close or far "
                    "outside the training data?)"
                )
        total = energy.detach().to(torch.float64) + reference
        return total, (-grad).to(positions.dtype)

    @staticmethod
    def make_whole(x: Tensor, box: Tensor) -> Tensor:
        """Minimum image of every atom relative to atom 0 for OpenMM's reduced triclinic box.

        x: (n, 3) nm; box: (3, 3) nm with rows a, b, c (a along x, b in the xy plane).
        """
        return x[0:1] + minimum_image(x - x[0:1], box)
