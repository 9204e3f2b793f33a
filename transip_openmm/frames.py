"""Exact rotational invariance at inference by frame averaging.

A TransIP model learns rotational symmetry but does not have it exactly. Averaging the
energy over a finite rotation group G makes it exactly invariant under G:

    E_G(x) = (1 / |G|) * sum_{g in G} E(g x),     F_G = -dE_G/dx (by autograd).

:class:`FrameAveragedModel` uses the 24 proper rotations of the octahedral group (the
rotations of a cube). They are signed permutation matrices, so rotating coordinates by
them is exact in floating point, and the 24 energies are sorted before summation; the
energy is then invariant under these rotations bit for bit (same inputs, same order of
summation), and forces are exactly equivariant. For arbitrary rotations the averaging
cancels the low-order anisotropy of the learned model (measured by
``benchmarks/frames.py``). The cost is a batch of 24 structures per evaluation.

The wrapper has the forward signature of :class:`~transip_openmm.model.TransIPModel`
and is TorchScript compatible, so an exporter can wrap it like the plain model.
"""

from __future__ import annotations

import itertools
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from transip_openmm.model import TransIPModel


def octahedral_rotations(dtype: torch.dtype = torch.float64) -> Tensor:
    """The 24 proper rotations of the cube as (24, 3, 3) signed permutation matrices.

    The identity comes first.
    """
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            for row, col in enumerate(perm):
                m[row, col] = signs[row]
            if torch.det(m) > 0:
                mats.append(m)
    rot = torch.stack(mats)
    assert rot.shape[0] == 24 and torch.equal(rot[0], torch.eye(3, dtype=torch.float64))
    return rot.to(dtype)


class FrameAveragedModel(nn.Module):
    """Energy averaged over the 24 octahedral rotations of the input.

    ``forward(atomic_numbers (B, N), positions (B, N, 3) Å, mask (B, N), charge (B,),
    multiplicity (B,)) -> (energy (B,) eV, hidden)``; ``hidden`` are the hidden states of
    the identity frame (for inspection only). Structures are evaluated as one batch of
    24·B, except single large structures that the wrapped model evaluates with its
    neighbour list (local attention), which are evaluated frame by frame.
    """

    def __init__(self, model: TransIPModel) -> None:
        super().__init__()
        self.model = model
        self.n_frames = 24
        self.register_buffer("rotations", octahedral_rotations(torch.float32), persistent=False)
        # Same tensors as the wrapped model's (not saved twice): callers read the dtype here.
        self.register_buffer("element_energies", model.element_energies, persistent=False)
        self.use_neighbor_path = bool(model.use_attention_cutoff)
        self.neighbor_list_min_atoms = int(model.neighbor_list_min_atoms)
        # Rotated frames would need rotated (no longer reduced) boxes: periodic cells are
        # refused, and an exported frame-averaged model treats a box as the ML/MM case does.
        self.supports_periodic = False

    def forward(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        mask: Tensor,
        charge: Tensor,
        multiplicity: Tensor,
        cell: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor]]:
        if cell is not None:
            raise ValueError("TransIP: frame averaging does not support periodic cells")
        b, n = atomic_numbers.shape
        k = self.n_frames
        rot = self.rotations.to(dtype=positions.dtype, device=positions.device)
        # x_g = x R_g^T for every frame g: (K, B, N, 3); exact for signed permutations.
        rotated = torch.matmul(positions.unsqueeze(0), rot.transpose(1, 2).unsqueeze(1))
        if self.use_neighbor_path and b == 1 and n >= self.neighbor_list_min_atoms:
            energies: List[Tensor] = []
            hidden: List[Tensor] = []
            for g in range(k):
                e, h = self.model(atomic_numbers, rotated[g], mask, charge, multiplicity)
                energies.append(e)
                if g == 0:
                    hidden = h
            frame_energy = torch.stack(energies)  # (K, B)
        else:
            e, h_all = self.model(
                atomic_numbers.repeat(k, 1),
                rotated.reshape(k * b, n, 3),
                mask.repeat(k, 1),
                charge.repeat(k),
                multiplicity.repeat(k),
            )
            frame_energy = e.view(k, b)
            hidden = [h[:b] for h in h_all]
        # Sorting fixes the order of summation, so a rotated input (a permutation of the
        # frames) gives the identical sum.
        energy = torch.sort(frame_energy, dim=0)[0].sum(dim=0) / k
        return energy, hidden
