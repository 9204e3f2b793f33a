"""Symmetry modes: how training treats rotations, one object per mode.

A mode decides the inputs of the supervised loss (the structure as given, or rotated with
its forces) and adds its own loss terms, computed from a second view of each molecule.
It owns its state (the transformation network T_ψ of the TransIP modes), saved in
checkpoints as ``transforms_state``. Modes are built from the ``objective`` config section
by name through :data:`REGISTRY`; named variants are TransIP with preset settings, and
any preset can be overridden by the config's keys.

* ``none``: the structures as given.
* ``augment``: each structure randomly rotated (positions and forces), every step.
* ``transip`` and its variants (:data:`TRANSIP_PRESETS`): a Haar-random rotation per
  molecule relates two views; h_A, h_B are token embeddings at the configured layer(s);
  T_ψ(h_A, Q) predicts h_B (Q the rotation from view A to view B); the loss is an
  alignment term plus InfoNCE over atoms (temperature τ), weighted by λ, plus optionally
  an energy-consistency term (E_A − E_B)². T_ψ is used in training only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transip_openmm.training.batching import Batch

from transip_openmm.model import TransIPModel

TRANSFORMS = ("legacy", "mlp", "group")
NEGATIVES = ("all", "exclude_equivalent", "other_molecules")
ALIGNMENTS = ("cosine", "mse")


def rotate(vectors: Tensor, rotations: Tensor) -> Tensor:
    """Apply per-molecule rotations: vectors (B, N, 3), rotations (B, 3, 3) -> R·v (B, N, 3)."""
    return torch.einsum("bij,bnj->bni", rotations.to(vectors.dtype), vectors)


# --------------------------------------------------------------------------- T_ψ
class LegacyTransform(nn.Module):
    """The first T_ψ: h + MLP([LN(h), vec(R)]). No group structure: T(h, I) ≠ h in general.

    h: (M, d); rot: (M, 3, 3) -> (M, d). Kept so that old checkpoints load.
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model + 9, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, d_model),
        )

    def forward(self, h: Tensor, rot: Tensor) -> Tensor:
        return h + self.mlp(torch.cat([self.norm(h), rot.reshape(-1, 9).to(h.dtype)], dim=-1))


class GatedTransform(nn.Module):
    """T(h, R) = h + Σ_ab (R − I)_ab · M_ab(LN h): an MLP whose effect vanishes at R = I exactly.

    h: (M, d); rot: (M, 3, 3) -> (M, d).
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.d = d_model
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Linear(hidden, 9 * d_model))

    def forward(self, h: Tensor, rot: Tensor) -> Tensor:
        eye = torch.eye(3, dtype=h.dtype, device=h.device)
        delta = (rot.to(h.dtype) - eye).reshape(-1, 9)  # (M, 9), exactly 0 at R = I
        m = self.mlp(self.norm(h)).view(-1, 9, self.d)
        return h + torch.einsum("ma,mad->md", delta, m)


class GroupTransform(nn.Module):
    """A representation of SO(3): z = W h, the first 3k channels of z are k vectors that R rotates,
    the rest are invariant; T(h, R) = W⁻¹ [R v; s] = h + W⁻¹ [(R − I) v; 0].

    Exact group structure: T(h, I) = h and T(T(h, R₁), R₂) = T(h, R₂R₁). W (d, d) is learned,
    initialised to the identity. h: (M, d); rot: (M, 3, 3) -> (M, d).
    """

    def __init__(self, d_model: int, vector_channels: int) -> None:
        super().__init__()
        if not 0 < 3 * vector_channels <= d_model:
            raise ValueError(f"vector_channels must be in 1..{d_model // 3}, got {vector_channels}")
        self.k = int(vector_channels)
        self.weight = nn.Parameter(torch.eye(d_model))

    def forward(self, h: Tensor, rot: Tensor) -> Tensor:
        w = self.weight.to(h.dtype)
        z = h @ w.transpose(0, 1)
        v = z[:, : 3 * self.k].reshape(-1, self.k, 3)
        dv = torch.einsum("mij,mkj->mki", rot.to(h.dtype), v) - v
        dz = torch.cat([dv.reshape(-1, 3 * self.k), torch.zeros_like(z[:, 3 * self.k:])], dim=1)
        return h + torch.linalg.solve(w, dz.transpose(0, 1)).transpose(0, 1)


def make_transform(kind: str, d_model: int, hidden: int, vector_channels: int) -> nn.Module:
    """One T_ψ of ``kind`` (``legacy | mlp | group``)."""
    if kind == "legacy":
        return LegacyTransform(d_model, hidden)
    if kind == "mlp":
        return GatedTransform(d_model, hidden)
    if kind == "group":
        return GroupTransform(d_model, vector_channels)
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {kind!r}")


# --------------------------------------------------------------------------- loss terms
def negative_mask(numbers: Tensor, molecule: Tensor, negatives: str) -> Tensor:
    """(M, M) bool: True where atom j may serve as a negative (or the positive, j = i) of atom i.

    numbers, molecule: (M,) atomic number and molecule index of each atom. ``all``: every
    atom; ``exclude_equivalent``: not atoms of the same element in the same molecule (the
    three H of a methyl are not told apart by an invariant embedding, and must not be);
    ``other_molecules``: only atoms of other molecules.
    """
    same_mol = molecule.unsqueeze(0) == molecule.unsqueeze(1)
    eye = torch.eye(numbers.shape[0], dtype=torch.bool, device=numbers.device)
    if negatives == "all":
        return torch.ones_like(same_mol)
    if negatives == "exclude_equivalent":
        same_el = numbers.unsqueeze(0) == numbers.unsqueeze(1)
        return ~(same_mol & same_el) | eye
    if negatives == "other_molecules":
        return ~same_mol | eye
    raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")


def info_nce(pred: Tensor, target: Tensor, temperature: float, allowed: Optional[Tensor] = None) -> Tensor:
    """InfoNCE over M atoms on unit vectors: pred, target (M, d); allowed (M, M) bool or None."""
    zp = F.normalize(pred, dim=-1)
    zt = F.normalize(target, dim=-1)
    logits = zp @ zt.transpose(0, 1) / temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -math.inf)
    labels = torch.arange(pred.shape[0], device=pred.device)
    return F.cross_entropy(logits, labels)


def alignment(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """``cosine``: mean 1 − cos; ``mse``: mean ‖p − t‖² / mean ‖t‖² (scale-aware). 0 iff p = t."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    if kind == "mse":
        return (pred - target).pow(2).sum(-1).mean() / target.detach().pow(2).sum(-1).mean().clamp(min=1e-12)
    raise ValueError(f"align must be one of {ALIGNMENTS}, got {kind!r}")


def equivariance_loss(pred: Tensor, target: Tensor, temperature: float) -> Dict[str, Tensor]:
    """The first objective's terms: alignment (1 − cosine) and InfoNCE over all M atoms."""
    return {"align": alignment(pred, target, "cosine"), "nce": info_nce(pred, target, temperature)}


def energy_consistency(energy_a: Tensor, energy_b: Tensor, n_atoms: Tensor, norm: float) -> Tensor:
    """mean(((E_A − E_B) / n / norm)²) over molecules: 0 for an invariant model. (B,) inputs."""
    return (((energy_a - energy_b) / n_atoms.to(energy_a.dtype)) / norm).pow(2).mean()


# --------------------------------------------------------------------------- modes
def energy_level(model: TransIPModel, batch: Batch) -> Optional[Tensor]:
    """The energy head of each structure of ``batch`` for a multi-level ``model`` (None otherwise)."""
    return batch.level if model.n_levels > 1 else None


@dataclass
class ModeOutput:
    """The second-view terms of one batch: ``loss`` (weighted, added to the total) and parts."""

    loss: Tensor
    parts: Dict[str, Tensor]


class SymmetryMode(nn.Module):
    """Base: no rotation, no extra loss. Subclasses override :meth:`inputs` and :meth:`extra_loss`."""

    name = "none"
    needs_rotations = False

    def inputs(self, batch: Batch, rotations: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Positions (B, N, 3) and reference forces (B, N, 3) of the supervised view."""
        return batch.positions, batch.forces

    def extra_loss(self, model: TransIPModel, batch: Batch, rotations: Optional[Tensor], positions: Tensor,
                   energy: Tensor, hidden: List[Tensor], energy_norm: float) -> Optional[ModeOutput]:
        """Terms beyond the supervised loss (None: none). ``positions``: the supervised view's."""
        return None


class NoSymmetry(SymmetryMode):
    """``none``: the structures as given."""


class Augment(SymmetryMode):
    """``augment``: the supervised loss on R·x with forces R·F."""

    name = "augment"
    needs_rotations = True

    def inputs(self, batch: Batch, rotations: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if rotations is None:
            raise ValueError("augment needs the step's rotations")
        return rotate(batch.positions, rotations), rotate(batch.forces, rotations)


@dataclass
class TransIPSettings:
    """Resolved settings of a TransIP mode (presets in :data:`TRANSIP_PRESETS`).

    ``supervise_rotated``: supervised loss on R·x (augmentation underneath); ``transform``:
    T_ψ kind; ``negatives``: :func:`negative_mask`; ``align``: :func:`alignment`;
    ``equiv_weight`` λ; ``temperature`` τ; ``layers`` hidden-state indices (0 = input tokens,
    negative from the end); ``consistency_weight``: weight of (E(Rx) − E(x))²;
    ``vector_channels`` k of the group T_ψ; ``transform_hidden`` width of the MLP T_ψ.
    """

    supervise_rotated: bool = True
    transform: str = "group"
    negatives: str = "exclude_equivalent"
    align: str = "mse"
    equiv_weight: float = 1.0
    temperature: float = 0.1
    layers: Tuple[int, ...] = (-1,)
    consistency_weight: float = 0.0
    vector_channels: int = 8
    transform_hidden: int = 256

    def check(self) -> None:
        for value, allowed, key in ((self.transform, TRANSFORMS, "transform"), (self.negatives, NEGATIVES, "negatives"),
                                    (self.align, ALIGNMENTS, "align")):
            if value not in allowed:
                raise ValueError(f"objective.{key} must be one of {allowed}, got {value!r}")
        if self.temperature <= 0 or self.equiv_weight < 0 or self.consistency_weight < 0:
            raise ValueError("objective: temperature must be > 0, equiv_weight and consistency_weight ≥ 0")


class TransIP(SymmetryMode):
    """TransIP: T_ψ(h_A, Q) ≈ h_B for two views related by a Haar-random rotation Q per molecule.

    With ``supervise_rotated`` view A is R·x (supervised, as in ``augment``) and view B is x
    (Q = Rᵀ); otherwise view A is x and view B is R·x (Q = R), the first objective's way.
    View B costs one more forward pass (no force backward through it).
    """

    name = "transip"
    needs_rotations = True

    def __init__(self, settings: TransIPSettings, d_model: int, n_layers: int, name: str = "transip") -> None:
        super().__init__()
        settings.check()
        self.name = name
        self.settings = settings
        n_hidden = n_layers + 1
        self.layers: List[int] = sorted({int(layer) % n_hidden for layer in settings.layers})
        self.transforms = nn.ModuleList([
            make_transform(settings.transform, d_model, settings.transform_hidden, settings.vector_channels)
            for _ in self.layers
        ])

    def inputs(self, batch: Batch, rotations: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if rotations is None:
            raise ValueError(f"{self.name} needs the step's rotations")
        if self.settings.supervise_rotated:
            return rotate(batch.positions, rotations), rotate(batch.forces, rotations)
        return batch.positions, batch.forces

    def relative_rotation(self, rotations: Tensor) -> Tensor:
        """Q (B, 3, 3): view B = Q · view A."""
        return rotations.transpose(1, 2) if self.settings.supervise_rotated else rotations

    def extra_loss(self, model: TransIPModel, batch: Batch, rotations: Optional[Tensor], positions: Tensor,
                   energy: Tensor, hidden: List[Tensor], energy_norm: float) -> ModeOutput:
        assert rotations is not None
        s = self.settings
        q = self.relative_rotation(rotations).to(energy.dtype)
        pos_b = rotate(positions.detach(), q)
        energy_b, hidden_b = model(batch.numbers, pos_b, batch.mask, batch.charge, batch.multiplicity, None,
                                   energy_level(model, batch))
        mask = batch.mask
        q_atoms = q.unsqueeze(1).expand(-1, mask.shape[1], 3, 3)[mask]  # (M, 3, 3)
        numbers = batch.numbers[mask]
        molecule = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
        allowed = None if s.negatives == "all" else negative_mask(numbers, molecule, s.negatives)
        align = torch.zeros((), dtype=energy.dtype, device=energy.device)
        nce = torch.zeros_like(align)
        for transform, layer in zip(self.transforms, self.layers):
            pred = transform(hidden[layer][mask], q_atoms)
            target = hidden_b[layer][mask]
            align = align + alignment(pred, target, s.align) / len(self.layers)
            nce = nce + info_nce(pred, target, s.temperature, allowed) / len(self.layers)
        consistency = energy_consistency(energy, energy_b, batch.n_atoms, energy_norm)
        loss = s.equiv_weight * (align + nce) + s.consistency_weight * consistency
        return ModeOutput(loss, {"align": align.detach(), "nce": nce.detach(), "consistency": consistency.detach()})

    @torch.no_grad()
    def latent_pairs(self, model: TransIPModel, batch: Batch, rotations: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """Per layer, (T_ψ(h, R), h_R) over every token, each (M, d): h of x, h_R of R·x."""
        mask = batch.mask
        hidden, _ = model.embed(batch.numbers, batch.positions, mask, batch.charge, batch.multiplicity)
        hidden_r, _ = model.embed(batch.numbers, rotate(batch.positions, rotations), mask, batch.charge,
                                  batch.multiplicity)
        rot = rotations.to(batch.positions.dtype).unsqueeze(1).expand(-1, mask.shape[1], 3, 3)[mask]
        return [(transform(hidden[layer][mask], rot), hidden_r[layer][mask])
                for transform, layer in zip(self.transforms, self.layers)]


#: Named TransIP variants: preset settings (any can be overridden by the config's keys).
TRANSIP_PRESETS: Dict[str, Dict[str, Any]] = {
    # the best of the ablation (benchmarks/README.md, "TransIP objective"): supervised on R·x,
    # group T_ψ, equivalent atoms never negatives, MSE alignment, λ 1, energy consistency
    "transip": {"consistency_weight": 1.0},
    # the same without the energy-consistency term
    "transip_group": {},
    # the first objective: supervised on x only, T_ψ without group structure, every atom a
    # negative, cosine alignment, λ 0.1 (old configs set equiv_weight themselves)
    "transip_legacy": {"supervise_rotated": False, "transform": "legacy", "negatives": "all", "align": "cosine",
                       "equiv_weight": 0.1},
    # + the supervised loss on R·x, otherwise the first objective
    "transip_aug_legacy": {"transform": "legacy", "negatives": "all", "align": "cosine", "equiv_weight": 0.1},
    # transip_group with T_ψ an MLP with T(h, I) = h instead of the group T_ψ
    "transip_mlp": {"transform": "mlp"},
    # transip_group with every atom of the batch a negative (to isolate the negatives' effect)
    "transip_all_negatives": {"negatives": "all"},
    # transip_group with per-molecule negatives (atoms of other molecules only)
    "transip_molecule_negatives": {"negatives": "other_molecules"},
    # transip_group on the input tokens and the last block
    "transip_layers": {"layers": (0, -1)},
}

#: objective-config keys that override a preset when set (not None)
SETTING_KEYS = tuple(f.name for f in dataclasses.fields(TransIPSettings))


def transip_settings(name: str, overrides: Mapping[str, Any]) -> TransIPSettings:
    """The preset of variant ``name`` with the non-None ``overrides`` applied."""
    values = dict(TRANSIP_PRESETS[name])
    values.update({k: v for k, v in overrides.items() if k in SETTING_KEYS and v is not None})
    if "layers" in values:
        values["layers"] = tuple(int(x) for x in values["layers"])
    return TransIPSettings(**values)


Builder = Callable[[str, Mapping[str, Any], int, int], SymmetryMode]


def _transip_builder(name: str, objective: Mapping[str, Any], d_model: int, n_layers: int) -> SymmetryMode:
    return TransIP(transip_settings(name, objective), d_model, n_layers, name)


REGISTRY: Dict[str, Builder] = {
    "none": lambda name, objective, d, n: NoSymmetry(),
    "augment": lambda name, objective, d, n: Augment(),
    **{name: _transip_builder for name in TRANSIP_PRESETS},
}
SYMMETRY_MODES = tuple(REGISTRY)


def build_mode(name: str, objective: Optional[Mapping[str, Any]], d_model: int, n_layers: int) -> SymmetryMode:
    """The mode ``name`` built from the ``objective`` section (a mapping; None: the preset)."""
    if name not in REGISTRY:
        raise ValueError(f"symmetry must be one of {SYMMETRY_MODES}, got {name!r}")
    return REGISTRY[name](name, dict(objective or {}), d_model, n_layers)


def is_legacy_state(state: Mapping[str, Tensor]) -> bool:
    """True for the ``transforms_state`` of a checkpoint written before modes were objects."""
    return bool(state) and all(k.split(".")[0].isdigit() for k in state)


def mode_from_checkpoint(checkpoint: Mapping[str, Any]) -> SymmetryMode:
    """The checkpoint's mode with its saved state (old ``transip`` checkpoints: ``transip_legacy``)."""
    config = dict(checkpoint.get("config") or {})
    objective = dict(config.get("objective") or {})
    name = str(checkpoint.get("symmetry") or objective.get("symmetry") or "none")
    model_config = checkpoint["model_config"]
    state = dict(checkpoint.get("transforms_state") or {})
    if is_legacy_state(state):
        name = "transip_legacy"
        objective = {k: v for k, v in objective.items() if k in ("equiv_weight", "temperature", "layers",
                                                                  "transform_hidden")}
        state = {f"transforms.{k}": v for k, v in state.items()}
    mode = build_mode(name, objective, int(model_config["d_model"]), int(model_config["n_layers"]))
    mode.load_state_dict(state)
    return mode
