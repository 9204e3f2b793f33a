"""Train / validation / test splits by molecule, never by conformer.

The unit of a split is a *molecule key* (:func:`molecule_key`), coarser than the readers'
family key where the family key still names a conformer:

* SPICE (OMol25 ``spice/...``): the trailing conformer index is dropped
  (``..._HHT_LEU_0`` and ``..._HHT_LEU_2`` are one molecule);
* OMol25 ``ani2x`` and ``geom_*`` entries carry only a record id, so their key is the
  sub-set plus the chemical formula (conformers of one molecule always share it; isomers
  sharing it are kept together too, which errs on the safe side);
* every other key is used as it is (e.g. ``orbnet_denali/CHEMBL...``, an extxyz file stem).

A single trajectory of one molecule (e.g. acac's ``train_300K``) has one key; it is split
into contiguous blocks of records instead (:func:`block_split`), the validation block
last, so that validation frames are as far as possible (in MD time) from training ones.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import numpy as np
from transip_openmm.training.dataset import Molecule, MoleculeDataset

if TYPE_CHECKING:
    from transip_openmm.training.config import TrainConfig

logger = logging.getLogger(__name__)

_TRAILING_INDEX = re.compile(r"_\d+$")
#: OMol25 sub-sets whose source folder names a record, not a molecule
_FORMULA_KEYED = ("ani2x", "geom")


def formula(numbers: Sequence[int]) -> str:
    """Hill-ordered chemical formula of atomic numbers (e.g. ``C2H6O``)."""
    from ase.formula import Formula
    from ase.data import chemical_symbols

    counts = Counter(chemical_symbols[int(z)] for z in numbers)
    return Formula.from_dict(counts).format("hill")


def molecule_key(mol: Molecule) -> str:
    """The key that groups every conformer of one molecule (see the module docstring)."""
    family = mol.family
    subset, _, name = family.partition("/")
    if not name:
        return family
    if subset.startswith(_FORMULA_KEYED):
        return f"{subset}/{formula(mol.numbers)}"
    if subset == "spice":
        return f"{subset}/{_TRAILING_INDEX.sub('', name)}"
    return family


@dataclass
class Split:
    """Sorted record indices of the three parts."""

    train: List[int]
    val: List[int]
    test: List[int]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def molecule_split(dataset: MoleculeDataset, val_fraction: float, test_fraction: float = 0.0,
                   seed: int = 0) -> Split:
    """Split so that no molecule key appears in two parts.

    Keys are shuffled with ``seed``; the first go to test until it holds at least
    ``test_fraction`` of the structures, the next to validation until ``val_fraction``,
    the rest to training (always at least one key). Raises ``ValueError`` when the data
    have too few molecules for the parts asked for.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    keys = dataset.molecule_keys() if hasattr(dataset, "molecule_keys") else [molecule_key(m) for m in dataset]
    unique = sorted(set(keys))
    wanted = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(unique) < wanted:
        raise ValueError(
            f"cannot split by molecule: the data hold {len(unique)} molecule famil"
            f"{'y' if len(unique) == 1 else 'ies'} for {wanted} parts; give separate files or split by block"
        )
    counts: Dict[str, int] = Counter(keys)
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    part_of: Dict[str, str] = {}
    limit = {"test": len(order) - 1 - int(val_fraction > 0), "val": len(order) - 1}  # keep keys for the rest
    pos = 0
    for part, fraction in (("test", test_fraction), ("val", val_fraction)):
        target, n = fraction * len(keys), 0
        while fraction > 0 and n < target and pos < limit[part]:
            part_of[order[pos]] = part
            n += counts[order[pos]]
            pos += 1
    idx: Dict[str, List[int]] = {"train": [], "val": [], "test": []}
    for i, key in enumerate(keys):
        idx[part_of.get(key, "train")].append(i)
    return Split(idx["train"], idx["val"], idx["test"])


def family_split(dataset: MoleculeDataset, val_fraction: float, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Two-way molecule-disjoint split: ``(train_indices, val_indices)``, each sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    split = molecule_split(dataset, val_fraction, 0.0, seed)
    return split.train, split.val


def block_split(n: int, val_fraction: float, test_fraction: float = 0.0) -> Split:
    """Contiguous blocks of ``n`` records of one trajectory: train first, then val, then test."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    n_train = n - n_val - n_test
    if n_train < 1 or (val_fraction > 0 and n_val < 1) or (test_fraction > 0 and n_test < 1):
        raise ValueError(f"cannot split {n} records into blocks of fractions val {val_fraction}, test {test_fraction}")
    return Split(list(range(n_train)), list(range(n_train, n_train + n_val)), list(range(n_train + n_val, n)))


def split_dataset(dataset: MoleculeDataset, how: str, val_fraction: float, test_fraction: float = 0.0,
                  seed: int = 0) -> Split:
    """``how``: ``family`` (:func:`molecule_split`) or ``block`` (:func:`block_split`)."""
    if how == "family":
        split = molecule_split(dataset, val_fraction, test_fraction, seed)
    elif how == "block":
        split = block_split(len(dataset), val_fraction, test_fraction)
    else:
        raise ValueError(f"split must be 'family' or 'block', got {how!r}")
    logger.info("%s split: %d train / %d validation / %d test structures", how,
                len(split.train), len(split.val), len(split.test))
    return split


def config_parts(cfg: "TrainConfig", full: MoleculeDataset,
                 ) -> Tuple[MoleculeDataset, MoleculeDataset, MoleculeDataset]:
    """``(train, val, test)`` of a config's data, ``full`` being its ``data.train`` files read.

    Validation comes from ``data.val`` files when given, else from the split; the test part
    is held out of ``full`` when ``data.test`` is empty and ``data.test_fraction`` > 0 (an
    empty dataset otherwise: test files are read by :func:`held_out_test` only).
    """
    from transip_openmm.training.readers import read_datasets

    data = cfg.data
    held_test = 0.0 if data.test else data.test_fraction
    val_fraction = 0.0 if data.val else data.val_fraction
    if held_test == 0.0 and val_fraction == 0.0:
        split = Split(list(range(len(full))), [], [])
    else:
        split = split_dataset(full, data.split, val_fraction, held_test, data.split_seed)
    train, test = full.subset(split.train), full.subset(split.test)
    val = read_datasets([cfg.resolve(p) for p in data.val], data.elements) if data.val else full.subset(split.val)
    return train, val, test


def held_out_test(cfg: "TrainConfig") -> MoleculeDataset:
    """The data a config reports on: its ``data.test`` files, else its held-out test part."""
    from transip_openmm.training.readers import read_datasets

    if cfg.data.test:
        return read_datasets([cfg.resolve(p) for p in cfg.data.test], cfg.data.elements)
    if cfg.data.test_fraction <= 0.0:
        raise ValueError("the config names no test data (data.test is empty and data.test_fraction is 0)")
    full = read_datasets([cfg.resolve(p) for p in cfg.data.train], cfg.data.elements)
    return config_parts(cfg, full)[2]
