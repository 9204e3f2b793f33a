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
* ``check_finite`` (bool): host checks after each evaluation (needs a host sync, so it is
  switched off when the module is captured in a CUDA graph): non-finite positions or energy, a
  made-whole ML region too wide for its box, an overflowing capture-safe neighbour list (refitted
  and evaluated again).

CUDA graphs (:meth:`use_capture_safe`): the model then evaluates with static shapes and no host
read. A local-attention model's neighbour-list capacity is fitted on the first structure it sees
(outside any capture: the warm-up calls) with ``capacity_margin``; what each call needed is kept
on the device. With ``check_finite`` an overflow is refitted at once; without (inside a graph)
energy and forces come back NaN, and the caller (the python backend) checks
:meth:`neighbor_overflow` after the call, refits (:meth:`fit_neighbor_capacity`) and captures again.

Periodic boxes: a model with relative positions and local attention
(``model.supports_periodic``) gets the box and sees the periodic images itself (minimum image
within its cutoff), which is what an all-ML periodic box (an electrolyte, a solvent) needs.
Any other model gets the ML region made whole by the minimum image of every ML atom relative
to the first ML atom and sees an isolated cluster: right for an ML region smaller than half
the box (ML/MM regions, small solutes). Either way shifting any ML atom by a box vector
leaves energy and forces unchanged.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from transip_openmm.model import ModelConfig, TransIPModel
from transip_openmm.neighbors import check_cell, format_decimal, minimum_image
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
        model = copy.deepcopy(model)  # the caller's model keeps its references (export never mutates it)
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
        self.capacity_margin: float = 0.25
        #: the model takes the box itself (else the ML region is made whole and seen as one cluster)
        self.sees_periodic_images: bool = bool(model.supports_periodic)
        #: with ``check_finite``: refuse a made-whole ML region wider than half the box (off under
        #: openmm-torch, where raising this error crashes the process: see backends.make_torch_force)
        self.check_region_width: bool = True
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
        if self.check_finite and self.check_region_width and box is not None and not self.sees_periodic_images:
            self.check_made_whole_width(positions, box)
        dtype = self.model.element_energies.dtype
        if self.check_finite and box is not None and self.sees_periodic_images:
            self._check_cell(box.to(dtype) * self.length_scale)
        # Gradient mode must be on (it is inside OpenMM; Python callers must not use no_grad).
        pos = positions.detach().to(dtype).requires_grad_(True)
        x, cell = self._model_geometry(pos, box)
        static = self._capture_safe_neighbors(x.shape[0])
        if static and self._capacity_unset():
            self._fit_capacity(x, cell)  # host reads: first call only, before any capture
        energy = self._energy(x, cell)
        if self.check_finite and static and self.neighbor_overflow():
            self._fit_capacity(x, cell)  # denser than before: a larger capacity, evaluate again
            energy = self._energy(x, cell)
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
        forces = -grad
        if static and not self.check_finite:  # inside a graph: an overflow must not pass silently
            poison = self._overflow_poison(total)
            total = total + poison
            forces = forces + poison.to(forces.dtype)
        return total, forces.to(positions.dtype)

    def _model_geometry(self, pos: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """(positions (n, 3) Å, cell (3, 3) Å or None) the model sees for ML positions (n, 3) nm: the
        box becomes the model's cell if it sees periodic images, else the region is made whole."""
        x = pos
        cell: Optional[Tensor] = None
        if box is not None:
            if self.model.supports_periodic:
                cell = box.to(pos.dtype) * self.length_scale
            else:
                x = self.make_whole(x, box.to(pos.dtype))
        return x * self.length_scale, cell

    def _energy(self, x: Tensor, cell: Optional[Tensor]) -> Tensor:
        """Model energy () kJ/mol (without the reference energies) of positions (n, 3) Å."""
        n = x.shape[0]
        mask = torch.ones(1, n, dtype=torch.bool, device=x.device)
        energy_ev, _ = self.model(
            self.atomic_numbers.unsqueeze(0), x.unsqueeze(0), mask, self.charge, self.multiplicity, cell)
        return energy_ev.sum() * self.energy_scale

    @torch.jit.export
    def use_capture_safe(self, on: bool) -> bool:
        """Switch the model's capture-safe evaluation (static shapes, no host read) on or off;
        False if the model has none (a frame-averaged model)."""
        if hasattr(self.model, "capture_safe"):
            self.model.capture_safe = on
            return True
        return False

    def _capture_safe_neighbors(self, n: int) -> bool:
        """Whether the capture-safe neighbour list (with its capacity) evaluates ``n`` ML atoms."""
        if hasattr(self.model, "capture_safe"):
            return self.model.capture_safe and self.model._uses_neighbor_list(1, n)
        return False

    def _capacity_unset(self) -> bool:
        if hasattr(self.model, "max_neighbors"):
            return self.model.max_neighbors <= 0 or self.model.max_cell_atoms <= 0
        return False

    def _fit_capacity(self, x: Tensor, cell: Optional[Tensor]) -> None:
        if hasattr(self.model, "fit_neighbor_capacity"):
            self.model.fit_neighbor_capacity(x.detach(), cell, self.capacity_margin)

    def _check_cell(self, cell: Tensor) -> None:
        """check_cell with the model's neighbour cutoff (host reads); the model's own check otherwise."""
        if hasattr(self.model, "neighbor_cutoff"):
            check_cell(cell, self.model.neighbor_cutoff)

    @torch.jit.export
    def fit_neighbor_capacity(self, positions: Tensor, box: Optional[Tensor] = None) -> None:
        """Fit the capture-safe neighbour capacity to the ML atoms' positions (n_ml, 3) nm (and box
        (3, 3) nm) with ``capacity_margin``; host reads, so call it outside any captured region."""
        dtype = self.model.element_energies.dtype
        x, cell = self._model_geometry(positions.detach().to(dtype), box)
        if cell is not None:
            self._check_cell(cell)
        self._fit_capacity(x, cell)

    @torch.jit.export
    def neighbor_overflow(self) -> bool:
        """Whether the last capture-safe evaluation needed more neighbour capacity than it had, or
        had an invalid box (one host read: call it after the call, outside any captured region)."""
        if hasattr(self.model, "neighbor_overflow"):
            return self.model.capture_safe and self.model.neighbor_overflow()
        return False

    def _overflow_poison(self, like: Tensor) -> Tensor:
        """() NaN if the last capture-safe evaluation overflowed, else 0 (device-side, no host read)."""
        if hasattr(self.model, "neighbor_demand"):
            demand = self.model.neighbor_demand
            bad = (demand[0] > self.model.max_neighbors) | (demand[1] > self.model.max_cell_atoms) | (demand[2] != 0)
            return torch.where(bad.to(like.device), torch.full_like(like, float("nan")), torch.zeros_like(like))
        return torch.zeros_like(like)

    @torch.jit.export
    def check_made_whole_width(self, positions: Tensor, box: Tensor) -> None:
        """Raise unless the ML region (n, 3) nm, made whole around its first atom, spans at most half
        the smallest width of ``box`` (3, 3) nm (its extent across each pair of box faces): beyond
        that a model that does not see periodic images is discontinuous (an ML atom's image flips
        when it crosses half a box from the first ML atom). Host reads."""
        b = box.detach().to(torch.float64)
        x = positions.detach().to(torch.float64)
        whole = minimum_image(x - x[0:1], b)
        normals = torch.linalg.cross(torch.roll(b, -1, 0), torch.roll(b, -2, 0))  # b x c, c x a, a x b
        norms = torch.linalg.vector_norm(normals, dim=1)
        along = whole @ (normals / norms.unsqueeze(1)).T  # (n, 3): positions across each pair of faces
        span = float((along.max(dim=0).values - along.min(dim=0).values).max())
        width = float((torch.abs((b[0] * normals[0]).sum()) / norms).min())
        if span > 0.5 * width:
            raise ValueError(
                "TransIP: the ML region spans " + format_decimal(span, 3) + " nm, more than half the smallest "
                "width of the periodic box (" + format_decimal(width, 3) + " nm); this model does not see periodic "
                "images (it makes the ML region whole around its first atom), so its energy jumps when an ML atom "
                "crosses half a box from that atom. For an all-ML periodic box use a model with relative positions "
                "and local attention (e.g. the shipped 'local' model); for ML/MM make the ML region smaller or "
                "the box larger"
            )

    @staticmethod
    def make_whole(x: Tensor, box: Tensor) -> Tensor:
        """Minimum image of every atom relative to atom 0 for OpenMM's reduced triclinic box.

        x: (n, 3) nm; box: (3, 3) nm with rows a, b, c (a along x, b in the xy plane).
        """
        return x[0:1] + minimum_image(x - x[0:1], box)


def rebuild_exported(module: torch.jit.ScriptModule, meta: Dict[str, Any]) -> OpenMMTransIP:
    """An eager :class:`OpenMMTransIP` with this version's code around the weights and system of
    an exported ``module`` (a loaded file, generic or specialised) whose metadata is ``meta``.

    For files exported before a code change the runtime relies on, e.g. capture-safe evaluation
    for CUDA graphs; script the result (``torch.jit.script``) to use it. Energies and forces are
    those of the original file. Frame-averaged files are refused (they cannot be captured anyway).
    """
    if meta.get("frame_averaging"):
        raise ValueError("rebuild_exported: frame-averaged exports are not supported; export the checkpoint again")
    model = TransIPModel(ModelConfig.from_dict(dict(meta["model_config"])))
    expected = model.state_dict()
    state = {k: v for k, v in module.model.state_dict().items() if k in expected}
    model.load_state_dict(state, strict=True)
    dtype = module.model.element_energies.dtype
    model = model.to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # the wrapper keeps the reference energies itself (float64)
        model.element_energies.copy_(module.reference_energies.to(dtype))
    wrapper = OpenMMTransIP(
        model,
        atomic_numbers=[int(z) for z in module.atomic_numbers.tolist()],
        ml_indices=[int(i) for i in module.ml_indices.tolist()],
        n_particles=int(module.n_particles),
        charge=int(module.charge[0]),
        multiplicity=int(module.multiplicity[0]),
    )
    wrapper.reference_energies.copy_(module.reference_energies)
    return wrapper
