"""Symmetry modes: the registry, and each loss term's defining property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from training_helpers import TEST_DATA, TINY_MODEL
from transip_openmm.training.batching import collate
from transip_openmm.training.config import ConfigError, config_from_dict
from transip_openmm.training.dataset import Molecule, MoleculeDataset
from transip_openmm.training.objectives import TrainingModule, random_rotations
from transip_openmm.training.readers import read_dataset
from transip_openmm.training.references import fit_element_energies
from transip_openmm.training.symmetry_modes import (
    SYMMETRY_MODES,
    Augment,
    GatedTransform,
    GroupTransform,
    LegacyTransform,
    TransIP,
    alignment,
    build_mode,
    energy_consistency,
    info_nce,
    mode_from_checkpoint,
    negative_mask,
    rotate,
)

from transip_openmm.model import ModelConfig, TransIPModel

D = 12


def _invariant_model() -> TransIPModel:
    """Coordinates enter only through distances (no ZBL, coordinate projection zeroed): E and h invariant."""
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig.from_dict(dict(TINY_MODEL, zbl_repulsion=False))).double()
    with torch.no_grad():
        for p in model.coord_embedding.parameters():
            p.zero_()
    return model


def _methane() -> MoleculeDataset:
    """Two exact tetrahedra (CH4): the four H are symmetry-equivalent."""
    h = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) * 0.63
    mols = [Molecule(np.array([6, 1, 1, 1, 1]), np.vstack([np.zeros(3), h * s]), -40.0, np.zeros((5, 3)),
                     family=f"m{i}", index=i) for i, s in enumerate((1.0, 1.1))]
    return MoleculeDataset(mols)


@pytest.mark.parametrize("transform", [GatedTransform(D, 16), GroupTransform(D, 3)])
def test_transform_is_identity_at_identity_rotation(transform):
    h = torch.randn(7, D)
    eye = torch.eye(3).expand(7, 3, 3)
    torch.testing.assert_close(transform(h, eye), h, rtol=0, atol=1e-6)


def test_legacy_transform_is_not_identity():
    """The first T_ψ (kept for old checkpoints) lacks T(h, I) = h: the pitfall the new ones fix."""
    h = torch.randn(7, D)
    assert (LegacyTransform(D, 16)(h, torch.eye(3).expand(7, 3, 3)) - h).abs().max() > 1e-3


def test_group_transform_composes():
    torch.manual_seed(1)
    t = GroupTransform(D, 3)
    with torch.no_grad():
        t.weight.add_(0.3 * torch.randn(D, D))
    h = torch.randn(5, D)
    r1, r2 = random_rotations(5), random_rotations(5)
    t = t.double()
    torch.testing.assert_close(t(t(h, r1), r2), t(h, r2 @ r1))


def test_equivalent_atoms_are_never_negatives():
    numbers = torch.tensor([6, 1, 1, 1, 6, 1])
    molecule = torch.tensor([0, 0, 0, 0, 1, 1])
    allowed = negative_mask(numbers, molecule, "exclude_equivalent")
    for i in range(6):
        for j in range(6):
            if i != j and numbers[i] == numbers[j] and molecule[i] == molecule[j]:
                assert not allowed[i, j]
    assert allowed.diagonal().all() and allowed[1, 5] and allowed[0, 1]
    assert not negative_mask(numbers, molecule, "other_molecules")[1, 0]
    # the loss of anchor 1 does not change when an equivalent atom's target moves
    torch.manual_seed(0)
    pred, target = torch.randn(6, D), torch.randn(6, D)
    moved = target.clone()
    moved[2] = pred[1]  # an equivalent H made to look exactly like the anchor
    single = [info_nce(pred[1:2], t[[1, 0, 4, 5]], 0.1) for t in (target, moved)]
    full = [info_nce(pred, t, 0.1, allowed) for t in (target, moved)]
    assert single[0] == single[1]
    row = lambda t: torch.nn.functional.cross_entropy(  # noqa: E731
        (torch.nn.functional.normalize(pred, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T / 0.1)
        .masked_fill(~allowed, -math.inf)[1:2], torch.tensor([1]))
    torch.testing.assert_close(row(target), row(moved))
    assert full[0] != full[1]  # (anchor 2's own row changes, as it should)


def test_invariant_embedding_with_identity_transform_is_at_the_minimum():
    """An exactly invariant model with T_ψ ≡ identity: alignment 0 with zero gradient, InfoNCE not
    penalised by equivalent atoms (four equal H embeddings), energy consistency 0."""
    model = _invariant_model()
    data = _methane()
    batch = collate(data, [0])
    rot = random_rotations(1, torch.Generator().manual_seed(2))
    scores = {}
    for negatives in ("all", "exclude_equivalent"):
        mode = build_mode("transip", {"transform": "mlp", "transform_hidden": 8, "negatives": negatives,
                                      "consistency_weight": 1.0, "temperature": 0.05},
                          TINY_MODEL["d_model"], TINY_MODEL["n_layers"]).double()
        with torch.no_grad():  # T_ψ ≡ identity
            mode.transforms[0].mlp[-1].weight.zero_()
            mode.transforms[0].mlp[-1].bias.zero_()
        positions, _ = mode.inputs(batch, rot)
        energy, hidden = model(batch.numbers, positions, batch.mask, batch.charge, batch.multiplicity)
        out = mode.extra_loss(model, batch, rot, positions, energy, hidden, 1.0)
        assert float(out.parts["align"]) < 1e-20
        assert float(out.parts["consistency"]) < 1e-20
        scores[negatives] = float(out.parts["nce"])
    # with every atom a negative, the four equal H embeddings cost at least log 4 for each H anchor
    # with every atom a negative, each of the four H anchors has three negatives exactly as close as
    # its positive: at least log 4 for 4 of the 5 atoms, whatever the embedding
    assert scores["all"] >= 0.8 * math.log(4) - 1e-9
    assert scores["exclude_equivalent"] < scores["all"] - 0.5


def test_alignment_zero_iff_equal_with_zero_gradient():
    t = torch.randn(9, D)
    p = t.clone().requires_grad_(True)
    for kind in ("mse", "cosine"):
        loss = alignment(p, t, kind)
        (grad,) = torch.autograd.grad(loss, p)
        assert float(loss) < 1e-6 and float(grad.abs().max()) < 1e-6
        assert float(alignment(t + 0.1 * torch.randn(9, D), t, kind)) > 1e-4


def test_energy_consistency_zero_for_invariant_model_positive_otherwise():
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    batch = collate(data, [0, 1, 2])
    rot = random_rotations(3, torch.Generator().manual_seed(4))
    model = _invariant_model()
    e = model(batch.numbers, batch.positions, batch.mask, batch.charge, batch.multiplicity)[0]
    e_rot = model(batch.numbers, rotate(batch.positions, rot), batch.mask, batch.charge, batch.multiplicity)[0]
    assert float(energy_consistency(e, e_rot, batch.n_atoms, 0.01)) < 1e-20
    torch.manual_seed(0)
    plain = TransIPModel(ModelConfig.from_dict(TINY_MODEL)).double()
    e = plain(batch.numbers, batch.positions, batch.mask, batch.charge, batch.multiplicity)[0]
    e_rot = plain(batch.numbers, rotate(batch.positions, rot), batch.mask, batch.charge, batch.multiplicity)[0]
    assert float(energy_consistency(e, e_rot, batch.n_atoms, 0.01)) > 1e-8


def test_augment_rotates_forces_as_r_times_f():
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    batch = collate(data, [0, 1])
    rot = random_rotations(2, torch.Generator().manual_seed(5))
    positions, forces = Augment().inputs(batch, rot)
    for b in range(2):
        for n in range(int(batch.n_atoms[b])):
            torch.testing.assert_close(forces[b, n], rot[b] @ batch.forces[b, n])
            torch.testing.assert_close(positions[b, n], rot[b] @ batch.positions[b, n])


@pytest.mark.parametrize("name", SYMMETRY_MODES)
def test_every_mode_trains(name):
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    refs, _ = fit_element_energies(data)
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig.from_dict(TINY_MODEL))
    mode = build_mode(name, {"transform_hidden": 16, "vector_channels": 4}, TINY_MODEL["d_model"],
                      TINY_MODEL["n_layers"])
    module = TrainingModule(model, torch.from_numpy(refs), 1.0, mode)
    out = module(collate(data, [0, 1, 2]).to("cpu"), random_rotations(3, torch.Generator().manual_seed(0)))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and (float(out["loss_equiv"]) > 0) == isinstance(mode, TransIP)
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_old_configs_and_checkpoints_load():
    cfg = config_from_dict({"data": {"train": ["x.xyz"]}, "objective": {"symmetry": "transip", "equiv_weight": 1.0,
                                                                        "layers": [-1], "temperature": 0.1}})
    assert cfg.objective.symmetry == "transip"
    with pytest.raises(ConfigError, match="negatives"):
        config_from_dict({"data": {"train": ["x.xyz"]}, "objective": {"symmetry": "transip", "negatives": "some"}})
    legacy = torch.nn.ModuleList([LegacyTransform(TINY_MODEL["d_model"], 24)])
    checkpoint = {"symmetry": "transip", "transforms_state": legacy.state_dict(),
                  "model_config": dict(TINY_MODEL),
                  "config": {"objective": {"symmetry": "transip", "equiv_weight": 0.1, "layers": [-1],
                                           "temperature": 0.1, "transform_hidden": 24}}}
    mode = mode_from_checkpoint(checkpoint)
    assert mode.name == "transip_legacy" and isinstance(mode.transforms[0], LegacyTransform)
    torch.testing.assert_close(mode.transforms[0].mlp[0].weight, legacy[0].mlp[0].weight)
    plain = {"symmetry": "augment", "transforms_state": {}, "model_config": TINY_MODEL}
    assert mode_from_checkpoint(plain).name == "augment"
