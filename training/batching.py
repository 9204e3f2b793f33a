"""Padded batches of molecules and a max-atoms-per-batch sampler with rank sharding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Sequence

import numpy as np
import torch
from torch import Tensor
from transip_openmm.training.dataset import MoleculeDataset


@dataclass
class Batch:
    """A padded batch of B molecules with up to N atoms (padding: atomic number 0).

    numbers (B, N) int64; positions (B, N, 3) Å; mask (B, N) bool; charge (B,) int64;
    multiplicity (B,) int64; energy (B,) eV; forces (B, N, 3) eV/Å (0 on padding);
    n_atoms (B,) int64; has_energy (B,) bool (False: force-only record, energy unused).
    """

    numbers: Tensor
    positions: Tensor
    mask: Tensor
    charge: Tensor
    multiplicity: Tensor
    energy: Tensor
    forces: Tensor
    n_atoms: Tensor
    has_energy: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "Batch":
        return Batch(
            numbers=self.numbers.to(device),
            positions=self.positions.to(device, dtype),
            mask=self.mask.to(device),
            charge=self.charge.to(device),
            multiplicity=self.multiplicity.to(device),
            energy=self.energy.to(device, torch.float64),
            forces=self.forces.to(device, dtype),
            n_atoms=self.n_atoms.to(device),
            has_energy=self.has_energy.to(device),
        )

    @property
    def size(self) -> int:
        return int(self.numbers.shape[0])


def collate(dataset: MoleculeDataset, indices: Sequence[int]) -> Batch:
    """Pad the structures ``indices`` of ``dataset`` into one :class:`Batch` (float64 on CPU)."""
    mols = [dataset[i] for i in indices]
    b = len(mols)
    n = max(m.n_atoms for m in mols)
    numbers = torch.zeros(b, n, dtype=torch.int64)
    positions = torch.zeros(b, n, 3, dtype=torch.float64)
    forces = torch.zeros(b, n, 3, dtype=torch.float64)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for k, m in enumerate(mols):
        na = m.n_atoms
        numbers[k, :na] = torch.from_numpy(np.asarray(m.numbers, dtype=np.int64))
        positions[k, :na] = torch.from_numpy(np.asarray(m.positions, dtype=np.float64))
        forces[k, :na] = torch.from_numpy(np.asarray(m.forces, dtype=np.float64))
        mask[k, :na] = True
    return Batch(
        numbers=numbers,
        positions=positions,
        mask=mask,
        charge=torch.tensor([int(m.charge) for m in mols], dtype=torch.int64),
        multiplicity=torch.tensor([int(m.multiplicity) for m in mols], dtype=torch.int64),
        energy=torch.tensor([float(m.energy) for m in mols], dtype=torch.float64),
        forces=forces,
        n_atoms=torch.tensor([m.n_atoms for m in mols], dtype=torch.int64),
        has_energy=torch.tensor([bool(m.has_energy) for m in mols], dtype=torch.bool),
    )


def make_batches(n_atoms: Sequence[int], max_atoms: int, shuffle: bool, seed: int = 0,
                 chunk: int = 64) -> List[List[int]]:
    """Group structure indices into batches whose *padded* size B·N_max ≤ ``max_atoms``.

    With ``shuffle``, indices are permuted with ``seed``, then sorted by size inside
    chunks of ``chunk`` batches' worth of structures (less padding), and the batch order
    is permuted again. A structure larger than ``max_atoms`` gets a batch of its own.
    Deterministic for a given ``seed``.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if max_atoms < 1:
        raise ValueError(f"max_atoms must be positive, got {max_atoms}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(n_atoms)) if shuffle else np.arange(len(n_atoms))
    mean_n = max(float(n_atoms.mean()) if len(n_atoms) else 1.0, 1.0)
    window = max(1, int(chunk * max_atoms / mean_n)) if shuffle else len(order)
    batches: List[List[int]] = []
    for start in range(0, len(order), max(window, 1)):
        part = order[start:start + window]
        if shuffle:
            part = part[np.argsort(n_atoms[part], kind="stable")]
        current: List[int] = []
        current_max = 0
        for idx in part.tolist():
            new_max = max(current_max, int(n_atoms[idx]))
            if current and new_max * (len(current) + 1) > max_atoms:
                batches.append(current)
                current, new_max = [], int(n_atoms[idx])
            current.append(idx)
            current_max = new_max
        if current:
            batches.append(current)
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


class MaxAtomsBatchSampler:
    """Epoch-seeded batches of at most ``max_atoms`` padded atoms, sharded over ranks.

    Every rank builds the same batch list for an epoch (seed ``seed + epoch``) and takes
    every ``world_size``-th batch starting at ``rank``; the list is truncated to a
    multiple of ``world_size`` so all ranks take the same number of steps
    (the DistributedSampler contract, applied to batches).
    """

    def __init__(self, n_atoms: Sequence[int], max_atoms: int, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.n_atoms = np.asarray(n_atoms, dtype=np.int64)
        self.max_atoms = int(max_atoms)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")

    def batches(self, epoch: int) -> List[List[int]]:
        """This rank's batches of ``epoch``."""
        all_batches = make_batches(self.n_atoms, self.max_atoms, self.shuffle, self.seed + 1000003 * epoch)
        usable = (len(all_batches) // self.world_size) * self.world_size
        if usable == 0:
            raise ValueError(
                f"{len(all_batches)} batch(es) per epoch cannot be shared by {self.world_size} ranks"
            )
        return all_batches[self.rank:usable:self.world_size]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches(0))

    def __len__(self) -> int:
        return len(self.batches(0))
