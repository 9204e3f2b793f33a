"""Padded batches of molecules, a resumable max-atoms-per-batch sampler with rank sharding,
and the DataLoader whose workers decode and collate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from transip_openmm.training.dataset import DataError, LabelledDataset


@dataclass
class Batch:
    """A padded batch of B molecules with up to N atoms (padding: atomic number 0).

    numbers (B, N) int64; positions (B, N, 3) Å; mask (B, N) bool; charge (B,) int64;
    multiplicity (B,) int64; energy (B,) eV; forces (B, N, 3) eV/Å (0 on padding);
    n_atoms (B,) int64; has_energy (B,) bool (False: force-only record, energy unused);
    indices (B,) int64: the structures' indices in their dataset; level (B,) int64: the energy
    head (level of theory) of each structure, 0 for a single-level model.
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
    indices: Optional[Tensor] = None
    level: Optional[Tensor] = None

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
            indices=self.indices,
            level=None if self.level is None else self.level.to(device),
        )

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory (the DataLoader calls this with ``pin_memory``)."""
        return Batch(**{k: v.pin_memory() if k != "indices" and v is not None else v
                        for k, v in self.__dict__.items()})

    @property
    def size(self) -> int:
        return int(self.numbers.shape[0])


def collate_arrays(dataset: LabelledDataset, indices: Sequence[int],
                   levels: Optional[Mapping[str, int]] = None) -> Dict[str, np.ndarray]:
    """The :class:`Batch` of the structures ``indices`` as numpy arrays (the fields of Batch).

    ``levels`` maps a record's ``level_of_theory`` to its energy head (None: every record 0);
    a level it does not hold is a :class:`DataError`.

    DataLoader workers return these: numpy arrays travel through the worker pipe as bytes,
    where tensors would each need a shared-memory segment (measured here: 3x slower loading
    of small batches)."""
    mols = [dataset[i] for i in indices]
    b = len(mols)
    n = max(m.n_atoms for m in mols)
    numbers = np.zeros((b, n), np.int64)
    positions = np.zeros((b, n, 3), np.float64)
    forces = np.zeros((b, n, 3), np.float64)
    mask = np.zeros((b, n), bool)
    for k, m in enumerate(mols):
        na = m.n_atoms
        numbers[k, :na] = m.numbers
        positions[k, :na] = m.positions
        forces[k, :na] = m.forces
        mask[k, :na] = True
    return {
        "numbers": numbers, "positions": positions, "mask": mask,
        "charge": np.array([int(m.charge) for m in mols], np.int64),
        "multiplicity": np.array([int(m.multiplicity) for m in mols], np.int64),
        "energy": np.array([float(m.energy) for m in mols], np.float64),
        "forces": forces,
        "n_atoms": np.array([m.n_atoms for m in mols], np.int64),
        "has_energy": np.array([bool(m.has_energy) for m in mols], bool),
        "indices": np.array([int(i) for i in indices], np.int64),
        "level": _level_codes(mols, levels),
    }


def _level_codes(mols: Sequence, levels: Optional[Mapping[str, int]]) -> np.ndarray:
    if levels is None:
        return np.zeros(len(mols), np.int64)
    codes = np.empty(len(mols), np.int64)
    for k, m in enumerate(mols):
        code = levels.get(m.level_of_theory)
        if code is None:
            raise DataError(f"{m.where()}: level of theory {m.level_of_theory!r} has no energy head in this model "
                            f"(heads: {', '.join(repr(x) for x in levels)})")
        codes[k] = code
    return codes


def batch_from_arrays(arrays: Dict[str, np.ndarray]) -> Batch:
    """A :class:`Batch` sharing the memory of :func:`collate_arrays`' arrays."""
    return Batch(**{k: torch.from_numpy(v) for k, v in arrays.items()})


def collate(dataset: LabelledDataset, indices: Sequence[int], levels: Optional[Mapping[str, int]] = None) -> Batch:
    """Pad the structures ``indices`` of ``dataset`` into one :class:`Batch` (float64 on CPU);
    ``levels``: see :func:`collate_arrays`."""
    return batch_from_arrays(collate_arrays(dataset, indices, levels))


@dataclass
class BatchPlan:
    """Batches as two arrays: structure indices ``order`` (M,) int64 in batch order and
    ``starts`` (K + 1,) int64, batch k being ``order[starts[k]:starts[k + 1]]`` (a few bytes
    a structure instead of a Python list of lists)."""

    order: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return int(self.starts.shape[0] - 1)

    def __getitem__(self, k: int) -> List[int]:
        return self.order[self.starts[k]:self.starts[k + 1]].tolist()

    def take(self, batch_ids: np.ndarray) -> "BatchPlan":
        """The plan of batches ``batch_ids`` in that order."""
        sizes = np.diff(self.starts)[batch_ids]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        order = (np.concatenate([self.order[self.starts[k]:self.starts[k + 1]] for k in batch_ids.tolist()])
                 if len(batch_ids) else np.zeros(0, np.int64))
        return BatchPlan(order.astype(np.int64), starts)

    def as_lists(self) -> List[List[int]]:
        return [self[k] for k in range(len(self))]


def plan_batches(n_atoms: Sequence[int], max_atoms: int, shuffle: bool, seed: int = 0,
                 chunk: int = 64) -> BatchPlan:
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
    window = max(1, int(chunk * max_atoms / mean_n)) if shuffle else max(len(order), 1)
    starts: List[int] = []
    for start in range(0, len(order), window):
        part = order[start:start + window]
        if shuffle:
            part = part[np.argsort(n_atoms[part], kind="stable")]
            order[start:start + window] = part
        count = current_max = 0
        for pos, n in enumerate(n_atoms[part].tolist()):
            new_max = max(current_max, n)
            if count and new_max * (count + 1) > max_atoms:
                starts.append(start + pos - count)
                count, new_max = 0, n
            count += 1
            current_max = new_max
        if count:
            starts.append(start + len(part) - count)
    plan = BatchPlan(order.astype(np.int64), np.array(starts + [len(order)], dtype=np.int64))
    if shuffle:
        plan = plan.take(rng.permutation(len(plan)))
    return plan


def make_batches(n_atoms: Sequence[int], max_atoms: int, shuffle: bool, seed: int = 0,
                 chunk: int = 64) -> List[List[int]]:
    """:func:`plan_batches` as a list of index lists."""
    return plan_batches(n_atoms, max_atoms, shuffle, seed, chunk).as_lists()


class MaxAtomsBatchSampler:
    """Epoch-seeded batches of at most ``max_atoms`` padded atoms, sharded over ranks, resumable.

    Every rank builds the same batch plan for an epoch (seed ``seed + 1000003 · epoch``) and
    takes every ``world_size``-th batch starting at ``rank``; the plan is truncated to a
    multiple of ``world_size`` so all ranks take the same number of steps (the
    DistributedSampler contract, applied to batches). Iterating yields this rank's batches of
    the epoch and position set by :meth:`set_epoch`: ``set_epoch(e, p)`` then ``iter`` gives
    exactly the batches an uninterrupted pass over epoch ``e`` gives after its first ``p``.
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
        self.epoch = 0
        self.start = 0
        self._cached: Optional[Tuple[int, BatchPlan]] = None

    def plan(self, epoch: int) -> BatchPlan:
        """This rank's batches of ``epoch`` (the last epoch's plan is cached)."""
        if self._cached is None or self._cached[0] != epoch:
            full = plan_batches(self.n_atoms, self.max_atoms, self.shuffle, self.seed + 1000003 * epoch)
            usable = (len(full) // self.world_size) * self.world_size
            if usable == 0:
                raise DataError(
                    f"{len(full)} batch(es) per epoch cannot be shared by {self.world_size} ranks: "
                    "lower data.max_atoms_per_batch or add data"
                )
            self._cached = (epoch, full.take(np.arange(self.rank, usable, self.world_size)))
        return self._cached[1]

    def batches(self, epoch: int) -> List[List[int]]:
        """This rank's batches of ``epoch`` as index lists."""
        return self.plan(epoch).as_lists()

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next iteration yield batches ``start``, ``start + 1``, ... of ``epoch``."""
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[List[int]]:
        plan = self.plan(self.epoch)
        for k in range(self.start, len(plan)):
            yield plan[k]

    def __len__(self) -> int:
        return max(0, len(self.plan(self.epoch)) - self.start)


class BatchGroups(torch.utils.data.Sampler):
    """The batches of ``sampler`` in groups of ``size`` consecutive batches (the last may be
    shorter): what one DataLoader message carries. The sampler's epoch and start position are
    read when iteration starts, so resuming mid-epoch is unchanged by the grouping."""

    def __init__(self, sampler: MaxAtomsBatchSampler, size: int) -> None:
        self.sampler = sampler
        self.size = max(1, int(size))

    def __iter__(self) -> Iterator[List[List[int]]]:
        group: List[List[int]] = []
        for batch in self.sampler:
            group.append(batch)
            if len(group) == self.size:
                yield group
                group = []
        if group:
            yield group

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.size)


class CollatedBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item (a group of batches of the sampler, each a list of
    structure indices) is those batches' :func:`collate_arrays`: a DataLoader worker decodes
    and pads whole batches."""

    def __init__(self, dataset: LabelledDataset, levels: Optional[Mapping[str, int]] = None) -> None:
        self.dataset = dataset
        self.levels = None if levels is None else dict(levels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, group: List[List[int]]) -> List[Dict[str, np.ndarray]]:
        return [collate_arrays(self.dataset, indices, self.levels) for indices in group]


def _keep(item: List[Dict[str, np.ndarray]]) -> List[Dict[str, np.ndarray]]:
    return item


class BatchLoader:
    """Iterating gives the :class:`Batch` es of a DataLoader of :class:`CollatedBatches`, one
    at a time in sampler order (tensors made in this process, page-locked when ``pin_memory``)."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: MaxAtomsBatchSampler,
                 pin_memory: bool = False) -> None:
        self.loader = loader
        self.sampler = sampler
        self.pin_memory = pin_memory

    def __iter__(self) -> Iterator[Batch]:
        for group in self.loader:
            for arrays in group:
                batch = batch_from_arrays(arrays)
                yield batch.pin_memory() if self.pin_memory else batch

    def __len__(self) -> int:
        return len(self.sampler)


#: Batches a worker collates into one message: the DataLoader's cost of passing a message
#: between processes (~0.6 ms here, more than collating a batch of small molecules in
#: memory) is paid once per group.
BATCHES_PER_MESSAGE = 4


def make_loader(dataset: LabelledDataset, sampler: MaxAtomsBatchSampler, num_workers: int = 0,
                prefetch_factor: int = 2, pin_memory: bool = False,
                levels: Optional[Mapping[str, int]] = None) -> BatchLoader:
    """Batches in ``sampler`` order; ``num_workers`` processes decode and collate (0: the main
    process), :data:`BATCHES_PER_MESSAGE` batches a message, ``prefetch_factor`` messages
    ahead per worker. Workers persist across epochs; set the epoch and start position on ``sampler``
    before each ``iter(loader)``. The loader draws its worker seeds from its own generator:
    starting workers never changes the global RNG, so a run with workers, without them, or
    resumed, initialises and trains identically."""
    workers = int(num_workers)
    groups = BatchGroups(sampler, BATCHES_PER_MESSAGE if workers > 0 else 1)
    loader = torch.utils.data.DataLoader(
        CollatedBatches(dataset, levels), sampler=groups, batch_size=None, collate_fn=_keep,
        num_workers=workers, persistent_workers=workers > 0,
        prefetch_factor=int(prefetch_factor) if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # worker seeds; leaves the global RNG alone
    )
    return BatchLoader(loader, sampler, pin_memory)
