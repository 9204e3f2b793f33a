"""Shared helpers for model tests: small float64 models and molecules."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from transip_openmm.model import ModelConfig, TransIPModel

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_rbf=8)


def make_model(seed: int = 0, **overrides) -> TransIPModel:
    """A small float64 model with non-trivial energy normalisation."""
    torch.manual_seed(seed)
    model = TransIPModel(ModelConfig(**{**SMALL, **overrides})).double().eval()
    with torch.no_grad():
        model.energy_scale.fill_(0.7)
        model.element_energies.uniform_(-2.0, 2.0)
        if model.pair is not None:  # zero-initialised in the model: give it a non-trivial shape
            model.pair.coefficients.weight.normal_(0.0, 0.3)
            model.pair.coefficients.bias.normal_(0.0, 0.3)
    return model


def random_molecule(n: int, seed: int = 1, spacing: float = 1.4) -> Tuple[Tensor, Tensor]:
    """(atomic_numbers (1, n), positions (1, n, 3) Å float64) with no pair closer than ~1 Å."""
    g = torch.Generator().manual_seed(seed)
    side = int(round(n ** (1.0 / 3.0))) + 1
    grid = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pick = torch.randperm(grid.shape[0], generator=g)[:n]
    pos = grid[pick].double() * spacing + 0.2 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (n,), generator=g)]
    return z.unsqueeze(0), pos.unsqueeze(0)


def inputs(z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """mask, charge, multiplicity for a batch of unpadded/padded molecules."""
    b = z.shape[0]
    return z > 0, torch.zeros(b, dtype=torch.long), torch.ones(b, dtype=torch.long)


def energy_forces(model, z: Tensor, pos: Tensor) -> Tuple[Tensor, Tensor]:
    """Energy (B,) eV and forces (B, N, 3) eV/Å."""
    mask, charge, mult = inputs(z)
    p = pos.clone().requires_grad_(True)
    energy, _ = model(z, p, mask, charge, mult)
    (grad,) = torch.autograd.grad(energy.sum(), p)
    return energy.detach(), -grad

