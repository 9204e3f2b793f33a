"""The resumable rank-sharded batch sampler, the DataLoader with workers, streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from training_helpers import TEST_DATA, write_shards
from transip_openmm.training.batching import MaxAtomsBatchSampler, collate, make_loader
from transip_openmm.training.readers import read_datasets
from transip_openmm.training.references import data_statistics, fit_references
from transip_openmm.training.shards import ShardedDataset, find_shards


def test_sampler_resumes_mid_epoch_with_the_same_batches():
    n_atoms = np.random.default_rng(0).integers(3, 40, size=300)
    sampler = MaxAtomsBatchSampler(n_atoms, 120, seed=4)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        whole = list(sampler)
        assert len(whole) > 10 and whole == sampler.batches(epoch)
        fresh = MaxAtomsBatchSampler(n_atoms, 120, seed=4)  # a new process after a restart
        fresh.set_epoch(epoch, 7)
        assert list(fresh) == whole[7:] and len(fresh) == len(whole) - 7
    assert sampler.batches(0) != sampler.batches(1)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_see_disjoint_batches_that_cover_the_epoch(world):
    n_atoms = np.random.default_rng(1).integers(3, 30, size=241)
    full = MaxAtomsBatchSampler(n_atoms, 90, seed=2).batches(5)
    usable = len(full) // world * world
    parts = [MaxAtomsBatchSampler(n_atoms, 90, seed=2, rank=r, world_size=world).batches(5) for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # every rank takes the same number of steps
    seen = [i for p in parts for b in p for i in b]
    assert len(seen) == len(set(seen))  # disjoint
    assert sorted(seen) == sorted(i for b in full[:usable] for i in b)  # together: the epoch's batches
    dropped = len(n_atoms) - len(seen)
    assert dropped <= (world - 1) * max(len(b) for b in full)  # at most world-1 batches left out


def test_workers_give_the_batches_of_the_main_process(tmp_path):
    data = ShardedDataset(write_shards(tmp_path / "data", n_shards=3, per_shard=7))
    out = {}
    for workers in (0, 2):
        sampler = MaxAtomsBatchSampler(data.n_atoms, 50, seed=1)
        loader = make_loader(data, sampler, num_workers=workers, prefetch_factor=2)
        out[workers] = []
        for epoch, start in ((0, 0), (1, 2)):  # persistent workers across epochs, a mid-epoch start
            sampler.set_epoch(epoch, start)
            assert len(loader) == len(sampler.batches(epoch)) - start
            out[workers].extend(loader)
        assert [b.indices.tolist() for b in out[workers]] == sampler.batches(0) + sampler.batches(1)[2:]
        assert len(sampler.batches(1)[2:]) % 4 != 0  # a last group shorter than the others
    assert len(out[0]) == len(out[2])
    for a, b in zip(out[0], out[2]):
        for name in ("numbers", "positions", "mask", "charge", "multiplicity", "energy", "forces", "n_atoms"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    ref = collate(data, out[0][0].indices.tolist())
    assert torch.equal(ref.positions, out[2][0].positions)


def test_streaming_statistics_match_the_in_memory_fit(tmp_path):
    folder = write_shards(tmp_path / "data", n_shards=2, per_shard=15)
    lazy = ShardedDataset(folder)
    memory = read_datasets(find_shards(folder))
    refs, sigma, mae = fit_references(memory)
    counts = np.zeros((len(memory), 95))  # the direct least-squares fit, for comparison
    for i, m in enumerate(memory):
        np.add.at(counts[i], m.numbers, 1.0)
    energies = np.array([m.energy for m in memory])
    direct = np.linalg.lstsq(counts, energies, rcond=None)[0]
    np.testing.assert_allclose(counts @ refs, counts @ direct, rtol=1e-12)
    for workers in (0, 2):
        stats = data_statistics(lazy, num_workers=workers)
        np.testing.assert_allclose(stats.element_energies, refs, rtol=1e-12)
        assert stats.per_atom_std == pytest.approx(sigma, rel=1e-9) and stats.per_atom_mae == pytest.approx(mae)
        forces = np.concatenate([m.forces for m in memory])
        assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    sample = data_statistics(lazy, sample=10, seed=3)
    assert sample.n_energy == sample.n_force == 10
    assert sample.per_atom_std != stats.per_atom_std  # a different (smaller) set of structures
    force_only = data_statistics(ShardedDataset(lazy.indexes, lazy.rows, has_energy=np.arange(len(lazy)) >= 10))
    assert force_only.n_energy == len(lazy) - 10 and force_only.n_force == len(lazy)


def test_acac_references_unchanged_by_streaming():
    data = read_datasets([TEST_DATA / "acac_mini.xyz"])
    refs, _, _ = fit_references(data)
    # one composition: the minimum-norm solution spreads the energy over C, H, O like lstsq(A, b)
    counts = np.bincount(data[0].numbers, minlength=95).astype(float)
    expected = np.linalg.lstsq(np.tile(counts, (len(data), 1)), [m.energy for m in data], rcond=None)[0]
    np.testing.assert_allclose(refs, expected, rtol=1e-9, atol=1e-9)
