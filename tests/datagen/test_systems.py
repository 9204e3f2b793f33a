"""Starting structures: charges, multiplicities, chemistry."""

import numpy as np
import pytest
from ase.data import covalent_radii

from transip_openmm.data import electrolytes, peptides, water
from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import Structure, check_charge_multiplicity, molecules
from transip_openmm.data.systems import make_system

CHARGED = {"ASP": -1, "GLU": -1, "LYS": 1, "ARG": 1, "HIP": 1}


def _parity_ok(s: Structure) -> bool:
    return (int(s.atoms.numbers.sum()) - s.charge) % 2 == (s.multiplicity - 1) % 2


@pytest.mark.parametrize("residue", peptides.ALL_RESIDUES)
def test_capped_amino_acids_have_their_charge(residue):
    s = peptides.build_capped_peptide([residue], seed=1)
    assert s.charge == CHARGED.get(residue, 0)
    assert s.multiplicity == 1 and _parity_ok(s)
    assert len(molecules(s.atoms)) == 1  # one covalent molecule: hydrogens attached, no fragments
    assert s.family == f"gen_peptide/ACE-{residue}-NME"


def test_residues_are_l_amino_acids():
    from rdkit import Chem

    for residue in peptides.ALL_RESIDUES:
        mol = Chem.MolFromSmiles(peptides.capped_peptide_smiles([residue]))
        centres = dict(Chem.FindMolChiralCenters(mol))
        alpha = 7 if residue == "PRO" else 4  # index of Cα in the SMILES
        if residue == "GLY":
            assert not centres
        else:  # L: S, except cysteine (R by the CIP rules)
            assert centres[alpha] == ("R" if residue == "CYS" else "S"), residue
    thr = dict(Chem.FindMolChiralCenters(Chem.MolFromSmiles(peptides.capped_peptide_smiles(["THR"]))))
    assert thr[5] == "R"  # (2S,3R)-threonine, not allo-threonine


def test_dipeptide_charge_and_hydrogens():
    s = peptides.build_capped_peptide(["ARG", "GLU"], seed=2)
    assert s.charge == 0 and s.family == "gen_peptide/ACE-ARG-GLU-NME"
    assert s.atoms.get_chemical_formula() == "C14H26N6O5"  # ACE C2H3O + Arg⁺ C6H13N4O + Glu⁻ C5H6NO3 + NME CH4N


@pytest.mark.parametrize("ion", list(water.IONS))
def test_ion_water_clusters(ion):
    s = water.ion_water_cluster(ion, 4, np.random.default_rng(0))
    z, charge, shell = water.IONS[ion]
    assert s.charge == charge and s.multiplicity == 1 and _parity_ok(s)
    assert s.atoms.numbers[-1] == z and len(s.atoms) == 13
    d = np.linalg.norm(s.atoms.positions[:-1] - s.atoms.positions[-1], axis=1)
    assert d[0::3].min() > shell - 0.31  # no O inside the first shell
    assert d.min() > 1.2  # an H bonded to an anion sits ~1.5 Å from it, never on top


def test_water_clusters_are_whole_molecules():
    rng = np.random.default_rng(1)
    for n in (2, 17, 64):
        s = water.water_cluster(n, rng)
        assert len(s.atoms) == 3 * n and s.charge == 0
        oh = np.linalg.norm(s.atoms.positions[1::3] - s.atoms.positions[0::3], axis=1)
        assert oh.max() < 1.1
    cut = water.water_cutout(5.0, rng)
    assert len(cut.atoms) % 3 == 0 and len(cut.atoms) >= 30


@pytest.mark.parametrize("anion,charge", [("PF6-", 0), ("BF4-", 0), (None, 1)])
def test_electrolyte_clusters(anion, charge):
    rng = np.random.default_rng(2)
    s = electrolytes.electrolyte_cluster("Li+", ["EC", "PC", "DMC", "EMC"], anion, rng)
    assert s.charge == charge and _parity_ok(s)
    radii = covalent_radii[s.atoms.numbers]
    d = np.linalg.norm(s.atoms.positions[:, None] - s.atoms.positions[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (d / (radii[:, None] + radii[None, :])).min() > 0.6  # no overlapping atoms
    li_o = np.linalg.norm(s.atoms.positions[s.atoms.numbers == 8] - s.atoms.positions[0], axis=1)
    assert np.sum(li_o < 2.0) == 4  # four carbonyl O at the Li⁺


def test_wrong_multiplicity_is_refused():
    with pytest.raises(DataGenError, match="multiplicity"):
        check_charge_multiplicity([8, 1, 1], 0, 2, "water")
    with pytest.raises(DataGenError, match="multiplicity"):
        check_charge_multiplicity([8, 1, 1], 1, 1, "water cation")
    check_charge_multiplicity([8, 1, 1], 1, 2, "water cation")


def test_system_builders_cover_choices_round_robin(tmp_path):
    build = make_system({"kind": "ion_water", "ions": ["Na+", "Cl-"], "n_waters": [2, 2]}, tmp_path, "s")
    charges = [build(i, np.random.default_rng(i)).charge for i in range(4)]
    assert charges == [1, -1, 1, -1]
    with pytest.raises(DataGenError, match="unknown ions|unknown"):
        make_system({"kind": "ion_water", "ions": ["Xx+"]}, tmp_path, "jobs[0].system")
    with pytest.raises(DataGenError, match="kind"):
        make_system({"kind": "protein"}, tmp_path, "jobs[0].system")


def test_omol25_seeds_leave_out_held_out_molecules(tmp_path):
    from transip_openmm.data.seeds import omol25_seeds

    from datagen_helpers import DATA

    import shutil

    path = shutil.copy(DATA / "omol25_mini.aselmdb", tmp_path)  # a copy: the training reader leaves its LMDB open
    everything = omol25_seeds((path,), 0.0, 0.0, 0)
    training = omol25_seeds((path,), 0.2, 0.2, 0)
    assert len(everything) == 8 and 0 < len(training) < 8
    assert all(_parity_ok(s) for s in training)
