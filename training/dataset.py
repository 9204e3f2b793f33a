"""The dataset interface of the training code: labelled molecules in model units.

Every reader returns a :class:`MoleculeDataset` (records in memory); OMol25-layout
``.aselmdb`` shards can also be opened lazily as a
:class:`~transip_openmm.training.shards.ShardedDataset` (an index in memory, records decoded
on demand). Both offer the :class:`LabelledDataset` interface the trainer consumes, and
:class:`ConcatDataset` joins any of them. Units: positions Å, energy eV, forces eV/Å,
charge in e, multiplicity 2S+1. Each record remembers the file and the record index it
came from, so a bad record can be reported precisely.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import (
    Callable,
    Iterable,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    runtime_checkable,
)

import numpy as np

from transip_openmm.model import MAX_ABS_CHARGE, MAX_ATOMIC_NUMBER, MAX_MULTIPLICITY
from transip_openmm.errors import TransIPError


T = TypeVar("T")


class DataError(TransIPError, ValueError):
    """A record of a data file is unusable (the message names the file and the record)."""


@dataclass
class Molecule:
    """One labelled structure.

    numbers (n,) int64; positions (n, 3) Å; energy eV; forces (n, 3) eV/Å;
    charge total charge in e; multiplicity 2S+1; family key for splits;
    source file and record index for error messages. ``has_energy`` False: a record
    whose energy is at another level of theory than the training set's references
    (force-only data); its energy takes no part in losses, references or metrics.
    ``level_of_theory``: the label's method/basis when the file states it ("" if not).
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    charge: int = 0
    multiplicity: int = 1
    family: str = ""
    source: str = "<memory>"
    index: int = 0
    has_energy: bool = True
    level_of_theory: str = ""

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def where(self) -> str:
        """``file, record i`` for error messages."""
        return f"{self.source}, record {self.index}"


def validate_molecule(mol: Molecule, elements: Optional[Sequence[int]] = None) -> None:
    """Raise :class:`DataError` naming file and record if ``mol`` is unusable.

    Checks shapes, finiteness, presence of forces, element range (and membership in
    ``elements`` when given), charge and multiplicity range.
    """
    where = mol.where()
    numbers = np.asarray(mol.numbers)
    if numbers.ndim != 1 or numbers.shape[0] == 0:
        raise DataError(f"{where}: atomic numbers must be a non-empty 1-D array, got shape {numbers.shape}")
    n = numbers.shape[0]
    if mol.positions is None or np.shape(mol.positions) != (n, 3):
        raise DataError(f"{where}: positions have shape {np.shape(mol.positions)}, expected ({n}, 3)")
    if mol.forces is None:
        raise DataError(f"{where}: no forces")
    if np.shape(mol.forces) != (n, 3):
        raise DataError(f"{where}: forces have shape {np.shape(mol.forces)}, expected ({n}, 3)")
    if mol.energy is None or not np.isfinite(mol.energy):
        raise DataError(f"{where}: energy is missing or not finite ({mol.energy})")
    if not np.all(np.isfinite(mol.positions)):
        raise DataError(f"{where}: positions contain NaN or inf")
    if not np.all(np.isfinite(mol.forces)):
        raise DataError(f"{where}: forces contain NaN or inf")
    if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
        raise DataError(f"{where}: atomic numbers outside 1..{MAX_ATOMIC_NUMBER}: {sorted(set(numbers.tolist()))}")
    if elements is not None:
        bad = sorted(set(numbers.tolist()) - set(int(z) for z in elements))
        if bad:
            from ase.data import chemical_symbols

            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in bad)
            raise DataError(f"{where}: element(s) {names} not among the model's elements {sorted(elements)}")
    if abs(int(mol.charge)) > MAX_ABS_CHARGE:
        raise DataError(f"{where}: total charge {mol.charge} outside ±{MAX_ABS_CHARGE}")
    if not 1 <= int(mol.multiplicity) <= MAX_MULTIPLICITY:
        raise DataError(f"{where}: multiplicity {mol.multiplicity} outside 1..{MAX_MULTIPLICITY}")
    n_electrons = int(numbers.sum()) - int(mol.charge)
    if (int(mol.multiplicity) - 1) % 2 != n_electrons % 2 or int(mol.multiplicity) - 1 > n_electrons:
        raise DataError(f"{where}: multiplicity {mol.multiplicity} is impossible with {n_electrons} electrons "
                        f"(charge {mol.charge}); check the charge and multiplicity keys of the file")


@runtime_checkable
class LabelledDataset(Protocol):
    """What the trainer, the batch sampler and the evaluator need of a dataset.

    ``dataset[i]`` decodes record i into a :class:`Molecule`; ``n_atoms`` (M,) int64 is
    known without decoding (the sampler packs batches from it).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Molecule: ...

    def __iter__(self) -> Iterator[Molecule]: ...

    @property
    def n_atoms(self) -> np.ndarray: ...

    @property
    def elements(self) -> List[int]: ...

    @property
    def families(self) -> List[str]: ...

    def subset(self, indices: Sequence[int]) -> "LabelledDataset": ...

    def with_energies(self) -> "LabelledDataset": ...

    def without_energies(self) -> "LabelledDataset": ...

    def validate(self, elements: Optional[Sequence[int]] = None) -> None: ...

    def content_hash(self) -> str: ...


@dataclass
class MoleculeDataset:
    """A list of :class:`Molecule` records with helpers for splits and statistics."""

    molecules: List[Molecule] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.molecules)

    def __getitem__(self, i: int) -> Molecule:
        return self.molecules[i]

    def __iter__(self):
        return iter(self.molecules)

    @classmethod
    def concatenate(cls, parts: Iterable["MoleculeDataset"]) -> "MoleculeDataset":
        mols: List[Molecule] = []
        for part in parts:
            mols.extend(part.molecules)
        return cls(mols)

    def subset(self, indices: Sequence[int]) -> "MoleculeDataset":
        return MoleculeDataset([self.molecules[i] for i in indices])

    def without_energies(self) -> "MoleculeDataset":
        """Copies of the records marked force-only (``has_energy`` False)."""
        return MoleculeDataset([dataclasses.replace(m, has_energy=False) for m in self.molecules])

    def with_energies(self) -> "MoleculeDataset":
        """The records whose energies count (``has_energy`` True)."""
        return MoleculeDataset([m for m in self.molecules if m.has_energy])

    def validate(self, elements: Optional[Sequence[int]] = None) -> None:
        for mol in self.molecules:
            validate_molecule(mol, elements)

    @property
    def n_atoms(self) -> np.ndarray:
        """(M,) number of atoms per structure."""
        return np.array([m.n_atoms for m in self.molecules], dtype=np.int64)

    @property
    def elements(self) -> List[int]:
        """Sorted atomic numbers present."""
        return sorted(set(int(z) for m in self.molecules for z in np.unique(m.numbers)))

    @property
    def families(self) -> List[str]:
        return [m.family for m in self.molecules]

    def content_hash(self) -> str:
        """SHA-256 over numbers, positions, labels, charge and multiplicity (order-sensitive)."""
        h = hashlib.sha256()
        for m in self.molecules:
            h.update(np.ascontiguousarray(m.numbers, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(m.positions, dtype=np.float64).tobytes())
            h.update(np.float64(m.energy).tobytes())
            h.update(np.ascontiguousarray(m.forces, dtype=np.float64).tobytes())
            h.update(np.array([m.charge, m.multiplicity, int(m.has_energy)], dtype=np.int64).tobytes())
        return h.hexdigest()


class ConcatDataset:
    """Several :class:`LabelledDataset` parts seen as one (e.g. lazy shards + a force-only extxyz)."""

    def __init__(self, parts: Sequence[LabelledDataset]) -> None:
        self.parts = list(parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> Molecule:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} outside 0..{len(self) - 1}")
        part = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.parts[part][i - int(self._offsets[part])]

    def __iter__(self) -> Iterator[Molecule]:
        for part in self.parts:
            yield from part

    @property
    def n_atoms(self) -> np.ndarray:
        return np.concatenate([np.asarray(p.n_atoms, dtype=np.int64) for p in self.parts])

    @property
    def elements(self) -> List[int]:
        return sorted(set().union(*(p.elements for p in self.parts)))

    @property
    def families(self) -> List[str]:
        return [f for p in self.parts for f in p.families]

    def subset(self, indices: Sequence[int]) -> "ConcatDataset":
        indices = np.asarray(indices, dtype=np.int64)
        part_of = np.searchsorted(self._offsets, indices, side="right") - 1
        if np.any(np.diff(part_of) < 0):
            raise ValueError("a subset of a ConcatDataset must keep the parts' order")
        return ConcatDataset([p.subset(indices[part_of == k] - self._offsets[k])
                              for k, p in enumerate(self.parts)])

    def with_energies(self) -> "ConcatDataset":
        return ConcatDataset([p.with_energies() for p in self.parts])

    def without_energies(self) -> "ConcatDataset":
        return ConcatDataset([p.without_energies() for p in self.parts])

    def validate(self, elements: Optional[Sequence[int]] = None) -> None:
        for p in self.parts:
            p.validate(elements)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for p in self.parts:
            h.update(p.content_hash().encode())
        return h.hexdigest()


def concatenate(parts: Sequence[LabelledDataset]) -> LabelledDataset:
    """Join datasets: one :class:`MoleculeDataset` if every part is in memory, else a :class:`ConcatDataset`."""
    parts = [p for p in parts if len(p) > 0] or list(parts[:1])
    if all(isinstance(p, MoleculeDataset) for p in parts):
        return MoleculeDataset.concatenate(parts)
    if len(parts) == 1:
        return parts[0]
    return ConcatDataset(parts)


def levels_of_theory(dataset: LabelledDataset) -> List[str]:
    """Distinct levels of theory of the records ("" where a record states none); from the
    shard index where the dataset has one, else by reading the records."""
    if isinstance(dataset, ConcatDataset):
        return sorted(set().union(*(levels_of_theory(p) for p in dataset.parts)))
    levels = getattr(dataset, "levels_of_theory", None)
    if levels is not None:
        return sorted(levels)
    return sorted({m.level_of_theory for m in dataset})


def charge_multiplicity_pairs(dataset: LabelledDataset) -> List[Tuple[int, int]]:
    """Distinct (total charge e, multiplicity 2S+1) of the records, sorted."""
    if isinstance(dataset, ConcatDataset):
        return sorted(set().union(*(charge_multiplicity_pairs(p) for p in dataset.parts)))
    pairs = getattr(dataset, "charge_multiplicity_pairs", None)
    if pairs is not None:
        return sorted(pairs)
    return sorted({(int(m.charge), int(m.multiplicity)) for m in dataset})


class _MappedRecords:
    """Map-style view whose item k is ``fn(dataset[indices[k]])`` (what DataLoader workers compute)."""

    def __init__(self, dataset: LabelledDataset, fn: Callable[[Molecule], T], indices: np.ndarray) -> None:
        self.dataset = dataset
        self.fn = fn
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> T:
        return self.fn(self.dataset[int(self.indices[k])])


def _unbatched(item):
    return item


def map_records(dataset: LabelledDataset, fn: Callable[[Molecule], T], indices: Optional[np.ndarray] = None,
                num_workers: int = 0) -> Iterator[T]:
    """``fn`` of each record (of ``indices``, default all), in order, one record in memory at a
    time; ``num_workers`` > 0: DataLoader worker processes decode and apply ``fn`` (a module-level
    function, so it can be sent to them). The global RNG is left untouched."""
    import torch

    indices = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    source = _MappedRecords(dataset, fn, indices)
    if num_workers <= 0:
        for k in range(len(source)):
            yield source[k]
        return
    yield from torch.utils.data.DataLoader(source, batch_size=None, collate_fn=_unbatched, num_workers=num_workers,
                                           prefetch_factor=64, generator=torch.Generator().manual_seed(0))
