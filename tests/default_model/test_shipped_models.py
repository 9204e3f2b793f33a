"""The shipped models: present in the installation, loadable by name, sane physics on molecules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from transip_openmm import SHIPPED_MODELS, TransIPForce, default_model_path, shipped_model_path
from transip_openmm.artifacts import read_exported_metadata

ALA = Path(__file__).resolve().parents[1] / "data" / "alanine_dipeptide.pdb"
OMOL25_ELEMENTS = {1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53}
SHIPPED = pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))


@SHIPPED
def test_shipped_model_is_small_and_described(name):
    path = shipped_model_path(name)
    assert path.stat().st_size < 5 * 2**20
    meta = read_exported_metadata(path)
    assert set(meta["elements"]) == OMOL25_ELEMENTS
    assert meta["symmetry"] == {"default": "transip", "local": "augment"}[name]  # as their model cards say
    assert meta["system"] is None  # generic: any topology of supported elements
    assert (path.parent / "MODEL_CARD.md").is_file()
    train_config = meta["train_config"]  # portable: no path of the machine it was trained on
    assert "config_dir" not in train_config and not Path(train_config["data"]["root"]).is_absolute()
    for key in ("force_mae_meV_per_A", "energy_mae_meV_per_atom", "force_cos_mean"):
        assert np.isfinite(meta["validation_metrics"][key])


def test_default_model_path_is_the_default_shipped_model():
    assert default_model_path() == shipped_model_path("default")


def _context(pdb: app.PDBFile, name: str) -> openmm.Context:
    system = openmm.System()
    for atom in pdb.topology.atoms():
        system.addParticle(atom.element.mass)
    system.addForce(TransIPForce(name, pdb.topology))
    integrator = openmm.VerletIntegrator(0.0005)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pdb.positions)
    return context


@SHIPPED
def test_shipped_model_energy_is_translation_invariant_and_forces_finite(name):
    pdb = app.PDBFile(str(ALA))
    context = _context(pdb, name)
    state = context.getState(getEnergy=True, getForces=True)
    e0 = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    assert np.all(np.isfinite(forces))
    # an equilibrium-like geometry: no force near the scale of a broken structure (eV/Å ~ 1e3)
    assert np.abs(forces).max() < 5e3
    shifted = pdb.getPositions(asNumpy=True) + np.array([0.7, -1.3, 2.1]) * unit.nanometer
    context.setPositions(shifted)
    e1 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert e1 == pytest.approx(e0, abs=1e-2)


@SHIPPED
def test_shipped_model_repels_atoms_pushed_together(name):
    """Compressing a C-H bond to 0.5 Å must cost energy (ZBL prior + learned repulsion)."""
    pdb = app.PDBFile(str(ALA))
    context = _context(pdb, name)
    positions = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    atoms = list(pdb.topology.atoms())
    c, h = next((b[0].index, b[1].index) for b in pdb.topology.bonds()
                if {b[0].element.symbol, b[1].element.symbol} == {"C", "H"})
    if atoms[c].element.symbol == "H":
        c, h = h, c
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    squeezed = positions.copy()
    direction = squeezed[h] - squeezed[c]
    squeezed[h] = squeezed[c] + direction / np.linalg.norm(direction) * 0.05
    context.setPositions(squeezed)
    e1 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert e1 > e0 + 100.0


def _bond_ratios(pdb: app.PDBFile, positions: np.ndarray) -> np.ndarray:
    pairs = np.array([[a.index, b.index] for a, b in pdb.topology.bonds()])
    start = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    d0 = np.linalg.norm(start[pairs[:, 0]] - start[pairs[:, 1]], axis=1)
    return np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1) / d0


@SHIPPED
def test_shipped_model_minimiser_keeps_every_bond(name):
    """Energy minimisation of alanine dipeptide must not break or badly stretch any bond
    (the failure of a model without bond stiffness: the minimiser pulls the molecule apart)."""
    pdb = app.PDBFile(str(ALA))
    context = _context(pdb, name)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    minimised = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    ratios = _bond_ratios(pdb, minimised)
    assert ratios.max() < 1.15 and ratios.min() > 0.85


@SHIPPED
@pytest.mark.parametrize("shift_nm", [-0.02, 0.02])
def test_shipped_model_backbone_bond_sits_in_a_well(name, shift_nm):
    """Rigidly moving the C-terminal half along CA->C (stretching or compressing the C-C bond
    by 0.2 Å) raises the energy."""
    pdb = app.PDBFile(str(ALA))
    context = _context(pdb, name)
    atoms = list(pdb.topology.atoms())
    ca = next(a.index for a in atoms if a.name == "CA")
    c = next(a.index for a in atoms if a.name == "C" and a.residue.name == "ALA")
    moved = [a.index for a in atoms if a.residue.name == "NME" or (a.residue.name == "ALA" and a.name in ("C", "O"))]
    positions = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    direction = (positions[c] - positions[ca]) / np.linalg.norm(positions[c] - positions[ca])
    shifted = positions.copy()
    shifted[moved] += shift_nm * direction
    context.setPositions(shifted)
    e1 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert e1 > e0 + 10.0
