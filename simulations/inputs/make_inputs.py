"""Rebuild the input structures in this folder (provenance; not needed at run time).

Run from the repository root: ``python simulations/inputs/make_inputs.py``. Needs the
reference data in ``../shared/data`` and, for the Li+/EC cluster only, RDKit.

* ``alanine-dipeptide.pdb``: copied from openmmtools (``data/alanine-dipeptide-gbsa``).
* ``serine-dipeptide-water.pdb``: conformation 0 of ``SER`` in SPICE
  ``solvated-amino-acids.hdf5`` (positions stored in nm, as the dataset's ``units``
  attribute says; capped Ace-Ser-Nme + 20 waters); residues split into
  ACE/SER/NME/HOH by the bond graph, atom names taken from the Amber14 templates.
* ``nacl-pair.pdb``: conformation 0 of ``[Na+:1].[Cl-:2]`` in SPICE ``ions.hdf5``.
* ``li-ec4.xyz``: Li+ with four ethylene carbonate (EC) molecules. One EC conformer from
  RDKit (ETKDG embedding + MMFF94 optimisation); four copies placed tetrahedrally with the
  carbonyl O pointing at Li+ at Li-O = 1.95 Å (the Li-O distance of Li+(EC)4 in DFT and
  neutron-diffraction studies, 1.9-2.0 Å) along the C=O axis.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
from openmm import app, unit

from transip_openmm.units import BOHR_TO_ANGSTROM, NM_TO_ANGSTROM

HERE = Path(__file__).resolve().parent
SPICE = Path("../shared/data/spice_geometries")


def _spice(file: str, key: str, conf: int = 0):
    with h5py.File(SPICE / file) as f:
        smiles = f[key]["smiles"][()]
        smiles = smiles[0] if isinstance(smiles, np.ndarray) else smiles
        data = f[key]["conformations"]
        # the files carry their unit as an attribute ("nanometers"); bohr if absent
        to_angstrom = {"nanometers": NM_TO_ANGSTROM, "bohr": BOHR_TO_ANGSTROM}[data.attrs.get("units", "bohr")]
        xyz = np.asarray(data[conf]) * to_angstrom
    return smiles.decode(), xyz


def _graph_from_smiles(smiles: str):
    """Elements and bonds (indices = atom map number - 1) of a fully mapped SMILES."""
    from rdkit import Chem

    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.MolFromSmiles(smiles, params)
    order = {a.GetIdx(): a.GetAtomMapNum() - 1 for a in mol.GetAtoms()}
    elements = [""] * mol.GetNumAtoms()
    for a in mol.GetAtoms():
        elements[order[a.GetIdx()]] = a.GetSymbol()
    bonds = [(order[b.GetBeginAtomIdx()], order[b.GetEndAtomIdx()]) for b in mol.GetBonds()]
    return elements, bonds


def capped_amino_acid_pdb(key: str, out: Path) -> None:
    smiles, xyz = _spice("solvated-amino-acids.hdf5", key)
    elements, bonds = _graph_from_smiles(smiles)
    n = len(elements)
    nbrs = {i: set() for i in range(n)}
    for i, j in bonds:
        nbrs[i].add(j)
        nbrs[j].add(i)
    # connected components: waters and the peptide
    comp, seen = [], set()
    for i in range(n):
        if i in seen:
            continue
        stack, c = [i], []
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            c.append(k)
            stack.extend(nbrs[k])
        comp.append(sorted(c))
    peptide = max(comp, key=len)
    # caps: ACE = methyl C bonded to carbonyl C that is bonded to N; NME = methyl C bonded to N
    def heavy(i):
        return [j for j in nbrs[i] if elements[j] != "H"]

    def hyd(i):
        return [j for j in nbrs[i] if elements[j] == "H"]

    methyls = [i for i in peptide if elements[i] == "C" and len(hyd(i)) == 3]
    ace_c = nme_c = None
    for m in methyls:
        (h,) = heavy(m)
        neighbours = {elements[j] for j in heavy(h)}
        if elements[h] == "C" and "O" in neighbours and "N" in neighbours:
            ace_c = (m, h)
        if elements[h] == "N":
            nme_c = (m, h)
    ace = {ace_c[0], ace_c[1], *hyd(ace_c[0]), *[j for j in heavy(ace_c[1]) if elements[j] == "O"]}
    nme = {nme_c[0], nme_c[1], *hyd(nme_c[0]), *hyd(nme_c[1])}
    residues = [("ACE", sorted(ace)), (key, sorted(set(peptide) - ace - nme)), ("NME", sorted(nme))]
    residues += [("HOH", c) for c in comp if c is not peptide]

    top = app.Topology()
    chain = top.addChain()
    atoms = {}
    for resname, idx in residues:
        res = top.addResidue(resname, chain)
        for i in idx:
            atoms[i] = top.addAtom(f"{elements[i]}{i}", app.Element.getBySymbol(elements[i]), res)
    for i, j in bonds:
        top.addBond(atoms[i], atoms[j])
    # name atoms after the matching Amber14 template (matching is by bond graph + elements)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    bonded = ff._buildBondedToAtomList(top)
    for res in top.residues():
        template, match = ff._getResidueTemplateMatches(res, bonded)
        if template is None:
            raise RuntimeError(f"no Amber14 template matches residue {res.name}")
        for atom, t_index in zip(res.atoms(), match):
            atom.name = template.atoms[t_index].name
    order = [atoms[i].index for i in range(n)]
    positions = np.zeros((n, 3))
    positions[order] = xyz
    with open(out, "w") as fh:
        app.PDBFile.writeFile(top, positions * unit.angstrom, fh)


def ion_pair_pdb(key: str, out: Path) -> None:
    smiles, xyz = _spice("ions.hdf5", key)
    top = app.Topology()
    chain = top.addChain()
    for sym in re.findall(r"\[([A-Z][a-z]?)[+-]", smiles):
        res = top.addResidue(sym.upper(), chain)
        top.addAtom(sym.upper(), app.Element.getBySymbol(sym), res)
    with open(out, "w") as fh:
        app.PDBFile.writeFile(top, xyz * unit.angstrom, fh)


def li_ec_xyz(out: Path, n_ec: int = 4, li_o: float = 1.95) -> None:
    import ase
    from ase.io import write
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("O=C1OCCO1"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    o_carbonyl, c_carbonyl = 0, 1
    axis = pos[o_carbonyl] - pos[c_carbonyl]
    axis /= np.linalg.norm(axis)
    directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / np.sqrt(3)
    all_symbols, all_pos = ["Li"], [np.zeros(3)]
    for d in directions[:n_ec]:
        # rotate so that the C=O axis points from the molecule towards Li (i.e. along -d)
        target = -d
        v = np.cross(axis, target)
        c = float(np.dot(axis, target))
        vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        rot = np.eye(3) + vx + vx @ vx / (1 + c)
        placed = (pos - pos[o_carbonyl]) @ rot.T + d * li_o
        all_symbols += symbols
        all_pos += list(placed)
    atoms = ase.Atoms(all_symbols, positions=np.array(all_pos))
    d = atoms.get_all_distances()
    np.fill_diagonal(d, 10)
    assert d.min() > 0.9, d.min()
    write(out, atoms, format="xyz", comment="Li+(EC)4 cluster, charge +1, multiplicity 1")


def main() -> None:
    import openmmtools

    src = Path(openmmtools.__file__).parent / "data" / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb"
    shutil.copy(src, HERE / "alanine-dipeptide.pdb")
    capped_amino_acid_pdb("SER", HERE / "serine-dipeptide-water.pdb")
    ion_pair_pdb("[Na+:1].[Cl-:2]", HERE / "nacl-pair.pdb")
    li_ec_xyz(HERE / "li-ec4.xyz")


if __name__ == "__main__":
    main()
