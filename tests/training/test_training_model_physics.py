"""Exact symmetries of the model, forces = −dE/dx, batch = single (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import TEST_DATA, TINY_MODEL
from transip_openmm.training.batching import collate
from transip_openmm.training.evaluate import ModelPredictor
from transip_openmm.training.readers import read_dataset

from transip_openmm.model import ModelConfig, TransIPModel, compute_forces


@pytest.fixture(scope="module")
def data():
    return read_dataset(TEST_DATA / "omol25_mini.aselmdb")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TransIPModel(ModelConfig.from_dict(dict(TINY_MODEL, rbf_cutoff=8.0))).double().eval()
    with torch.no_grad():  # non-trivial references and scale so they are tested too
        m.element_energies.uniform_(-5.0, -1.0)
        m.energy_scale.fill_(0.7)
    return m


def _energy(model, batch):
    e, _ = model(batch.numbers, batch.positions, batch.mask, batch.charge, batch.multiplicity)
    return e


def test_translation_invariance_exact(model, data):
    batch = collate(data, [4, 5])
    e0 = _energy(model, batch)
    shifted = collate(data, [4, 5])
    shift = torch.tensor([3.7, -12.1, 0.45], dtype=torch.float64)
    shifted.positions = shifted.positions + shift * shifted.mask[..., None]
    torch.testing.assert_close(_energy(model, shifted), e0, rtol=0, atol=1e-9)


def test_permutation_invariance_exact(model, data):
    batch = collate(data, [5])
    e0 = _energy(model, batch)
    perm = torch.randperm(batch.numbers.shape[1], generator=torch.Generator().manual_seed(1))
    p = collate(data, [5])
    p.numbers, p.positions = p.numbers[:, perm], p.positions[:, perm]
    torch.testing.assert_close(_energy(model, p), e0, rtol=0, atol=1e-9)
    # forces permute with the atoms
    pos = batch.positions.clone().requires_grad_(True)
    f = compute_forces(model(batch.numbers, pos, batch.mask, batch.charge, batch.multiplicity)[0], pos)
    pos_p = p.positions.clone().requires_grad_(True)
    f_p = compute_forces(model(p.numbers, pos_p, p.mask, p.charge, p.multiplicity)[0], pos_p)
    torch.testing.assert_close(f_p, f[:, perm], rtol=0, atol=1e-9)


def test_forces_equal_finite_differences_float64(model, data):
    batch = collate(data, [2])
    pos = batch.positions.clone().requires_grad_(True)
    energy, _ = model(batch.numbers, pos, batch.mask, batch.charge, batch.multiplicity)
    forces = compute_forces(energy, pos)[0]
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (6, 2)]:
        plus, minus = batch.positions.clone(), batch.positions.clone()
        plus[0, atom, axis] += h
        minus[0, atom, axis] -= h
        with torch.no_grad():
            ep = model(batch.numbers, plus, batch.mask, batch.charge, batch.multiplicity)[0]
            em = model(batch.numbers, minus, batch.mask, batch.charge, batch.multiplicity)[0]
        fd = -(ep - em).item() / (2 * h)
        assert forces[atom, axis].item() == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_batch_equals_single(model, data):
    predictor = ModelPredictor(model, dtype=torch.float64)
    idx = list(range(len(data)))
    e_batch, f_batch = predictor(collate(data, idx))
    for i in idx:
        e, f = predictor(collate(data, [i]))
        assert e[0] == pytest.approx(e_batch[i], rel=0, abs=1e-9)
        n = data[i].n_atoms
        np.testing.assert_allclose(f[0, :n], f_batch[i, :n], rtol=0, atol=1e-9)
        assert np.all(f_batch[i, n:] == 0.0)  # padding gets no force


def test_charge_and_multiplicity_change_energy(model, data):
    batch = collate(data, [0])
    e0 = _energy(model, batch)
    batch.charge = batch.charge + 1
    assert not torch.allclose(_energy(model, batch), e0)
