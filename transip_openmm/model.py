"""The TransIP model: a plain Transformer over atoms.

Atoms are tokens. A token starts as the sum of an element embedding, a learned
projection of the atom's centred Cartesian coordinates, and embeddings of the
molecule's total charge and spin multiplicity. A stack of pre-norm Transformer
blocks (``scaled_dot_product_attention``) with an optional per-head attention bias
from radial basis functions of interatomic distances mixes the tokens. A readout
gives per-atom energies; the molecular energy is their sum plus per-element
reference energies and an optional short-range ZBL repulsion prior. Forces are
``-dE/dx`` by autograd.

Translation and permutation invariance are exact. Rotation invariance is not built
in: it is learned (``symmetry: transip`` or ``augment`` in training), or imposed at
inference by frame averaging (:mod:`transip_openmm.frames`).

Units: positions in Å, energies in eV, forces in eV/Å. The module is TorchScript
compatible (``torch.jit.script``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transip_openmm.units import COULOMB_EV_ANGSTROM

#: Largest atomic number the embedding tables cover (Pu).
MAX_ATOMIC_NUMBER = 94
#: Total charges -MAX_ABS_CHARGE..MAX_ABS_CHARGE and multiplicities 1..MAX_MULTIPLICITY
#: are representable (OMol25 spans -10..10 and 1..11).
MAX_ABS_CHARGE = 10
MAX_MULTIPLICITY = 11


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`TransIPModel` (all lengths in Å)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    mlp_ratio: float = 2.0
    n_rbf: int = 32
    rbf_cutoff: float = 10.0
    distance_bias: bool = True
    coord_scale: float = 5.0
    zbl_repulsion: bool = True
    zbl_switch_fraction: float = 0.75

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown model config key(s) {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**data)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class RadialBasis(nn.Module):
    """Gaussian radial basis on [0, cutoff] Å, smoothly switched off at the cutoff.

    ``forward(r: (...,)) -> (..., n_rbf)``.
    """

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.width = float(cutoff / n_rbf)
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        x = (r.unsqueeze(-1) - self.centers) / self.width
        envelope = 0.5 * (torch.cos(math.pi * torch.clamp(r / self.cutoff, max=1.0)) + 1.0)
        return torch.exp(-0.5 * x * x) * envelope.unsqueeze(-1)


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block: ``x + Attn(LN(x), bias)`` then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.norm_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        hidden = int(round(d_model * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Linear(hidden, d_model))

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """x: (B, N, d); attn_bias: (B, H, N, N) additive logits (padding = large negative)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm_attn(x)).view(b, n, 3, self.n_heads, self.d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        x = x + self.out(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm_mlp(x))


class ZBLRepulsion(nn.Module):
    """Ziegler-Biersack-Littmark screened nuclear repulsion, switched off smoothly.

    The pair term is fully on below ``switch_fraction/2`` of the sum of covalent radii and
    zero above ``switch_fraction`` of it, so it only acts at distances no training
    structure should reach and keeps MD away from nuclear fusion. Energy in eV.
    """

    def __init__(self, covalent_radii: Tensor, switch_fraction: float) -> None:
        super().__init__()
        self.register_buffer("covalent_radii", covalent_radii.clone())
        self.switch_fraction = float(switch_fraction)
        self.coulomb = float(COULOMB_EV_ANGSTROM)

    def forward(self, z: Tensor, r: Tensor, pair_mask: Tensor) -> Tensor:
        """z: (B, N) atomic numbers; r: (B, N, N) distances Å; pair_mask: (B, N, N) bool."""
        zf = z.to(r.dtype)
        zi = zf.unsqueeze(2)
        zj = zf.unsqueeze(1)
        a = 0.46850 / (zi.clamp(min=1.0) ** 0.23 + zj.clamp(min=1.0) ** 0.23)
        x = r / a
        phi = (
            0.18175 * torch.exp(-3.19980 * x)
            + 0.50986 * torch.exp(-0.94229 * x)
            + 0.28022 * torch.exp(-0.40290 * x)
            + 0.02817 * torch.exp(-0.20162 * x)
        )
        rcov = self.covalent_radii.to(r.dtype)[z]
        r_off = self.switch_fraction * (rcov.unsqueeze(2) + rcov.unsqueeze(1))
        r_on = 0.5 * r_off
        t = torch.clamp((r - r_on) / (r_off - r_on), 0.0, 1.0)
        switch = 1.0 - t * t * t * (t * (6.0 * t - 15.0) + 10.0)
        pair = self.coulomb * zi * zj / r * phi * switch
        pair = torch.where(pair_mask, pair, torch.zeros_like(pair))
        return 0.5 * pair.sum(dim=(1, 2))


class TransIPModel(nn.Module):
    """Energy model. ``forward`` returns ``(energy (B,) eV, hidden states)``.

    Inputs (padded batch of B molecules with up to N atoms):
      atomic_numbers (B, N) int64, 0 for padding; positions (B, N, 3) Å;
      mask (B, N) bool, True for real atoms; charge (B,) int64 total charge in e;
      multiplicity (B,) int64 spin multiplicity 2S+1.
    Hidden states: list of n_layers + 1 tensors (B, N, d_model): the input tokens and
    the output of each block.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config_dict = config.to_dict()
        d = config.d_model
        self.n_heads = config.n_heads
        self.n_layers = config.n_layers
        self.coord_scale = float(config.coord_scale)
        self.use_distance_bias = bool(config.distance_bias)
        self.use_zbl = bool(config.zbl_repulsion)
        self.max_abs_charge = MAX_ABS_CHARGE
        self.max_multiplicity = MAX_MULTIPLICITY

        self.element_embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, d, padding_idx=0)
        self.charge_embedding = nn.Embedding(2 * MAX_ABS_CHARGE + 1, d)
        self.multiplicity_embedding = nn.Embedding(MAX_MULTIPLICITY + 1, d)
        self.coord_embedding = nn.Sequential(nn.Linear(3, d), nn.SiLU(), nn.Linear(d, d))
        self.rbf = RadialBasis(config.n_rbf, config.rbf_cutoff)
        self.bias_projection = nn.Linear(config.n_rbf, config.n_heads * config.n_layers)
        self.blocks = nn.ModuleList(
            [TransformerBlock(d, config.n_heads, config.mlp_ratio) for _ in range(config.n_layers)]
        )
        self.final_norm = nn.LayerNorm(d)
        self.readout = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))

        # Energy normalisation, set from training data: E = sum_i (scale * e_i + ref[Z_i]).
        self.register_buffer("element_energies", torch.zeros(MAX_ATOMIC_NUMBER + 1))
        self.register_buffer("energy_scale", torch.ones(()))
        from ase.data import covalent_radii  # local: keeps ase out of TorchScript globals

        self.zbl = ZBLRepulsion(
            torch.tensor(covalent_radii[: MAX_ATOMIC_NUMBER + 1], dtype=torch.float32),
            config.zbl_switch_fraction,
        )

    def embed(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        mask: Tensor,
        charge: Tensor,
        multiplicity: Tensor,
    ) -> Tuple[List[Tensor], Tensor]:
        """Token embeddings of every layer and the pairwise distances (B, N, N) Å."""
        maskf = mask.to(positions.dtype).unsqueeze(-1)
        n_atoms = maskf.sum(dim=1, keepdim=True).clamp(min=1.0)
        centroid = (positions * maskf).sum(dim=1, keepdim=True) / n_atoms
        centred = (positions - centroid) * maskf

        charge_index = torch.clamp(charge + self.max_abs_charge, 0, 2 * self.max_abs_charge)
        mult_index = torch.clamp(multiplicity, 0, self.max_multiplicity)
        h = (
            self.element_embedding(atomic_numbers)
            + self.coord_embedding(centred / self.coord_scale)
            + (self.charge_embedding(charge_index) + self.multiplicity_embedding(mult_index)).unsqueeze(1)
        ) * maskf

        diff = positions.unsqueeze(2) - positions.unsqueeze(1)
        r = torch.sqrt((diff * diff).sum(-1) + 1e-12)
        b, n = atomic_numbers.shape
        key_pad = torch.zeros(b, 1, 1, n, dtype=positions.dtype, device=positions.device)
        key_pad = key_pad.masked_fill(~mask.view(b, 1, 1, n), -1.0e9)
        if self.use_distance_bias:
            bias_all = self.bias_projection(self.rbf(r))  # (B, N, N, H*L)
            bias_all = bias_all.view(b, n, n, self.n_layers, self.n_heads).permute(3, 0, 4, 1, 2)
        else:
            bias_all = torch.zeros(self.n_layers, b, self.n_heads, n, n, dtype=positions.dtype,
                                   device=positions.device)

        hidden: List[Tensor] = [h]
        for i, block in enumerate(self.blocks):
            h = block(h, bias_all[i] + key_pad)
            hidden.append(h)
        return hidden, r

    def forward(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        mask: Tensor,
        charge: Tensor,
        multiplicity: Tensor,
    ) -> Tuple[Tensor, List[Tensor]]:
        hidden, r = self.embed(atomic_numbers, positions, mask, charge, multiplicity)
        maskf = mask.to(positions.dtype)
        atom_energy = self.readout(self.final_norm(hidden[-1])).squeeze(-1)
        atom_energy = atom_energy * self.energy_scale + self.element_energies.to(positions.dtype)[atomic_numbers]
        energy = (atom_energy * maskf).sum(dim=1)
        if self.use_zbl:
            n = atomic_numbers.shape[1]
            eye = torch.eye(n, dtype=torch.bool, device=positions.device).unsqueeze(0)
            pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1) & ~eye
            energy = energy + self.zbl(atomic_numbers, r, pair_mask)
        return energy, hidden


def compute_forces(energy: Tensor, positions: Tensor, training: bool = False) -> Tensor:
    """Forces ``-dE/dx`` (same shape and units per length as ``positions``).

    ``training=True`` keeps the graph so a force loss can be back-propagated.
    """
    grad_outputs: List[Optional[Tensor]] = [torch.ones_like(energy)]
    grads = torch.autograd.grad(
        [energy], [positions], grad_outputs=grad_outputs, create_graph=training, retain_graph=training
    )
    grad = grads[0]
    if grad is None:
        return torch.zeros_like(positions)
    return -grad


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
