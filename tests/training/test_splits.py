"""Splits by molecule: no molecule in two parts, conformers together, test held out of training."""

from __future__ import annotations

import numpy as np
import pytest
from training_helpers import TEST_DATA
from transip_openmm.training.config import config_from_dict
from transip_openmm.training.dataset import Molecule, MoleculeDataset
from transip_openmm.training.readers import read_dataset
from transip_openmm.training.splits import (
    block_split,
    config_parts,
    family_split,
    molecule_key,
    molecule_split,
    held_out_test,
)

SPICE = "spice/SPICE_Amino_Acid_Ligand_v1_0_spice_HHT_LEU"


def _mol(family: str, numbers=(6, 1, 1, 1, 1), i: int = 0) -> Molecule:
    n = len(numbers)
    return Molecule(np.array(numbers), np.random.default_rng(i).normal(size=(n, 3)), -1.0, np.zeros((n, 3)),
                    family=family, index=i)


def _mixed(n_copies: int = 4) -> MoleculeDataset:
    """SPICE conformers, ani2x/geom records of shared formulas, orbnet CHEMBL families."""
    mols = []
    for k in range(n_copies):
        mols += [_mol(f"{SPICE}_{k}", i=k), _mol(f"spice/SPICE_Solvated_PubChem_spice_solvated_1351_{k}", (8, 1, 1), k),
                 _mol(f"ani2x/ani2x_017_{90 + k}", (7, 1, 1, 1), k), _mol(f"geom_orca6/geom_10{k}", (6, 6, 8), k),
                 _mol(f"orbnet_denali/CHEMBL{k}", (6, 8, 1, 1), k),
                 _mol(f"orbnet_denali/CHEMBL{k}", (6, 8, 1, 1), k + 9)]
    return MoleculeDataset(mols)


def test_molecule_key_groups_conformers():
    assert molecule_key(_mol(f"{SPICE}_0")) == molecule_key(_mol(f"{SPICE}_2")) == SPICE
    assert molecule_key(_mol("ani2x/ani2x_017_90", (7, 1, 1, 1))) == "ani2x/H3N"
    assert molecule_key(_mol("ani2x/ani2x_024_98", (7, 1, 1, 1))) == "ani2x/H3N"
    assert molecule_key(_mol("geom_orca6/geom_1", (6, 6, 8, 1))) != molecule_key(_mol("geom_orca6/geom_2", (6, 8, 1)))
    assert molecule_key(_mol("orbnet_denali/CHEMBL5")) == "orbnet_denali/CHEMBL5"
    assert molecule_key(_mol("dataset_acac_train_300K")) == "dataset_acac_train_300K"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_molecule_in_two_parts_and_conformers_together(seed):
    data = _mixed()
    split = molecule_split(data, 0.2, 0.2, seed)
    parts = [split.train, split.val, split.test]
    assert sorted(split.train + split.val + split.test) == list(range(len(data)))
    assert all(parts), "every part gets at least one molecule"
    keys = [{molecule_key(data[i]) for i in p} for p in parts]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    where = {}
    for name, p in zip("tvs", parts):
        for i in p:
            where.setdefault(molecule_key(data[i]), set()).add(name)
    assert all(len(v) == 1 for v in where.values())
    fams = {data[i].family for i in split.test}
    if f"{SPICE}_0" in fams:  # the conformers of HHT_LEU are all in the same part
        assert {f"{SPICE}_{k}" for k in range(4)} <= fams


def test_family_split_two_way_and_single_molecule_error():
    data = _mixed()
    train, val = family_split(data, 0.3, seed=1)
    assert sorted(train + val) == list(range(len(data))) and val
    with pytest.raises(ValueError, match="famil"):
        family_split(MoleculeDataset([_mol(f"{SPICE}_0"), _mol(f"{SPICE}_1")]), 0.5)


def test_block_split_is_contiguous():
    split = block_split(100, 0.1, 0.2)
    assert split.train == list(range(70)) and split.val == list(range(70, 80)) and split.test == list(range(80, 100))
    with pytest.raises(ValueError):
        block_split(3, 0.1, 0.1)


def test_config_holds_test_out_of_training_and_validation(tmp_path):
    # acac_mini is one trajectory (one molecule): block split of the training file
    cfg = config_from_dict({"data": {"root": str(TEST_DATA), "train": ["acac_mini.xyz"], "split": "block",
                                     "val_fraction": 0.25, "test_fraction": 0.25}}, tmp_path)
    full = read_dataset(TEST_DATA / "acac_mini.xyz")
    train, val, test = config_parts(cfg, full)
    assert (len(train), len(val), len(test)) == (4, 2, 2)
    hashes = [{m.positions.tobytes() for m in part} for part in (train, val, test)]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])
    assert [m.positions.tobytes() for m in held_out_test(cfg)] == [m.positions.tobytes() for m in test]
