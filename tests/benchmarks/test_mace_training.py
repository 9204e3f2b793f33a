"""The MACE side of the data-scaling study (``benchmarks/mace_training.py``): its predictor
reads padded batches right, its forces are −∇E, and its references come from the data."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mace", reason="mace-torch is in the 'bench' extra")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import mace_training  # noqa: E402

from transip_openmm.training.batching import collate  # noqa: E402
from transip_openmm.training.dataset import Molecule, MoleculeDataset  # noqa: E402

ELEMENTS = [1, 6, 8]


def _dataset() -> MoleculeDataset:
    rng = np.random.default_rng(0)
    mols = []
    for k, numbers in enumerate(([8, 1, 1], [6, 8, 1, 1], [6, 1, 1, 1, 1])):
        n = len(numbers)
        positions = rng.normal(0.0, 0.9, (n, 3))
        mols.append(Molecule(numbers=np.array(numbers), positions=positions, energy=-10.0 * n + 0.1 * k,
                             forces=rng.normal(0.0, 0.3, (n, 3)), charge=0, multiplicity=1, family=f"m{k}"))
    return MoleculeDataset(mols)


@pytest.fixture
def float64_graphs():
    """mace builds its graphs in torch's default dtype: float64 for a finite-difference check."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_predictor_forces_are_minus_the_energy_gradient_and_padding_is_ignored(float64_graphs) -> None:
    data = _dataset()
    model = mace_training.build_mace(mace_training.MODEL_SIZE, torch.float64, seed=0, elements=ELEMENTS)
    predictor = mace_training.MacePredictor(model, ELEMENTS, 4.5)
    energies, forces = predictor(collate(data, [0, 1, 2]))
    for k in range(3):  # one structure alone = the same structure in a padded batch
        e_alone, f_alone = predictor(collate(data, [k]))
        assert energies[k] == pytest.approx(e_alone[0], abs=1e-9)
        n = data[k].n_atoms
        np.testing.assert_allclose(forces[k, :n], f_alone[0, :n], atol=1e-9)
        assert not forces[k, n:].any()
    batch, h = collate(data, [1]), 1e-4
    for atom, axis in ((0, 0), (2, 1), (3, 2)):
        plus, minus = batch.positions.clone(), batch.positions.clone()
        plus[0, atom, axis] += h
        minus[0, atom, axis] -= h
        e_plus = predictor(dataclasses.replace(batch, positions=plus))[0][0]
        e_minus = predictor(dataclasses.replace(batch, positions=minus))[0][0]
        assert forces[1, atom, axis] == pytest.approx(-(e_plus - e_minus) / (2 * h), rel=1e-5, abs=1e-7)


def test_model_references_are_the_least_squares_fit_of_the_training_energies() -> None:
    data = _dataset()
    train = mace_training.MaceData(data, ELEMENTS, 4.5)
    model = mace_training.build_model(train, ELEMENTS, seed=0)
    counts = np.array([[np.sum(m.numbers == z) for z in ELEMENTS] for m in data], float)
    energies = np.array([m.energy for m in data])
    fitted = model.atomic_energies_fn.atomic_energies.detach().double().numpy()
    np.testing.assert_allclose(counts @ fitted, energies, atol=1e-3)  # 3 structures, 3 elements: exact
    forces = np.concatenate([m.forces for m in data])
    assert float(model.scale_shift.scale) == pytest.approx(np.sqrt(np.mean(forces ** 2)), rel=1e-5)
