"""Multi-fidelity training: one energy head and one set of element references per level of theory
on a shared trunk; the export picks the level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_helpers import TEST_DATA, TINY_MODEL, write_tiny_config
from transip_openmm.training.batching import collate
from transip_openmm.training.checkpoint import TrainingCheckpoint
from transip_openmm.training.config import ConfigError, load_config
from transip_openmm.training.dataset import DataError, Molecule, MoleculeDataset
from transip_openmm.training.objectives import reference_sum
from transip_openmm.training.readers import read_dataset
from transip_openmm.training.references import N_Z, data_statistics
from transip_openmm.training.trainer import Trainer

from transip_openmm.artifacts import load_checkpoint, model_from_checkpoint, read_exported_metadata
from transip_openmm.export.exporter import export_checkpoint
from transip_openmm.model import ModelConfig, TransIPModel, compute_forces, select_level
from transip_openmm.system_spec import SystemSpec
from transip_openmm.units import EV_TO_KJ_PER_MOL

ELEMENTS = (1, 6, 7, 8)
REFS_A = {1: -13.6, 6: -1030.0, 7: -1486.0, 8: -2043.0}  # eV, ωB97M-V-like magnitudes
REFS_B = {1: -10.7, 6: -48.8, 7: -71.0, 8: -103.0}  # eV, GFN2-xTB-like magnitudes
SHIFT = {1: -0.5, 6: 2.0, 8: 0.25}  # eV per atom, level B minus level A, for acac (C5H8O2)


def _synthetic(level: str, refs: dict, n: int, seed: int) -> list:
    """Molecules of random composition whose energy is Σ n_Z ref_Z plus 10 meV noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        numbers = np.concatenate([[z] * int(rng.integers(1, 5)) for z in ELEMENTS]).astype(np.int64)
        energy = sum(refs[int(z)] for z in numbers) + rng.normal(0.0, 0.01)
        out.append(Molecule(numbers, rng.normal(size=(len(numbers), 3)), energy, np.zeros((len(numbers), 3)),
                            family=f"{level}{i}", level_of_theory=level))
    return out


def test_each_level_gets_its_own_references():
    data = MoleculeDataset(_synthetic("A", REFS_A, 40, 0) + _synthetic("B", REFS_B, 40, 1))
    stats = data_statistics(data, levels={"A": 0, "B": 1})
    assert stats.element_energies.shape == (2, N_Z)
    for head, refs in enumerate((REFS_A, REFS_B)):
        for z, ref in refs.items():
            assert stats.element_energies[head, z] == pytest.approx(ref, abs=0.02)
    assert stats.per_atom_std < 0.01  # each level's residual is its noise only
    pooled = data_statistics(data)  # one set for both levels: the residuals are the level gap
    assert pooled.element_energies.shape == (N_Z,) and pooled.per_atom_std > 100 * stats.per_atom_std


def test_batch_targets_subtract_the_references_of_each_structure_level():
    mols = _synthetic("A", REFS_A, 1, 0) + _synthetic("B", REFS_B, 1, 1)
    batch = collate(MoleculeDataset(mols), [0, 1], levels={"A": 0, "B": 1})
    assert batch.level.tolist() == [0, 1]
    refs = torch.zeros(2, N_Z, dtype=torch.float64)
    for head, table in enumerate((REFS_A, REFS_B)):
        for z, ref in table.items():
            refs[head, z] = ref
    expected = [sum(t[int(z)] for z in m.numbers) for m, t in zip(mols, (REFS_A, REFS_B))]
    np.testing.assert_allclose(reference_sum(refs, batch).numpy(), expected, rtol=1e-12)
    with pytest.raises(DataError, match="level of theory 'B' has no energy head"):
        collate(MoleculeDataset(mols), [1], levels={"A": 0})


def test_select_level_equals_the_head_of_the_multi_level_model():
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig(**TINY_MODEL, energy_levels=["A", "B"])).double()
    with torch.no_grad():
        model.readout[-1].weight.normal_()
        model.element_energies.normal_()
    numbers = torch.tensor([[8, 1, 1, 6], [6, 1, 1, 0]])
    positions = (torch.randn(2, 4, 3, dtype=torch.float64) * 1.2).requires_grad_(True)
    args = (numbers, positions, numbers > 0, torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    for head, name in enumerate(["A", "B"]):
        energy, _ = model(*args, None, torch.full((2,), head))
        single = select_level(model, name)
        assert single.n_levels == 1 and single.energy_levels == [name]
        energy_single, _ = single(*args)
        torch.testing.assert_close(energy_single, energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(compute_forces(energy_single, positions), compute_forces(energy, positions))
    mixed, _ = model(*args, None, torch.tensor([1, 0]))
    a, _ = model(*args, None, torch.zeros(2, dtype=torch.long))
    b, _ = model(*args, None, torch.ones(2, dtype=torch.long))
    torch.testing.assert_close(mixed, torch.stack([b[0], a[1]]))
    assert not torch.allclose(a, b)  # the heads differ
    with pytest.raises(ValueError, match="no energy head for level of theory 'C'"):
        select_level(model, "C")


def _shifted_shards(folder: Path, level: str) -> Path:
    """The acac_mini records at another 'level': energies shifted by Σ n_Z SHIFT_Z, other geometries."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect

    base = read_dataset(TEST_DATA / "acac_mini.xyz")
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    with connect(str(folder / "shard000.aselmdb"), type="aselmdb") as db:
        for k, mol in enumerate(base):
            atoms = Atoms(numbers=mol.numbers, positions=mol.positions + rng.uniform(-0.02, 0.02, (mol.n_atoms, 3)))
            shift = sum(SHIFT[int(z)] for z in mol.numbers)
            atoms.calc = SinglePointCalculator(atoms, energy=mol.energy + shift, forces=mol.forces)
            db.write(atoms, data={"charge": 0, "spin": 1, "source": f"gen/acac{k:03d}_0_1", "level_of_theory": level})
    return folder


def _config(tmp_path: Path, **data) -> Path:
    path = write_tiny_config(tmp_path, max_steps=4)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"].update(data)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_trainer_fits_references_per_level_and_export_picks_the_level(tmp_path):
    extra = _shifted_shards(tmp_path / "xtb", "GFN2-xTB")
    config = _config(tmp_path, level_of_theory="wB97M-V/def2-TZVPD", extra_train=[str(extra)])
    trainer = Trainer(load_config(config), tmp_path / "run")
    assert trainer.data.levels == ["wB97M-V/def2-TZVPD", "GFN2-xTB"]
    assert trainer.model.n_levels == 2 and len(trainer.data.train) == 16 and len(trainer.data.val) == 8
    trainer.train()
    ckpt = TrainingCheckpoint.load(tmp_path / "run" / "last.ckpt")
    assert ckpt.model_config["energy_levels"] == ["wB97M-V/def2-TZVPD", "GFN2-xTB"]
    assert ckpt.element_energies.shape == (2, N_Z)
    assert ckpt.training_charge_multiplicity == [[0, 1]]
    counts = np.bincount(read_dataset(TEST_DATA / "acac_mini.xyz")[0].numbers, minlength=N_Z)
    gap = counts @ (ckpt.element_energies[1] - ckpt.element_energies[0])
    assert gap == pytest.approx(sum(n * SHIFT.get(z, 0.0) for z, n in enumerate(counts)), abs=1e-6)

    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.ckpt")).double()
    mol = read_dataset(TEST_DATA / "acac_mini.xyz")[0]
    numbers = torch.from_numpy(mol.numbers).unsqueeze(0)
    positions = torch.from_numpy(mol.positions).unsqueeze(0)
    spec = SystemSpec(mol.numbers.tolist(), list(range(mol.n_atoms)), mol.n_atoms)
    energies = {}
    for head, level in enumerate(trainer.data.levels):
        out = tmp_path / f"model_{head}.pt"
        meta = export_checkpoint(tmp_path / "run" / "last.ckpt", out, spec, dtype="float64",
                                 level=None if head == 0 else level)
        assert meta["level_of_theory"] == level and read_exported_metadata(out)["level_of_theory"] == level
        assert meta["energy_levels_trained"] == trainer.data.levels
        assert meta["charge_multiplicity"]["trained_on"] == [[0, 1]]
        energy_kj, forces_kj = torch.jit.load(str(out))(positions[0] / 10.0)  # nm in, kJ/mol out
        x = positions.clone().requires_grad_(True)
        expected, _ = model(numbers, x, numbers > 0, torch.zeros(1, dtype=torch.long),
                            torch.ones(1, dtype=torch.long), None, torch.tensor([head]))
        assert float(energy_kj) == pytest.approx(float(expected.detach()) * EV_TO_KJ_PER_MOL, rel=1e-9)
        torch.testing.assert_close(forces_kj, compute_forces(expected, x)[0] * EV_TO_KJ_PER_MOL * 10.0)
        energies[level] = float(expected.detach())
    assert energies["GFN2-xTB"] != energies["wB97M-V/def2-TZVPD"]  # each file has its own level's head


def test_multi_fidelity_refusals(tmp_path):
    extra = _shifted_shards(tmp_path / "xtb", "GFN2-xTB")
    with pytest.raises(ConfigError, match="name their level with data.level_of_theory"):
        Trainer(load_config(_config(tmp_path, extra_train=[str(extra)])), tmp_path / "run1")
    with pytest.raises(DataError, match="validation data hold energies at GFN2-xTB"):
        Trainer(load_config(_config(tmp_path, level_of_theory="A", extra_train=[str(extra)], val=[str(extra)])),
                tmp_path / "run2")
    assert not (tmp_path / "run1").exists() and not (tmp_path / "run2").exists()


def test_train_repeats_weights_the_default_level_against_extra_data(tmp_path):
    extra = _shifted_shards(tmp_path / "xtb", "GFN2-xTB")
    config = _config(tmp_path, level_of_theory="A", extra_train=[str(extra)], train_repeats=3)
    trainer = Trainer(load_config(config), tmp_path / "run")
    levels = [trainer.data.train[i].level_of_theory for i in range(len(trainer.data.train))]
    assert levels.count("") == 3 * 8 and levels.count("GFN2-xTB") == 8 and len(trainer.data.val) == 8
    with pytest.raises(ConfigError, match="train_repeats must be at least 1"):
        Trainer(load_config(_config(tmp_path, train_repeats=0)), tmp_path / "run0")


def test_max_force_drops_extra_records_deep_in_the_repulsive_wall(tmp_path):
    from transip_openmm.training.filters import drop_large_forces, max_forces

    extra = _shifted_shards(tmp_path / "xtb", "GFN2-xTB")
    config = _config(tmp_path, level_of_theory="A", extra_train=[str(extra)])
    trainer = Trainer(load_config(config), tmp_path / "run")
    data = trainer.data.train
    fmax = max_forces(data)
    expected = [float(np.linalg.norm(data[i].forces, axis=1).max()) for i in range(len(data))]
    np.testing.assert_allclose(fmax, expected, rtol=1e-12)
    limit = float(np.median(fmax))
    kept, dropped = drop_large_forces(data, limit)
    assert dropped == int((fmax > limit).sum()) > 0 and len(kept) == len(data) - dropped
    assert all(np.linalg.norm(kept[i].forces, axis=1).max() <= limit for i in range(len(kept)))
    config = _config(tmp_path, level_of_theory="A", extra_train=[str(extra)], max_force=limit)
    filtered = Trainer(load_config(config), tmp_path / "run2").data
    extra_fmax = max_forces(filtered.train.subset(range(8, len(filtered.train))))
    assert len(filtered.train) == 8 + int((fmax[8:] <= limit).sum()) and extra_fmax.max() <= limit
    with pytest.raises(ConfigError, match="max_force must be a positive"):
        Trainer(load_config(_config(tmp_path, level_of_theory="A", extra_train=[str(extra)], max_force=-1.0)),
                tmp_path / "run3")
