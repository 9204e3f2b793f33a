"""Readers: counts, units, charge/multiplicity, family keys, bad-record errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from training_helpers import TEST_DATA, shared
from transip_openmm.training.dataset import DataError
from transip_openmm.training.readers import (
    omol25_family,
    read_aselmdb,
    read_dataset,
    read_extxyz,
    read_spice_hdf5,
    smiles_formal_charge,
)

from transip_openmm.units import (
    BOHR_TO_ANGSTROM,
    HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
    HARTREE_TO_EV,
)


def test_omol25_mini_reader():
    data = read_aselmdb(TEST_DATA / "omol25_mini.aselmdb")
    assert len(data) == 8
    assert all(m.charge == 0 and m.multiplicity == 1 for m in data)
    assert all(m.forces.shape == (m.n_atoms, 3) for m in data)
    # absolute ωB97M-V energies in eV (not Hartree): between -1e5 eV per atom (an all-electron
    # Br is about -7e4 eV) and -10 eV per atom (H is about -13.6 eV)
    assert all(-1e5 * m.n_atoms < m.energy < -10 * m.n_atoms for m in data)
    assert {f.split("/")[0] for f in data.families} == {"orbnet_denali", "ani2x", "geom_orca6", "spice"}


def test_omol25_family_keys():
    assert omol25_family("geom_orca6/geom_104431787_0_1/orca.tar.zst") == "geom_orca6/geom_104431787"
    src = "orbnet_denali/orbnet_saltcomplex_10841_CHEMBL4287513_Fluoride_dac9_29370_0_1/orca.tar.zst"
    assert omol25_family(src) == "orbnet_denali/CHEMBL4287513"
    assert omol25_family("spice/SPICE_x_spice_0RB_GLY_0_-1_2/orca.tar.zst") == "spice/SPICE_x_spice_0RB_GLY_0"


def test_extxyz_charge_and_multiplicity_spellings(tmp_path):
    data = read_extxyz(TEST_DATA / "omol25_noble_gas_compounds.xyz")
    charges = sorted({m.charge for m in data})
    assert charges == [-1, 0, 1]  # file uses total_charge_e
    assert all(m.multiplicity == 1 for m in data)
    text = (
        "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 charge=-1 spin=2 pbc=\"F F F\"\n"
        "H 0 0 0 0.1 0 0\nH 0 0 0.74 -0.1 0 0\n"
        "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 total_charge=-2 multiplicity=3 pbc=\"F F F\"\n"
        "H 0 0 0 0.1 0 0\nH 0 0 0.74 -0.1 0 0\n"
    )
    path = tmp_path / "h2.xyz"
    path.write_text(text)
    d = read_extxyz(path)
    assert [(m.charge, m.multiplicity) for m in d] == [(-1, 2), (-2, 3)]
    assert d[0].energy == -1.5
    np.testing.assert_allclose(d[0].forces[0], [0.1, 0, 0])


def test_spice_hdf5_units_and_charge():
    path = TEST_DATA / "spice_mini.hdf5"
    data = read_spice_hdf5(path)
    assert len(data) == 6
    with h5py.File(path) as f:
        g = f["103147721"]
        e_h = g["dft_total_energy"][0]
        grad = g["dft_total_gradient"][0]
        x_bohr = g["conformations"][0]
    m = data[0]
    assert m.energy == pytest.approx(e_h * HARTREE_TO_EV, rel=1e-12)
    assert HARTREE_TO_EV == pytest.approx(27.211386, rel=1e-6)
    np.testing.assert_allclose(m.forces, -grad * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, rtol=1e-6)
    np.testing.assert_allclose(m.positions, x_bohr * BOHR_TO_ANGSTROM, rtol=1e-6)
    assert all(mol.charge == 1 and mol.multiplicity == 1 for mol in data)  # +1 cation, Na+ complex


def test_smiles_formal_charge():
    assert smiles_formal_charge("[H:3][C:1]#[C:2][H:4].[Na+:5]") == 1
    assert smiles_formal_charge("[O-:1][N+:2](=[O:3])[O-:4]") == -1
    assert smiles_formal_charge("[Mg+2:1].[Cl-:2].[Cl-:3]") == 0
    assert smiles_formal_charge("CCO") == 0


def _write_xyz(tmp_path, forces_line="0.1 0 0", energy="energy=-1.5 ", species="H"):
    path = tmp_path / "bad.xyz"
    good = "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc=\"F F F\"\nH 0 0 0 0 0 0\nH 0 0 0.7 0 0 0\n"
    bad = (f"2\nProperties=species:S:1:pos:R:3:forces:R:3 {energy}pbc=\"F F F\"\n"
           f"{species} 0 0 0 {forces_line}\nH 0 0 0.74 -0.1 0 0\n")
    path.write_text(good + bad)
    return path


def test_bad_records_name_file_and_record(tmp_path):
    with pytest.raises(DataError, match=r"bad\.xyz, record 1: forces contain NaN"):
        read_extxyz(_write_xyz(tmp_path, forces_line="nan 0 0"))
    with pytest.raises(DataError, match=r"bad\.xyz, record 1: no energy"):
        read_extxyz(_write_xyz(tmp_path, energy=""))
    with pytest.raises(DataError, match=r"bad\.xyz, record 1: element\(s\) O \(Z=8\)"):
        read_extxyz(_write_xyz(tmp_path, species="O"), elements=[1, 6])
    no_forces = tmp_path / "noforces.xyz"
    no_forces.write_text("1\nenergy=-1.0 pbc=\"F F F\"\nH 0 0 0\n")
    with pytest.raises(DataError, match=r"noforces\.xyz, record 0: no forces"):
        read_extxyz(no_forces)


def test_bad_hdf5_shapes(tmp_path):
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("mol")
        g["atomic_numbers"] = np.array([1, 1])
        g["conformations"] = np.zeros((2, 2, 3))
        g["dft_total_energy"] = np.array([-1.0, -1.0])
        g["dft_total_gradient"] = np.zeros((2, 3, 3))
    with pytest.raises(DataError, match=r"bad\.hdf5 group 'mol', record 0: forces have shape \(3, 3\)"):
        read_spice_hdf5(path)


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unknown data format"):
        read_dataset(tmp_path / "x.csv")


# ---------------------------------------------------------------- the shared reference files
def test_shared_omol25_sample():
    for name in ("data0001.aselmdb", "data0002.aselmdb"):
        data = read_aselmdb(shared(f"omol25_sample/{name}"))
        assert len(data) == 347
        assert all(m.charge == 0 and m.multiplicity == 1 for m in data)
        assert 5 <= data.n_atoms.min() and data.n_atoms.max() <= 110


def test_shared_acac():
    train = read_extxyz(shared("botnet/dataset_acac_train_300K.xyz"))
    test = read_extxyz(shared("botnet/dataset_acac_test_MD_300K.xyz"))
    assert (len(train), len(test)) == (500, 650)
    assert set(train.n_atoms.tolist()) == {15}
    assert train.elements == [1, 6, 8]
    # PBE energies of C5H8O2 in eV (about -9391 eV), forces O(1) eV/Å
    assert all(-9400 < m.energy < -9380 for m in train)
    assert 0.1 < np.sqrt(np.mean(np.concatenate([m.forces for m in train]) ** 2)) < 5


def test_shared_spice_fixture():
    data = read_spice_hdf5(shared("fixtures/SPICE-1.1.4_n2.hdf5"))
    assert len(data) == 55
    assert sorted({m.charge for m in data}) == [1]
    assert sum(m.n_atoms == 5 for m in data) == 5


def test_shared_noble_gas_fixture():
    data = read_extxyz(shared("fixtures/omol25_noble_gas_compounds.xyz"))
    assert 1 in {m.charge for m in data}
