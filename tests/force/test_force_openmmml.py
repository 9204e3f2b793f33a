"""openmm-ml plugin: MLPotential("transip", modelPath=...) and mechanical-embedding ML/MM."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
from force_helpers import (
    atomic_numbers,
    energy_forces,
    positions_nm,
    python_model_energy_forces,
    tolerances,
)


@pytest.fixture(scope="module")
def solvated_pair(alanine):
    """Alanine dipeptide plus one TIP3P water (placed by Modeller), no box: (topology, positions nm)."""
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    modeller = app.Modeller(alanine.topology, alanine.positions)
    modeller.addSolvent(forcefield, numAdded=1, neutralize=False)
    modeller.topology.setPeriodicBoxVectors(None)
    return modeller.topology, np.array(modeller.getPositions().value_in_unit(u.nanometer))


def test_createsystem_matches_transipforce(alanine, generic64):
    from openmmml import MLPotential

    potential = MLPotential("transip", modelPath=str(generic64))
    system = potential.createSystem(alanine.topology)
    pos = positions_nm(alanine)
    e, f = energy_forces(system, pos)
    z = atomic_numbers(alanine.topology)
    e_ref, f_ref = python_model_energy_forces(z, pos)
    energy_tol, force_tol = tolerances("float64", z, e_ref, f_ref)
    assert abs(e - e_ref) <= energy_tol
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=force_tol)


def test_mixed_system_mm_part_matches_plain_openmm(solvated_pair, generic64):
    """Water is ML, the dipeptide MM (mechanical embedding, no cutoff).

    MM part of the mixed system == plain OpenMM of everything minus plain OpenMM of the water
    alone (its internal MM terms are what openmm-ml removes); ML part == the model on the water.
    """
    from openmmml import MLPotential

    topology, pos = solvated_pair
    water = [a.index for a in topology.atoms() if a.residue.name == "HOH"]
    assert len(water) == 3
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    kwargs = dict(nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    mm_system = forcefield.createSystem(topology, **kwargs)
    mixed = MLPotential("transip", modelPath=str(generic64)).createMixedSystem(
        topology, mm_system, water, forceGroup=1)
    for i in range(mixed.getNumForces()):
        if not isinstance(mixed.getForce(i), (openmm.PythonForce,)) and mixed.getForce(i).getName() != "TransIP":
            mixed.getForce(i).setForceGroup(0)
    e_mm_part, f_mm_part = energy_forces(mixed, pos, groups={0})
    e_ml_part, f_ml_part = energy_forces(mixed, pos, groups={1})

    e_full, f_full = energy_forces(mm_system, pos)
    water_top = app.Topology()
    chain = water_top.addChain()
    residue = water_top.addResidue("HOH", chain)
    atoms = list(topology.atoms())
    new = [water_top.addAtom(atoms[i].name, atoms[i].element, residue) for i in water]
    water_top.addBond(new[0], new[1])
    water_top.addBond(new[0], new[2])
    e_water, _ = energy_forces(forcefield.createSystem(water_top, **kwargs), pos[water])
    assert e_mm_part == pytest.approx(e_full - e_water, abs=1e-6)

    z = atomic_numbers(topology)
    e_ref, f_ref = python_model_energy_forces([z[i] for i in water], pos[water])
    energy_tol, force_tol = tolerances("float64", [z[i] for i in water], e_ref, f_ref)
    assert abs(e_ml_part - e_ref) <= energy_tol
    np.testing.assert_allclose(f_ml_part[water], f_ref, rtol=0, atol=force_tol)
    others = [i for i in range(len(z)) if i not in water]
    assert np.all(f_ml_part[others] == 0.0)
    # Forces on the dipeptide from the MM part equal plain OpenMM's (water-internal terms act on water only).
    np.testing.assert_allclose(f_mm_part[others], f_full[others], atol=1e-6)


def test_mixed_system_python_backend_equals_torch(solvated_pair, generic64):
    from openmmml import MLPotential

    topology, pos = solvated_pair
    water = [a.index for a in topology.atoms() if a.residue.name == "HOH"]
    mm_system = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml").createSystem(
        topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    results = []
    for backend in ("torch", "python"):
        mixed = MLPotential("transip", modelPath=str(generic64)).createMixedSystem(
            topology, mm_system, water, backend=backend)
        results.append(energy_forces(mixed, pos))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)
