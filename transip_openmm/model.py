"""The TransIP model: a plain Transformer over atoms.

Atoms are tokens. A token starts as the sum of an element embedding, a learned
projection of the atom's centred Cartesian coordinates, and embeddings of the
molecule's total charge and spin multiplicity. A stack of pre-norm Transformer
blocks mixes the tokens, with an optional per-head attention bias from radial basis
functions of interatomic distances. A readout gives per-atom energies; the molecular
energy is their sum plus per-element reference energies, an optional short-range
ZBL repulsion prior and an optional learned two-body term (``pair_energy``: a radial
pair potential per element pair, exactly invariant, that gives covalent bonds their
stiffness from the first steps of training). Forces are ``-dE/dx`` by autograd.

Optional local attention (``attention_cutoff``): attention weights are multiplied by a
smooth cosine envelope of the interatomic distance, ``w_ij ∝ exp(s_ij) φ(r_ij)`` with
``φ(r) = (cos(π r / r_c) + 1) / 2`` for ``r < r_c`` and 0 beyond, so the energy and
forces stay continuous when atoms cross the cutoff. The same function is evaluated
densely (all pairs, padded batches, training) or, for large single structures, over a
cell-list neighbour list so cost and memory grow linearly with the number of atoms.

Relative positions (``position_encoding: relative``): tokens carry no coordinates; each
attention pair (i, j) instead gets features of its displacement x_j - x_i (the radial basis
and the vector itself, switched off at ``rbf_cutoff``) that set the attention logits and are
added to the values (head h adds W_h Σ_j w_ij e_ij). No absolute frame is used, so with local
attention a periodic ``cell`` can be given and the model sees the periodic images (minimum
image within its cutoff): all-ML periodic boxes. The displacement vectors keep the model
non-invariant under rotations, so the symmetry is still learned, as with absolute positions.

Translation and permutation invariance are exact. Rotation invariance is not built
in: it is learned (``symmetry: transip`` or ``augment`` in training), or imposed at
inference by frame averaging (:mod:`transip_openmm.frames`).

Units: positions in Å, energies in eV, forces in eV/Å. The module is TorchScript
compatible (``torch.jit.script``). For inference call
:func:`prepare_for_inference` (parameters without gradients: otherwise autograd also
computes weight gradients on every force evaluation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transip_openmm.neighbors import (
    cell_is_valid,
    check_cell,
    minimum_image,
    neighbor_demand,
    neighbor_list,
    static_neighbor_list,
)
from transip_openmm.units import COULOMB_EV_ANGSTROM

#: Largest atomic number the embedding tables cover (Pu).
MAX_ATOMIC_NUMBER = 94
#: Total charges -MAX_ABS_CHARGE..MAX_ABS_CHARGE and multiplicities 1..MAX_MULTIPLICITY
#: are representable (OMol25 spans -10..10 and 1..11).
MAX_ABS_CHARGE = 10
MAX_MULTIPLICITY = 11
#: Added under the square root of squared distances (Å²): keeps d r / d x finite at r = 0.
DISTANCE_EPS = 1e-12
#: ``absolute``: tokens carry the atom's centred coordinates (the paper's model);
#: ``relative``: geometry enters only through per-pair features of the displacement
#: vectors (attention logits and values), so no absolute frame is used and a periodic
#: box works with local attention.
POSITION_ENCODINGS = ("absolute", "relative")


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`TransIPModel` (all lengths in Å).

    ``attention_cutoff`` (None = dense all-pairs attention) switches on local attention
    with a smooth envelope; ``neighbor_list_min_atoms`` is the structure size from which
    a single unpadded structure is evaluated with a neighbour list instead of all pairs
    (both give the same function). Neither adds parameters. ``pair_energy`` adds the
    learned two-body term (:class:`PairEnergy`) with ``n_pair_rbf`` Gaussians up to
    ``pair_cutoff`` Å. ``position_encoding`` is ``absolute`` or ``relative`` (see
    :data:`POSITION_ENCODINGS`); periodic boxes need ``relative`` and an ``attention_cutoff``.
    ``energy_levels``: the levels of theory the model has energy heads for (multi-fidelity
    training: one readout output and one set of element references per level on a shared
    trunk; the first is the default). Empty or one entry: a single-level model.
    """

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
    attention_cutoff: Optional[float] = None
    neighbor_list_min_atoms: int = 256
    pair_energy: bool = False
    pair_cutoff: float = 5.0
    n_pair_rbf: int = 32
    pair_embedding_dim: int = 16
    position_encoding: str = "absolute"
    energy_levels: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.attention_cutoff is not None and not self.attention_cutoff > 0.0:
            raise ValueError(f"attention_cutoff must be > 0 Å or None, got {self.attention_cutoff}")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}"
            )
        if self.position_encoding == "relative" and not self.distance_bias:
            raise ValueError("position_encoding 'relative' needs distance_bias: true (geometry enters "
                             "through the pair features of attention)")
        self.energy_levels = [str(level) for level in self.energy_levels]
        if len(set(self.energy_levels)) != len(self.energy_levels):
            raise ValueError(f"energy_levels must be distinct, got {self.energy_levels}")

    @property
    def n_levels(self) -> int:
        """Number of energy heads (1 for a single-level model)."""
        return max(1, len(self.energy_levels))

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


def cosine_switch(r: Tensor, cutoff: float) -> Tensor:
    """``(cos(π r / cutoff) + 1) / 2`` for ``r < cutoff``, 0 beyond; r any shape, Å."""
    return 0.5 * (torch.cos(math.pi * torch.clamp(r / cutoff, max=1.0)) + 1.0)


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
        envelope = cosine_switch(r, self.cutoff)
        # exp(-40) ~ 4e-18: the clamp changes nothing measurable but keeps exp off its
        # (about 10x slower) underflow path and keeps denormal numbers (10-100x slower
        # arithmetic on x86) out of the products of the forward and backward passes.
        return torch.exp(torch.clamp(-0.5 * x * x, min=-40.0)) * envelope.unsqueeze(-1)


def log_cosine_envelope(r: Tensor, cutoff: float, valid: Tensor) -> Tensor:
    """``log φ(r)`` of the attention envelope, ``-inf`` where ``r >= cutoff`` or not ``valid``.

    r: any shape, Å; valid: bool, same shape. Gradients are finite everywhere.
    """
    inside = valid & (r < cutoff)
    phi = 0.5 * (torch.cos((math.pi / cutoff) * torch.clamp(r, max=cutoff)) + 1.0)
    logphi = torch.log(torch.clamp(phi, min=1e-30))
    return torch.where(inside, logphi, torch.full_like(logphi, -math.inf))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block: ``x + Attn(LN(x), bias)`` then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, n_edge_features: int = 0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.scale = 1.0 / math.sqrt(self.d_head)
        self.norm_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        hidden = int(round(d_model * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Linear(hidden, d_model))
        # Relative positions in the values (``position_encoding: relative``): head h adds
        # W_h Σ_j w_ijh e_ij, the attention-weighted pair features mapped to d_head.
        self.edge_value = nn.Linear(n_edge_features, d_model, bias=False) if n_edge_features > 0 else None

    def _edge_values(self, weighted: Tensor) -> Tensor:
        """weighted: (P, H, F) attention-weighted pair features -> (P, d)."""
        edge_value = self.edge_value
        assert edge_value is not None
        p = weighted.shape[0]
        w = edge_value.weight.view(self.n_heads, self.d_head, weighted.shape[2])
        return torch.einsum("phf,hdf->phd", weighted, w).reshape(p, self.n_heads * self.d_head)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor], edge: Optional[Tensor] = None) -> Tensor:
        """x: (B, N, d); attn_bias: additive logits (B, H, N, N) (padding = -1e9), or
        (H, N, N) when B = 1, or None (no bias: fused attention); edge: pair features
        (B, N, N, F) for relative positions (needs a bias), or None."""
        b, n, d = x.shape
        y = self.qkv(self.norm_attn(x))
        if attn_bias is None and not self.training:
            # Fused kernel: first derivatives only, enough for inference forces.
            q, k, v = y.view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4).unbind(0)
            attn = F.scaled_dot_product_attention(q, k, v)
            attn = attn.transpose(1, 2).reshape(b, n, d)
        elif attn_bias is None:
            # Training differentiates the forces again (double backward), which the fused
            # CPU kernels do not implement: explicit attention.
            q, k, v = y.view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4).unbind(0)
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            attn = torch.matmul(torch.softmax(scores, dim=-1), v)
            attn = attn.transpose(1, 2).reshape(b, n, d)
        elif b == 1:
            # One structure: strided (H, N, dh) views, scale and bias fused into baddbmm.
            q, k, v = y.view(n, 3, self.n_heads, self.d_head).permute(1, 2, 0, 3).unbind(0)
            scores = torch.baddbmm(attn_bias, q, k.transpose(1, 2), alpha=self.scale)
            weights = torch.softmax(scores, dim=-1)  # (H, N, N)
            attn = torch.bmm(weights, v)
            attn = attn.transpose(0, 1).reshape(b, n, d)
            if edge is not None:
                attn = attn + self._edge_values(torch.einsum("hij,ijf->ihf", weights, edge[0])).unsqueeze(0)
        else:
            q, k, v = y.view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4).unbind(0)
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + attn_bias
            weights = torch.softmax(scores, dim=-1)  # (B, H, N, N)
            attn = torch.matmul(weights, v)
            attn = attn.transpose(1, 2).reshape(b, n, d)
            if edge is not None:
                weighted = torch.einsum("bhij,bijf->bihf", weights, edge)
                attn = attn + self._edge_values(weighted.reshape(b * n, self.n_heads, -1)).view(b, n, d)
        x = x + self.out(attn)
        return x + self.mlp(self.norm_mlp(x))

    def forward_neighbors(
        self, x: Tensor, neighbors: Tensor, attn_bias: Tensor, edge: Optional[Tensor] = None
    ) -> Tensor:
        """Local attention over a neighbour list.

        x: (N, d); neighbors: (N, M) int64 indices into x; attn_bias: (N, M, H) additive
        logits including ``log φ`` (``-inf`` on padding slots); edge: pair features
        (N, M, F) for relative positions, or None. Returns (N, d).
        Keys and values are gathered separately (``index_select``, whose backward is a fast
        ``index_add`` into (N, d); gathering them as one tensor made the backward stack two
        (N, M, d) gradients); the per-pair products are elementwise, not N·H tiny matmuls.
        """
        n, d = x.shape
        m = neighbors.shape[1]
        q, k, v = self.qkv(self.norm_attn(x)).split(d, dim=1)  # (N, d) each
        index = neighbors.reshape(-1)
        k = k.index_select(0, index).view(n, m, self.n_heads, self.d_head)  # (N, M, H, dh)
        v = v.index_select(0, index).view(n, m, self.n_heads, self.d_head)
        q = q.reshape(n, 1, self.n_heads, self.d_head)
        scores = (q * k).sum(-1) * self.scale + attn_bias  # (N, M, H)
        weights = torch.softmax(scores, dim=1)
        attn = (weights.unsqueeze(-1) * v).sum(1).reshape(n, d)  # (N, H, dh) -> (N, d)
        if edge is not None:
            attn = attn + self._edge_values(torch.einsum("nmh,nmf->nhf", weights, edge))
        x = x + self.out(attn)
        return x + self.mlp(self.norm_mlp(x))


class ZBLRepulsion(nn.Module):
    """Ziegler-Biersack-Littmark screened nuclear repulsion, switched off smoothly.

    The pair term is fully on below ``switch_fraction/2`` of the sum of covalent radii and
    zero above ``switch_fraction`` of it, so it only acts at distances no training
    structure should reach and keeps MD away from nuclear fusion. Energy in eV. When no
    pair is closer than its switch-off distance the term (and its gradient, the switch
    being C²) is exactly zero and its evaluation is skipped (on the CPU; on CUDA the check
    would need a host sync, which CUDA-graph capture forbids).
    """

    def __init__(self, covalent_radii: Tensor, switch_fraction: float) -> None:
        super().__init__()
        self.register_buffer("covalent_radii", covalent_radii.clone())
        self.switch_fraction = float(switch_fraction)
        self.coulomb = float(COULOMB_EV_ANGSTROM)

    def max_range(self) -> float:
        """Largest switch-off distance of any element pair (Å)."""
        return float(2.0 * self.switch_fraction * float(self.covalent_radii.max()))

    def pair_energy(self, zi: Tensor, zj: Tensor, r: Tensor, pair_mask: Tensor) -> Tensor:
        """Energy of each pair (eV); zi, zj int64 and r (Å), pair_mask bool, broadcastable."""
        rcov = self.covalent_radii.to(r.dtype)
        r_off = self.switch_fraction * (rcov[zi] + rcov[zj])
        zif = zi.to(r.dtype)
        zjf = zj.to(r.dtype)
        a = 0.46850 / (zif.clamp(min=1.0) ** 0.23 + zjf.clamp(min=1.0) ** 0.23)
        x = r / a
        phi = (
            0.18175 * torch.exp(-3.19980 * x)
            + 0.50986 * torch.exp(-0.94229 * x)
            + 0.28022 * torch.exp(-0.40290 * x)
            + 0.02817 * torch.exp(-0.20162 * x)
        )
        r_on = 0.5 * r_off
        t = torch.clamp((r - r_on) / (r_off - r_on), 0.0, 1.0)
        switch = 1.0 - t * t * t * (t * (6.0 * t - 15.0) + 10.0)
        pair = self.coulomb * zif * zjf / r * phi * switch
        return torch.where(pair_mask, pair, torch.zeros_like(pair))

    def any_active(self, zi: Tensor, zj: Tensor, r: Tensor, pair_mask: Tensor) -> bool:
        """Whether any masked pair is closer than its switch-off distance."""
        rcov = self.covalent_radii.to(r.dtype)
        r_off = self.switch_fraction * (rcov[zi] + rcov[zj])
        return bool(((r.detach() < r_off) & pair_mask).any())

    def forward(self, z: Tensor, r: Tensor, pair_mask: Tensor) -> Tensor:
        """z: (B, N) atomic numbers; r: (B, N, N) distances Å; pair_mask: (B, N, N) bool."""
        zi = z.unsqueeze(2)
        zj = z.unsqueeze(1)
        if not r.is_cuda and not self.any_active(zi, zj, r, pair_mask):  # no host sync on CUDA
            return torch.zeros(z.shape[0], dtype=r.dtype, device=r.device)
        return 0.5 * self.pair_energy(zi, zj, r, pair_mask).sum(dim=(1, 2))


class PairEnergy(nn.Module):
    """Learned two-body energy ``E = ½ Σ_{i≠j} Σ_k c_k(Z_i, Z_j) φ_k(r_ij)`` (eV).

    ``φ_k``: Gaussians on [0, cutoff] Å with a cosine switch to zero at the cutoff (smooth
    energy and forces); ``c(Z_i, Z_j) = W (e_{Z_i} ⊙ e_{Z_j}) + b``, symmetric in the pair,
    scaled by the model's ``energy_scale``. ``W`` and ``b`` start at zero, so an untrained
    term contributes nothing.
    """

    def __init__(self, n_rbf: int, cutoff: float, embedding_dim: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.rbf = RadialBasis(n_rbf, cutoff)
        self.embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, embedding_dim)
        self.coefficients = nn.Linear(embedding_dim, n_rbf)
        with torch.no_grad():
            self.coefficients.weight.zero_()
            self.coefficients.bias.zero_()

    def pair_energy(self, zi: Tensor, zj: Tensor, r: Tensor, pair_mask: Tensor) -> Tensor:
        """Energy of each pair (eV, before ``energy_scale``); zi, zj, r, pair_mask broadcastable
        to one shape ``S`` (int64, int64, Å, bool) -> (S)."""
        c = self.coefficients(self.embedding(zi) * self.embedding(zj))
        pair = (c * self.rbf(r)).sum(-1)
        return torch.where(pair_mask & (r < self.cutoff), pair, torch.zeros_like(pair))


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
        self.d_model = d
        self.n_heads = config.n_heads
        self.n_layers = config.n_layers
        self.coord_scale = float(config.coord_scale)
        self.use_distance_bias = bool(config.distance_bias)
        self.use_zbl = bool(config.zbl_repulsion)
        self.use_attention_cutoff = config.attention_cutoff is not None
        self.attention_cutoff = float(config.attention_cutoff) if config.attention_cutoff is not None else 0.0
        self.neighbor_list_min_atoms = int(config.neighbor_list_min_atoms)
        self.relative = config.position_encoding == "relative"
        #: Whether ``forward`` accepts a periodic ``cell`` (relative positions, local attention).
        self.supports_periodic = self.relative and self.use_attention_cutoff
        self.max_abs_charge = MAX_ABS_CHARGE
        self.max_multiplicity = MAX_MULTIPLICITY

        self.element_embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, d, padding_idx=0)
        self.charge_embedding = nn.Embedding(2 * MAX_ABS_CHARGE + 1, d)
        self.multiplicity_embedding = nn.Embedding(MAX_MULTIPLICITY + 1, d)
        self.coord_embedding = None if self.relative else nn.Sequential(nn.Linear(3, d), nn.SiLU(), nn.Linear(d, d))
        self.rbf = RadialBasis(config.n_rbf, config.rbf_cutoff)
        # Pair features: the radial basis, plus (relative) the switched displacement vector.
        n_pair_features = config.n_rbf + 3 if self.relative else config.n_rbf
        self.bias_projection = nn.Linear(n_pair_features, config.n_heads * config.n_layers)
        n_edge_features = n_pair_features if self.relative else 0
        self.blocks = nn.ModuleList(
            [TransformerBlock(d, config.n_heads, config.mlp_ratio, n_edge_features) for _ in range(config.n_layers)]
        )
        self.final_norm = nn.LayerNorm(d)
        #: energy heads: one readout output per level of theory (see ModelConfig.energy_levels)
        self.n_levels: int = config.n_levels
        self.energy_levels: List[str] = list(config.energy_levels)
        self.readout = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, self.n_levels))
        self._init_geometry_sensitive()

        # Energy normalisation, set from training data: E = sum_i (scale * e_i + ref[level, Z_i]);
        # element_energies is (N_Z,) for a single-level model, (n_levels, N_Z) otherwise.
        ref_shape = (MAX_ATOMIC_NUMBER + 1,) if self.n_levels == 1 else (self.n_levels, MAX_ATOMIC_NUMBER + 1)
        self.register_buffer("element_energies", torch.zeros(ref_shape))
        self.register_buffer("energy_scale", torch.ones(()))
        from ase.data import covalent_radii  # local: keeps ase out of TorchScript globals

        self.zbl = ZBLRepulsion(
            torch.tensor(covalent_radii[: MAX_ATOMIC_NUMBER + 1], dtype=torch.float32),
            config.zbl_switch_fraction,
        )
        self.pair = PairEnergy(config.n_pair_rbf, config.pair_cutoff, config.pair_embedding_dim) \
            if config.pair_energy else None
        neighbor_cutoff = self.attention_cutoff
        if self.use_zbl:
            neighbor_cutoff = max(neighbor_cutoff, self.zbl.max_range())
        if config.pair_energy:
            neighbor_cutoff = max(neighbor_cutoff, float(config.pair_cutoff))
        self.neighbor_cutoff = neighbor_cutoff
        # Capture-safe evaluation (CUDA graphs): static shapes and no host read in ``forward``.
        # The neighbour-list capacity is fitted outside the captured region
        # (:meth:`fit_neighbor_capacity`); ``forward`` records what the structure needed in
        # ``neighbor_demand`` = (neighbours, cell occupancy, cell invalid) for a check after the call
        # (:meth:`check_neighbor_capacity`).
        self.capture_safe: bool = False
        self.max_neighbors: int = 0
        self.max_cell_atoms: int = 0
        self.register_buffer("neighbor_demand", torch.zeros(3, dtype=torch.long), persistent=False)

    @torch.jit.unused
    def _init_geometry_sensitive(self) -> None:
        """Initialise so that the energy depends on geometry from the first step.

        With PyTorch's default N(0, 1) embeddings the element, charge and multiplicity
        vectors (norm ~sqrt(d)) drown the coordinate projection (norm ~1) after LayerNorm,
        and the default distance-bias projection gives ~0.2 logits: the initial forces are
        ~1% of the data's and the force loss barely moves in training. Embeddings get
        std d^-1/2 and the distance bias std-1 weights (a few logits).
        """
        d = self.element_embedding.embedding_dim
        with torch.no_grad():
            for table in (self.element_embedding, self.charge_embedding, self.multiplicity_embedding):
                table.weight.normal_(0.0, d ** -0.5)
            self.element_embedding.weight[0].zero_()
            self.bias_projection.weight.normal_(0.0, 1.0)

    def _tokens(
        self, atomic_numbers: Tensor, centred: Tensor, charge: Tensor, multiplicity: Tensor
    ) -> Tensor:
        """Input tokens (B, N, d) from atomic numbers and centred positions (B, N, 3) Å
        (positions unused with relative position encoding)."""
        charge_index = torch.clamp(charge + self.max_abs_charge, 0, 2 * self.max_abs_charge)
        mult_index = torch.clamp(multiplicity, 0, self.max_multiplicity)
        tokens = self.element_embedding(atomic_numbers) + (
            self.charge_embedding(charge_index) + self.multiplicity_embedding(mult_index)
        ).unsqueeze(1)
        coord_embedding = self.coord_embedding
        if coord_embedding is not None:
            tokens = tokens + coord_embedding(centred / self.coord_scale)
        return tokens

    def _pair_features(self, diff: Tensor, r: Tensor) -> Tensor:
        """diff (..., 3) Å = x_j - x_i and r (...) Å -> pair features (..., F): the input of the
        attention-bias projection and, with relative positions, of the attention values.

        Absolute encoding: the radial basis (F = n_rbf). Relative: the radial basis and the
        displacement vector / rbf_cutoff, switched off smoothly at rbf_cutoff (F = n_rbf + 3).
        """
        rbf = self.rbf(r)
        if not self.relative:
            return rbf
        cutoff = self.rbf.cutoff
        return torch.cat([rbf, diff * (cosine_switch(r, cutoff) / cutoff).unsqueeze(-1)], dim=-1)

    def _check_cell(self, cell: Optional[Tensor]) -> None:
        """Periodic cells need relative positions and local attention; cutoff <= half the box."""
        if cell is not None:
            if not self.supports_periodic:
                raise ValueError(
                    "TransIP: a periodic cell needs a model with position_encoding 'relative' and an "
                    "attention_cutoff (absolute coordinates have no meaning in a periodic box)"
                )
            check_cell(cell, self.neighbor_cutoff)

    def _embed_dense(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        mask: Tensor,
        charge: Tensor,
        multiplicity: Tensor,
        padded: bool,
        cell: Optional[Tensor],
    ) -> Tuple[List[Tensor], Tensor]:
        """All-pairs trunk; ``padded=False`` promises every atom is real (skips mask work);
        ``cell`` (3, 3) Å: minimum-image displacements (relative encoding only)."""
        b, n = atomic_numbers.shape
        if padded:
            maskf = mask.to(positions.dtype).unsqueeze(-1)
            n_atoms = maskf.sum(dim=1, keepdim=True).clamp(min=1.0)
            centroid = (positions * maskf).sum(dim=1, keepdim=True) / n_atoms
            centred = (positions - centroid) * maskf
            h = self._tokens(atomic_numbers, centred, charge, multiplicity) * maskf
        else:
            centred = positions - positions.mean(dim=1, keepdim=True)
            h = self._tokens(atomic_numbers, centred, charge, multiplicity)

        diff = positions.unsqueeze(1) - positions.unsqueeze(2)  # (B, N, N, 3): x_j - x_i
        if cell is not None:
            diff = minimum_image(diff, cell)
        r = torch.sqrt((diff * diff).sum(-1) + 1e-12)  # DISTANCE_EPS  # (B, N, N)

        bias_all: Optional[Tensor] = None  # (L, B, H, N, N)
        edge: Optional[Tensor] = None  # (B, N, N, F)
        if self.use_distance_bias:
            features = self._pair_features(diff, r)
            edge = features if self.relative else None
            bias_all = self.bias_projection(features).view(b, n, n, self.n_layers, self.n_heads)
            bias_all = bias_all.permute(3, 0, 4, 1, 2)
        extra: Optional[Tensor] = None  # (B, 1, N, N) or (B, 1, 1, N), same for every layer
        if self.use_attention_cutoff:
            valid = mask.unsqueeze(1).expand(b, n, n) if padded else torch.ones_like(r, dtype=torch.bool)
            extra = log_cosine_envelope(r, self.attention_cutoff, valid).unsqueeze(1)
            if padded:  # padding queries: keep their (unused) rows finite
                extra = extra.masked_fill(~mask.view(b, 1, n, 1), 0.0)
        elif padded:
            key_pad = torch.zeros(b, 1, 1, n, dtype=positions.dtype, device=positions.device)
            extra = key_pad.masked_fill(~mask.view(b, 1, 1, n), -1.0e9)
        if bias_all is None:
            if extra is not None:
                bias_all = extra.unsqueeze(0).expand(self.n_layers, b, self.n_heads, n, n)
        elif extra is not None:
            bias_all = bias_all + extra.unsqueeze(0)

        hidden: List[Tensor] = [h]
        if bias_all is None:
            for block in self.blocks:
                h = block(h, None)
                hidden.append(h)
        else:
            if b == 1:
                bias_all = bias_all.squeeze(1)  # (L, H, N, N)
            # unbind, not indexing: its backward is one stack instead of L zero-fills.
            biases = bias_all.unbind(0)
            for i, block in enumerate(self.blocks):
                h = block(h, biases[i], edge)
                hidden.append(h)
        return hidden, r

    def embed(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        mask: Tensor,
        charge: Tensor,
        multiplicity: Tensor,
        cell: Optional[Tensor] = None,
    ) -> Tuple[List[Tensor], Tensor]:
        """Token embeddings of every layer and the pairwise distances (B, N, N) Å."""
        self._check_cell(cell)
        return self._embed_dense(atomic_numbers, positions, mask, charge, multiplicity, True, cell)

    def _atom_energies(self, h: Tensor, atomic_numbers: Tensor, level: Optional[Tensor]) -> Tensor:
        """Per-atom energies (eV), same leading shape as ``atomic_numbers``: h (B, N, d) or (N, d)
        for one structure; ``level`` (B,) int64 energy head of each structure (None: head 0)."""
        out = self.readout(self.final_norm(h))  # (..., n_levels)
        if self.n_levels == 1:
            return out.squeeze(-1) * self.energy_scale + self.element_energies.to(h.dtype)[atomic_numbers]
        if level is None:
            level = torch.zeros(1 if h.dim() == 2 else h.shape[0], dtype=torch.long, device=h.device)
        if h.dim() == 2:
            head = level[:1]
            atom_energy = out.index_select(-1, head).squeeze(-1)
            refs = self.element_energies.index_select(0, head).squeeze(0)[atomic_numbers]
        else:
            atom_energy = out.gather(-1, level.view(-1, 1, 1).expand(out.shape[0], out.shape[1], 1)).squeeze(-1)
            refs = self.element_energies[level.unsqueeze(1), atomic_numbers]
        return atom_energy * self.energy_scale + refs.to(h.dtype)

    def _uses_neighbor_list(self, b: int, n: int) -> bool:
        """Whether a batch of ``b`` structures of ``n`` atoms runs on the neighbour-list path."""
        return self.use_attention_cutoff and b == 1 and n >= self.neighbor_list_min_atoms

    def _forward_neighbors(
        self, atomic_numbers: Tensor, positions: Tensor, mask: Tensor, charge: Tensor, multiplicity: Tensor,
        cell: Optional[Tensor], static: bool, level: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor], Tensor]:
        """Local attention of one structure (B = 1) over a cell-list neighbour list; ``cell``
        (3, 3) Å or None (open boundaries). ``static``: the capture-safe list with the fitted
        capacity (padding atoms, ``mask`` False, are left out of every row but their own);
        otherwise the data-shaped list (every atom must be real). Returns (energy (1,) eV,
        hidden states, demand (2,) int64 of the static list, zeros otherwise)."""
        z = atomic_numbers[0]
        pos = positions[0]
        n = pos.shape[0]
        keep = mask[0]
        self_index = torch.arange(n, device=pos.device).unsqueeze(1)
        if static:
            neighbors, valid, demand = static_neighbor_list(
                pos, self.neighbor_cutoff, cell, self.max_neighbors, self.max_cell_atoms)
            valid = valid & ((keep[neighbors] & keep.unsqueeze(1)) | (neighbors == self_index))
            keepf = keep.to(pos.dtype).unsqueeze(-1)
            centroid = (pos * keepf).sum(dim=0, keepdim=True) / keepf.sum().clamp(min=1.0)
        else:
            neighbors, valid = neighbor_list(pos, self.neighbor_cutoff, cell, check=False)  # forward checked it
            demand = torch.zeros(2, dtype=torch.long, device=pos.device)
            centroid = pos.mean(dim=0, keepdim=True)
        h = self._tokens(atomic_numbers, (pos - centroid).unsqueeze(0), charge, multiplicity)[0]
        m = neighbors.shape[1]
        diff = pos[neighbors] - pos.unsqueeze(1)  # (N, M, 3): x_j - x_i
        if cell is not None:
            diff = minimum_image(diff, cell)
        r = torch.sqrt((diff * diff).sum(-1) + 1e-12)  # DISTANCE_EPS
        extra = log_cosine_envelope(r, self.attention_cutoff, valid).unsqueeze(-1)  # (N, M, 1)
        edge: Optional[Tensor] = None
        if self.use_distance_bias:
            features = self._pair_features(diff, r)
            edge = features if self.relative else None
            bias = self.bias_projection(features).view(n, m, self.n_layers, self.n_heads)
            bias_all = (bias + extra.unsqueeze(-1)).permute(2, 0, 1, 3)  # (L, N, M, H)
        else:
            bias_all = extra.unsqueeze(0).expand(self.n_layers, n, m, self.n_heads)
        hidden: List[Tensor] = [h.unsqueeze(0)]
        biases = bias_all.unbind(0)
        for i, block in enumerate(self.blocks):
            h = block.forward_neighbors(h, neighbors, biases[i], edge)
            hidden.append(h.unsqueeze(0))
        atom_energy = self._atom_energies(h, z, level)
        if static:
            atom_energy = atom_energy * keep.to(atom_energy.dtype)
        energy = atom_energy.sum().unsqueeze(0)
        pair = self.pair
        if self.use_zbl or pair is not None:
            zj = z[neighbors]
            zi = z.unsqueeze(1)
            pair_mask = valid & (neighbors != self_index)
            # The activity check reads a flag on the host: skipped when capture-safe (the term is
            # then evaluated, exactly zero for pairs beyond its switch-off distance).
            if self.use_zbl and (static or self.zbl.any_active(zi, zj, r, pair_mask)):
                energy = energy + 0.5 * self.zbl.pair_energy(zi, zj, r, pair_mask).sum()
            if pair is not None:
                energy = energy + 0.5 * self.energy_scale * pair.pair_energy(zi, zj, r, pair_mask).sum()
        return energy, hidden, demand

    def _forward_dense(
        self, atomic_numbers: Tensor, positions: Tensor, mask: Tensor, charge: Tensor, multiplicity: Tensor,
        cell: Optional[Tensor], padded: bool, check_zbl: bool, level: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor]]:
        """All-pairs energy (B,) eV and hidden states; ``padded=False`` promises every atom is
        real; ``check_zbl=False`` evaluates the ZBL term without its (host-read) activity check."""
        n = atomic_numbers.shape[1]
        hidden, r = self._embed_dense(atomic_numbers, positions, mask, charge, multiplicity, padded, cell)
        atom_energy = self._atom_energies(hidden[-1], atomic_numbers, level)
        if padded:
            energy = (atom_energy * mask.to(positions.dtype)).sum(dim=1)
        else:
            energy = atom_energy.sum(dim=1)
        pair = self.pair
        if self.use_zbl or pair is not None:
            eye = torch.eye(n, dtype=torch.bool, device=positions.device).unsqueeze(0)
            if padded:
                pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1) & ~eye
            else:
                pair_mask = ~eye
            if self.use_zbl:
                if check_zbl:
                    energy = energy + self.zbl(atomic_numbers, r, pair_mask)
                else:
                    zbl = self.zbl.pair_energy(atomic_numbers.unsqueeze(2), atomic_numbers.unsqueeze(1), r, pair_mask)
                    energy = energy + 0.5 * zbl.sum(dim=(1, 2))
            if pair is not None:
                pair_e = pair.pair_energy(atomic_numbers.unsqueeze(2), atomic_numbers.unsqueeze(1), r, pair_mask)
                energy = energy + 0.5 * self.energy_scale * pair_e.sum(dim=(1, 2))
        return energy, hidden

    def _forward_capture_safe(
        self, atomic_numbers: Tensor, positions: Tensor, mask: Tensor, charge: Tensor, multiplicity: Tensor,
        cell: Optional[Tensor], level: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor]]:
        """``forward`` with static shapes and no host read (CUDA-graph capture): the cell is not
        validated but flagged, the neighbour list has the fitted capacity, and what the structure
        needed goes to ``neighbor_demand`` for :meth:`check_neighbor_capacity` after the call."""
        b, n = atomic_numbers.shape
        if cell is not None and not self.supports_periodic:
            self._check_cell(cell)  # raises: no host read involved
        cell_bad = torch.zeros(1, dtype=torch.long, device=positions.device)
        if cell is not None:
            cell_bad = (~cell_is_valid(cell, self.neighbor_cutoff)).to(torch.long).view(1).to(positions.device)
        if self._uses_neighbor_list(b, n):
            if self.max_neighbors <= 0 or self.max_cell_atoms <= 0:
                raise ValueError(
                    "TransIP: capture-safe evaluation of " + str(n) + " atoms needs a neighbour-list capacity; "
                    "call fit_neighbor_capacity(positions, cell) on a representative structure first"
                )
            energy, hidden, demand = self._forward_neighbors(
                atomic_numbers, positions, mask, charge, multiplicity, cell, True, level)
        else:
            energy, hidden = self._forward_dense(
                atomic_numbers, positions, mask, charge, multiplicity, cell, True, False, level)
            demand = torch.zeros(2, dtype=torch.long, device=positions.device)
        self.neighbor_demand.copy_(torch.cat([demand, cell_bad]))
        return energy, hidden

    @torch.jit.export
    def fit_neighbor_capacity(self, positions: Tensor, cell: Optional[Tensor] = None, margin: float = 0.25) -> None:
        """Set the capture-safe neighbour capacity from one structure: positions (N, 3) Å, cell
        None or (3, 3) Å. Capacity = the structure's need × (1 + ``margin``), rounded up, plus 2.
        Reads the counts on the host: call it outside any captured region."""
        self._check_cell(cell)
        m, k = neighbor_demand(positions, self.neighbor_cutoff, cell)
        self.max_neighbors = int(math.ceil(m * (1.0 + margin))) + 2
        self.max_cell_atoms = int(math.ceil(k * (1.0 + margin))) + 2

    @torch.jit.export
    def neighbor_overflow(self) -> bool:
        """Whether the last capture-safe ``forward`` needed more than the capacity, or was given an
        invalid cell (one host read: call it after the call, outside any captured region)."""
        demand: List[int] = self.neighbor_demand.tolist()
        return demand[0] > self.max_neighbors or demand[1] > self.max_cell_atoms or demand[2] != 0

    @torch.jit.export
    def check_neighbor_capacity(self, cell: Optional[Tensor] = None) -> None:
        """Raise ``ValueError`` if the last capture-safe ``forward`` was wrong for want of capacity or
        was given an invalid ``cell`` (pass the same cell, (3, 3) Å, for the exact reason)."""
        demand: List[int] = self.neighbor_demand.tolist()
        if demand[2] != 0 and cell is not None:
            check_cell(cell, self.neighbor_cutoff)
        if demand[2] != 0:
            raise ValueError("TransIP: the periodic cell of the last evaluation is invalid for the model's "
                             "cutoff (check_cell(cell, cutoff) says why)")
        if demand[0] > self.max_neighbors or demand[1] > self.max_cell_atoms:
            raise ValueError(
                "TransIP: the capture-safe neighbour list overflowed: an atom has " + str(demand[0])
                + " neighbours within " + str(self.neighbor_cutoff) + " Å (capacity " + str(self.max_neighbors)
                + ") and a cell-list cell holds up to " + str(demand[1]) + " atoms (capacity "
                + str(self.max_cell_atoms) + "); the structure is denser than the one the capacity was fitted "
                "on: call fit_neighbor_capacity(positions, cell) on it and evaluate again"
            )

    def forward(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        mask: Tensor,
        charge: Tensor,
        multiplicity: Tensor,
        cell: Optional[Tensor] = None,
        level: Optional[Tensor] = None,
    ) -> Tuple[Tensor, List[Tensor]]:
        """``cell``: (3, 3) Å periodic box, rows = box vectors (OpenMM's reduced form), shared by
        the batch; needs ``supports_periodic``. None: open boundaries. ``level`` (B,) int64: the
        energy head (level of theory) of each structure of a multi-level model (None: head 0). With ``capture_safe`` set
        the evaluation has static shapes and reads nothing on the host (see
        :meth:`_forward_capture_safe`)."""
        if self.capture_safe:
            return self._forward_capture_safe(atomic_numbers, positions, mask, charge, multiplicity, cell, level)
        b, n = atomic_numbers.shape
        self._check_cell(cell)
        if self._uses_neighbor_list(b, n):
            if bool(mask.all()):  # the neighbour list synchronises anyway
                energy, hidden, _ = self._forward_neighbors(
                    atomic_numbers, positions, mask, charge, multiplicity, cell, False, level)
                return energy, hidden
        # Data-dependent shortcuts need a host sync; on CUDA the general (padded) path is
        # taken instead.
        padded = True if positions.is_cuda else not bool(mask.all())
        return self._forward_dense(atomic_numbers, positions, mask, charge, multiplicity, cell, padded, True,
                                   level)


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


def level_index(levels: List[str], level: Optional[str]) -> int:
    """Position of ``level`` in a model's ``energy_levels`` (None: the default, 0); a single-level
    model with no stated level answers 0 for any name it is asked (it has one head)."""
    if level is None or (not levels and level == ""):
        return 0
    if level not in levels:
        raise ValueError(f"the model has no energy head for level of theory {level!r}; it has "
                         f"{', '.join(repr(x) for x in levels) or 'one unnamed level'}")
    return levels.index(level)


def select_level(model: "TransIPModel", level: Optional[str] = None) -> "TransIPModel":
    """A single-level copy of a multi-level ``model``: the energy head and the element references
    of ``level`` (None: the default, the first), on the same shared trunk. Same energies and
    forces as ``model`` called with that head; ``model`` itself is not changed."""
    index = level_index(list(model.energy_levels), level)
    config = ModelConfig.from_dict(dict(model.config_dict))
    config.energy_levels = [model.energy_levels[index]] if model.energy_levels else []
    single = TransIPModel(config).to(model.element_energies.device, model.element_energies.dtype)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.n_levels > 1:
        last = len(model.readout) - 1
        state[f"readout.{last}.weight"] = state[f"readout.{last}.weight"][index:index + 1].clone()
        state[f"readout.{last}.bias"] = state[f"readout.{last}.bias"][index:index + 1].clone()
        state["element_energies"] = state["element_energies"][index].clone()
    single.load_state_dict(state)
    return single.train(model.training)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Evaluation mode with parameters frozen (``requires_grad=False``), in place.

    Forces need gradients with respect to positions only; with trainable parameters,
    every force evaluation (and OpenMM-Torch's ``backward()``) would also compute weight
    gradients, which costs about a third of the time of a small molecule.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
