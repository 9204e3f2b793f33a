"""Capped amino acids (ACE-X-NME) and capped dipeptides (ACE-X-Y-NME) with hydrogens.

Built from SMILES with RDKit (ETKDG embedding, then an MMFF94 relaxation), L-amino acids,
in the protonation states of the Amber residue names: ASP/GLU (−1), ASH/GLH (neutral),
LYS (+1), LYN (neutral), ARG (+1), HID/HIE (neutral, H on Nδ/Nε), HIP (+1), CYS, and the
other standard residues. The total charge is the sum of the formal charges; every one is
closed shell (multiplicity 1). The embedding is seeded, so a structure is a function of
the seed.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from ase import Atoms

from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import Structure

#: residue -> side chain SMILES attached to Cα ({r} / {s}: ring-closure labels). Glycine and
#: proline are written out in :func:`residue_smiles`.
SIDE_CHAINS: Dict[str, str] = {
    "ALA": "C",
    "ARG": "CCCNC(N)=[NH2+]",
    "ASN": "CC(N)=O",
    "ASP": "CC(=O)[O-]",
    "ASH": "CC(=O)O",
    "CYS": "CS",
    "GLN": "CCC(N)=O",
    "GLU": "CCC(=O)[O-]",
    "GLH": "CCC(=O)O",
    "HID": "Cc{r}[nH]cnc{r}",
    "HIE": "Cc{r}nc[nH]c{r}",
    "HIP": "Cc{r}[nH]c[nH+]c{r}",
    "ILE": "[C@@H](C)CC",
    "LEU": "CC(C)C",
    "LYS": "CCCC[NH3+]",
    "LYN": "CCCCN",
    "MET": "CCSC",
    "PHE": "Cc{r}ccccc{r}",
    "SER": "CO",
    "THR": "[C@@H](C)O",
    "TRP": "Cc{r}c[nH]c{s}ccccc{r}{s}",
    "TYR": "Cc{r}ccc(O)cc{r}",
    "VAL": "C(C)C",
}
#: the 20 standard residues in their usual state at pH 7 (HIE for histidine)
STANDARD = ["ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIE", "ILE",
            "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL"]
#: every residue this module builds: the standard ones plus protonation variants
ALL_RESIDUES = sorted(set(STANDARD) | set(SIDE_CHAINS) | {"GLY", "PRO"})


def residue_smiles(name: str, position: int) -> str:
    """Backbone-plus-side-chain SMILES of one residue, N first, ending at the carbonyl C(=O).

    ``position`` (0, 1, ...) keeps ring-closure labels of different residues apart.
    """
    r, s = f"%{10 + 2 * position}", f"%{11 + 2 * position}"
    if name == "GLY":
        return "NCC(=O)"
    if name == "PRO":
        return f"N{r}CCC[C@H]{r}C(=O)"
    if name not in SIDE_CHAINS:
        raise DataGenError(f"unknown residue {name!r} in the config's residues; known: {', '.join(ALL_RESIDUES)}")
    return f"N[C@@H]({SIDE_CHAINS[name].format(r=r, s=s)})C(=O)"


def capped_peptide_smiles(residues: Sequence[str]) -> str:
    """SMILES of ACE-(residues)-NME."""
    return "CC(=O)" + "".join(residue_smiles(n, i) for i, n in enumerate(residues)) + "NC"


def build_capped_peptide(residues: Sequence[str], seed: int) -> Structure:
    """3-D structure of ACE-(residues)-NME with hydrogens (RDKit ETKDG + MMFF94), positions Å."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    name = "-".join(["ACE", *residues, "NME"])
    mol = Chem.AddHs(Chem.MolFromSmiles(capped_peptide_smiles(residues)))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31 - 1)
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise DataGenError(f"RDKit could not embed {name}; drop it from the config's residues")
    AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    positions = mol.GetConformer().GetPositions()
    charge = int(Chem.GetFormalCharge(mol))
    return Structure(Atoms(numbers=numbers, positions=positions), charge, 1, f"gen_peptide/{name}")


def residue_list(spec: object, where: str) -> List[str]:
    """Residue names from a config value: ``all`` (standard + variants), ``standard`` or a list."""
    if spec in (None, "all"):
        return list(ALL_RESIDUES)
    if spec == "standard":
        return list(STANDARD)
    if isinstance(spec, (list, tuple)):
        names = [str(n).upper() for n in spec]
        unknown = [n for n in names if n not in ALL_RESIDUES]
        if unknown:
            raise DataGenError(f"{where}: unknown residues {unknown}; known: {', '.join(ALL_RESIDUES)}")
        return names
    raise DataGenError(f"{where}: residues must be 'all', 'standard' or a list of residue names, got {spec!r}")
