"""Splits, references, batching, rotations, objectives, config and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import TEST_DATA, TINY_MODEL, write_tiny_config
from transip_openmm.training import metrics
from transip_openmm.training.batching import MaxAtomsBatchSampler, collate, make_batches
from transip_openmm.training.config import ConfigError, config_from_dict, load_config
from transip_openmm.training.dataset import Molecule, MoleculeDataset
from transip_openmm.training.evaluate import rotation_errors
from transip_openmm.training.objectives import (
    SupervisedLoss,
    TrainingModule,
    build_mode,
    equivariance_loss,
    random_rotations,
    rotate,
)
from transip_openmm.training.readers import read_dataset
from transip_openmm.training.references import fit_element_energies
from transip_openmm.training.splits import family_split

from transip_openmm.model import ModelConfig, TransIPModel


def _toy(n_mol=40, seed=0):
    rng = np.random.default_rng(seed)
    true_ref = {1: -13.6, 6: -1030.0, 8: -2040.0}
    mols = []
    for i in range(n_mol):
        n = int(rng.integers(3, 12))
        z = rng.choice([1, 6, 8], size=n)
        e = sum(true_ref[int(k)] for k in z) + rng.normal(0, 0.01) * n
        mols.append(Molecule(z, rng.normal(size=(n, 3)), float(e), rng.normal(size=(n, 3)),
                             family=f"fam{i % 9}", index=i))
    return MoleculeDataset(mols), true_ref


def test_family_split_is_disjoint_and_complete():
    data, _ = _toy()
    train, val = family_split(data, 0.2, seed=1)
    assert sorted(train + val) == list(range(len(data)))
    assert not {data[i].family for i in train} & {data[i].family for i in val}
    assert len(val) >= 0.2 * len(data)
    with pytest.raises(ValueError, match="family"):
        family_split(MoleculeDataset([data[0], data[9]]), 0.5)  # both fam0


def test_reference_energies_recover_truth():
    data, true_ref = _toy(200)
    refs, sigma = fit_element_energies(data)
    for z, e in true_ref.items():
        assert refs[z] == pytest.approx(e, abs=0.01)
    assert refs[7] == 0.0
    assert 0.0 < sigma < 0.05


def test_max_atoms_batches_cover_and_respect_limit():
    n_atoms = np.random.default_rng(0).integers(3, 40, size=200)
    batches = make_batches(n_atoms, 120, shuffle=True, seed=5)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    assert all(len(b) * max(n_atoms[b]) <= 120 for b in batches)
    assert batches == make_batches(n_atoms, 120, shuffle=True, seed=5)
    assert batches != make_batches(n_atoms, 120, shuffle=True, seed=6)
    big = make_batches([200, 3], 50, shuffle=False)
    assert big == [[0], [1]]  # an over-size structure gets its own batch


def test_sampler_shards_are_disjoint_and_equal_length():
    n_atoms = np.random.default_rng(1).integers(3, 30, size=101)
    s0 = MaxAtomsBatchSampler(n_atoms, 90, seed=2, rank=0, world_size=2)
    s1 = MaxAtomsBatchSampler(n_atoms, 90, seed=2, rank=1, world_size=2)
    b0, b1 = s0.batches(3), s1.batches(3)
    assert len(b0) == len(b1) > 0
    assert not {i for b in b0 for i in b} & {i for b in b1 for i in b}
    assert s0.batches(3) != s0.batches(4)


def test_random_rotations_are_haar_rotations():
    r = random_rotations(4000, torch.Generator().manual_seed(0))
    eye = torch.eye(3, dtype=r.dtype).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4000, dtype=r.dtype), atol=1e-12, rtol=0)
    # Haar: E[R] = 0 and the rotated z axis is uniform on the sphere (E[z_z^2] = 1/3)
    assert r.mean(0).abs().max() < 0.05
    assert (r[:, 2, 2] ** 2).mean().item() == pytest.approx(1 / 3, abs=0.02)


def test_rotate_matches_matrix_product():
    r = random_rotations(2, torch.Generator().manual_seed(1))
    v = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(rotate(v, r)[1], v[1] @ r[1].T)


def test_equivariance_loss_prefers_matching_pairs():
    torch.manual_seed(0)
    target = torch.randn(16, 8)
    good = equivariance_loss(target + 0.01 * torch.randn(16, 8), target, 0.1)
    bad = equivariance_loss(target[torch.randperm(16)], target, 0.1)
    assert good["align"] < 1e-3 and good["nce"] < bad["nce"]


@pytest.mark.parametrize("symmetry", ["none", "augment", "transip"])
def test_training_module_losses_and_gradients(symmetry):
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    refs, _ = fit_element_energies(data)
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig.from_dict(TINY_MODEL))
    mode = build_mode(symmetry, {"transform_hidden": 16}, TINY_MODEL["d_model"], TINY_MODEL["n_layers"])
    module = TrainingModule(model, torch.from_numpy(refs), 1.0, mode)
    batch = collate(data, [0, 1, 2]).to("cpu")
    out = module(batch, random_rotations(3, torch.Generator().manual_seed(0)))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert (out["loss_equiv"] > 0) == (symmetry == "transip")
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    if symmetry == "transip":
        assert len(module.mode.transforms) == 1


def test_huber_force_loss_equals_mse_for_small_errors():
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    refs, _ = fit_element_energies(data)
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig.from_dict(TINY_MODEL)).double()
    batch = collate(data, [0, 1])
    mse = TrainingModule(model, torch.from_numpy(refs), 1.0, "none")(batch)
    huber = TrainingModule(model, torch.from_numpy(refs), 1.0, "none",
                           SupervisedLoss(force_loss="huber", huber_delta=1e3))(batch)
    torch.testing.assert_close(huber["loss_force"], mse["loss_force"])
    robust = TrainingModule(model, torch.from_numpy(refs), 1.0, "none",
                            SupervisedLoss(force_loss="huber", huber_delta=0.1))(batch)
    assert robust["loss_force"] < mse["loss_force"]


def test_force_only_records_train_forces_but_not_energies():
    """A force-only record adds to the force loss; its (arbitrary) energy changes nothing."""
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    refs, _ = fit_element_energies(data)
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig.from_dict(TINY_MODEL)).double()
    module = TrainingModule(model, torch.from_numpy(refs), 1.0, "none")
    both = module(collate(data, [0, 1]))
    only_first = module(collate(data, [0]))
    data[1].has_energy = False
    data[1].energy += 1.0e4  # another level of theory: its energy must not count
    mixed = module(collate(data, [0, 1]))
    torch.testing.assert_close(mixed["loss_energy"], only_first["loss_energy"])
    torch.testing.assert_close(mixed["loss_force"], both["loss_force"])
    assert float(mixed["n_struct"]) == 1.0
    assert float(mixed["energy_abs_err"]) == pytest.approx(float(only_first["energy_abs_err"]))


def test_augment_rotates_forces_consistently():
    """With an exactly rotation-invariant energy, augmenting leaves the losses unchanged."""
    data = read_dataset(TEST_DATA / "acac_mini.xyz")
    refs, _ = fit_element_energies(data)
    model = TransIPModel(ModelConfig.from_dict(dict(TINY_MODEL, zbl_repulsion=False))).double()
    with torch.no_grad():  # coordinates enter only through distances: exactly invariant
        for p in model.coord_embedding.parameters():
            p.zero_()
    batch = collate(data, [0, 1])
    rot = random_rotations(2, torch.Generator().manual_seed(3))
    plain = TrainingModule(model, torch.from_numpy(refs), 1.0, "none")(batch, rot)
    aug = TrainingModule(model, torch.from_numpy(refs), 1.0, "augment")(batch, rot)
    torch.testing.assert_close(aug["loss_force"], plain["loss_force"], rtol=1e-9, atol=0)
    torch.testing.assert_close(aug["loss_energy"], plain["loss_energy"], rtol=1e-9, atol=1e-15)


def test_config_rejects_unknown_keys(tmp_path):
    path = write_tiny_config(tmp_path)
    cfg = load_config(path)
    assert cfg.objective.symmetry == "none"
    assert cfg.resolve("acac_mini.xyz") == (TEST_DATA / "acac_mini.xyz").resolve()
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lr_max'"):
        config_from_dict({"data": {"train": ["x.xyz"]}, "optim": {"lr_max": 1.0}})
    with pytest.raises(ConfigError, match="unknown config key .symmetry."):
        config_from_dict({"data": {"train": ["x.xyz"]}, "symmetry": "none"})
    with pytest.raises(ConfigError, match="model"):
        config_from_dict({"data": {"train": ["x.xyz"]}, "model": {"depth": 3}})
    with pytest.raises(ConfigError, match="symmetry"):
        config_from_dict({"data": {"train": ["x.xyz"]}, "objective": {"symmetry": "equivariant"}})


def test_example_configs_load():
    from training_helpers import REPO

    paths = sorted((REPO / "training" / "configs").glob("*.yaml"))
    assert {"omol25_sample.yaml", "acac.yaml"} <= {p.name for p in paths}
    recipes = {"omol25_4m_8gpu.yaml"}  # documented, not run here: data paths name the user's OMol25 copy
    generated = {"scaling_xtb_corpus.yaml"}  # trains on the output of `transip data generate` (its header)
    for path in paths:
        cfg = load_config(path)
        if path.name in recipes:
            continue
        first = cfg.resolve(cfg.data.train[0])  # shared reference data, or a small file shipped here
        if path.name in generated:
            assert first.parent == REPO / "data_runs" and cfg.data.level_of_theory == "GFN2-xTB"
            continue
        assert first.parts[-4:-2] == ("shared", "data") or (first.is_relative_to(REPO) and first.exists())


def test_metrics_known_values():
    assert metrics.energy_mae_meV([1.0, 2.0], [1.001, 1.998]) == pytest.approx(1.5)
    assert metrics.energy_mae_meV_per_atom([1.0, 2.0], [1.002, 1.998], [2, 1]) == pytest.approx(1.5)
    f_ref = [np.array([[1.0, 0, 0], [0, 2.0, 0]])]
    f_pred = [np.array([[1.0, 0.003, 0], [0, 2.0, -0.003]])]
    assert metrics.force_mae_meV_per_A(f_pred, f_ref) == pytest.approx(1.0)
    assert metrics.force_rmse_meV_per_A(f_pred, f_ref) == pytest.approx(np.sqrt(2 * 9 / 6))
    assert metrics.force_cos_mean([-f_ref[0]], f_ref) == pytest.approx(-1.0)
    h = np.array([[3.0, 4.0], [1.0, 0.0]])
    assert metrics.latent_equivariance_err_rel(h, h) == 0.0
    assert metrics.latent_equivariance_err_rel(np.zeros_like(h), h) == pytest.approx(1.0)
    assert metrics.rotation_energy_std_meV(np.array([[1.0, 1.002], [0.0, 0.0]])) == pytest.approx(0.5)


def test_rotation_errors_zero_for_invariant_and_positive_for_fixed_frame():
    data = read_dataset(TEST_DATA / "acac_mini.xyz")

    def invariant(batch):  # pair potential: E = sum_{i<j} r_ij^2 / 2, F = -dE/dx
        pos = batch.positions.clone().requires_grad_(True)
        d = pos.unsqueeze(2) - pos.unsqueeze(1)
        m = (batch.mask.unsqueeze(2) & batch.mask.unsqueeze(1)).double()
        e = 0.25 * ((d * d).sum(-1) * m).sum((1, 2))
        f = -torch.autograd.grad(e.sum(), pos)[0]
        return e.detach().numpy(), f.numpy()

    def fixed_frame(batch):  # constant force along x: not equivariant
        f = torch.zeros_like(batch.positions)
        f[..., 0] = 1.0
        return (batch.positions[..., 0] * batch.mask).sum(1).numpy(), (f * batch.mask[..., None]).numpy()

    ok = rotation_errors(invariant, data, n_structures=3, n_rotations=4)
    assert ok["rot_energy_std_meV"] < 1e-6 and ok["rot_force_err_rel"] < 1e-10
    bad = rotation_errors(fixed_frame, data, n_structures=3, n_rotations=4)
    assert bad["rot_energy_std_meV"] > 1.0 and bad["rot_force_err_rel"] > 0.5


def test_force_only_files_join_training_only(tmp_path):
    """``data.force_only``: added to training, out of the split, the reference fit and validation."""
    from transip_openmm.training.trainer import Trainer

    cfg = config_from_dict({
        "data": {"root": str(TEST_DATA), "train": ["acac_mini.xyz"], "val": ["acac_mini.xyz"],
                 "force_only": ["omol25_mini.aselmdb"], "max_atoms_per_batch": 4000},
        "model": dict(TINY_MODEL),
        "optim": {"max_steps": 1},
        "run": {"progress": False, "threads": 1},
    })
    main_data = read_dataset(TEST_DATA / "acac_mini.xyz")
    extra = read_dataset(TEST_DATA / "omol25_mini.aselmdb")
    trainer = Trainer(cfg, tmp_path / "run")
    train, val = trainer.data.train, trainer.data.val
    assert len(train) == len(main_data) + len(extra)
    assert sum(m.has_energy for m in train) == len(main_data)
    assert all(m.has_energy for m in val) and len(val) == len(main_data)
    refs, _ = fit_element_energies(main_data)
    np.testing.assert_allclose(trainer.refs.numpy(), refs)
    assert set(trainer.data.elements) >= set(extra.elements)
