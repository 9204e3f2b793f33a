"""TransIPForce inside OpenMM: agreement with the Python model, -dE/dx, serialisation, NVE."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
from force_helpers import (
    PLATFORMS,
    atomic_numbers,
    bare_system,
    energy_forces,
    export,
    omol25_molecule,
    platform,
    positions_nm,
    python_model_energy_forces,
    tolerances,
)

from transip_openmm import TransIPForce


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", ["torch", "python"])
@pytest.mark.parametrize("platform_name", PLATFORMS)
def test_openmm_matches_python_model(alanine, request, platform_name, backend, dtype):
    """Energy and forces through OpenMM equal the eager float64 model after unit conversion, to
    the precision of the exported model's dtype (:func:`force_helpers.tolerances`; double
    precision platforms pass positions in float64)."""
    platform(platform_name)
    path = request.getfixturevalue("generic64" if dtype == "float64" else "generic32")
    system = bare_system(alanine.topology)
    system.addForce(TransIPForce(path, alanine.topology, backend=backend))
    pos = positions_nm(alanine)
    e, f = energy_forces(system, pos, platform_name)
    z = atomic_numbers(alanine.topology)
    e_ref, f_ref = python_model_energy_forces(z, pos)
    energy_tol, force_tol = tolerances(dtype, z, e_ref, f_ref)
    assert abs(e - e_ref) <= energy_tol, (e - e_ref, energy_tol)
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=force_tol)


def test_omol25_molecule_matches_python_model(generic64):
    topology, pos, _ = omol25_molecule()
    system = bare_system(topology)
    system.addForce(TransIPForce(generic64, topology))
    e, f = energy_forces(system, pos, "Reference")
    z = atomic_numbers(topology)
    e_ref, f_ref = python_model_energy_forces(z, pos)
    energy_tol, force_tol = tolerances("float64", z, e_ref, f_ref)
    assert abs(e - e_ref) <= energy_tol
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=force_tol)


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_forces_are_minus_energy_gradient(alanine, generic64, backend):
    """Central finite differences of OpenMM's energy (float64 model, Reference platform)."""
    system = bare_system(alanine.topology)
    system.addForce(TransIPForce(generic64, alanine.topology, backend=backend))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform("Reference"))
    pos = positions_nm(alanine)
    context.setPositions(pos)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
        u.kilojoule_per_mole / u.nanometer)
    h = 1e-5  # nm
    rng = np.random.default_rng(0)
    for atom in rng.choice(len(pos), size=4, replace=False):
        for dim in range(3):
            energies = []
            for sign in (1, -1):
                shifted = pos.copy()
                shifted[atom, dim] += sign * h
                context.setPositions(shifted)
                energies.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
                    u.kilojoule_per_mole))
            numeric = -(energies[0] - energies[1]) / (2 * h)
            # rounding of the ~1.3e6 kJ/mol total: eps64 * |E| / h ~ 3e-5; truncation O(h^2)
            assert numeric == pytest.approx(forces[atom, dim], abs=1e-4 * max(1.0, abs(forces[atom, dim])))


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_system_xml_round_trip(alanine, generic64, backend):
    """Serialise and deserialise the System: same energy and forces, same force order.

    openmm-torch 1.5 crashes in its own TorchForce deserializer, so TorchForce systems go
    through ``deserialize_system``; PythonForce systems also through plain ``XmlSerializer``.
    """
    from transip_openmm.backends import deserialize_system

    system = bare_system(alanine.topology)
    system.addForce(openmm.CMMotionRemover())
    system.addForce(TransIPForce(generic64, alanine.topology, backend=backend))
    system.getForce(1).setForceGroup(3)
    xml = openmm.XmlSerializer.serialize(system)
    copies = [deserialize_system(xml)]
    if backend == "python":
        copies.append(openmm.XmlSerializer.deserialize(xml))
    pos = positions_nm(alanine)
    e1, f1 = energy_forces(system, pos)
    for copy in copies:
        assert [type(copy.getForce(i)).__name__ for i in range(2)][0] == "CMMotionRemover"
        assert copy.getForce(1).getForceGroup() == 3
        e2, f2 = energy_forces(copy, pos)
        assert e1 == pytest.approx(e2, abs=1e-9)
        np.testing.assert_allclose(f1, f2, atol=1e-9)


def test_backends_agree(alanine, generic32):
    """Both backends run the same float32 module on the same positions: equal to a few eps32."""
    pos = positions_nm(alanine)
    results = {}
    for backend in ("torch", "python"):
        system = bare_system(alanine.topology)
        system.addForce(TransIPForce(generic32, alanine.topology, backend=backend))
        results[backend] = energy_forces(system, pos, "CPU")
    (e_t, f_t), (e_p, f_p) = results["torch"], results["python"]
    energy_tol, force_tol = tolerances("float32", atomic_numbers(alanine.topology), e_t, f_t)
    assert abs(e_t - e_p) <= energy_tol / 10
    np.testing.assert_allclose(f_t, f_p, rtol=0, atol=force_tol / 10)


def test_baked_file_needs_no_topology(alanine, checkpoint, tmp_path, generic64):
    baked = export(checkpoint, tmp_path / "baked.pt", alanine.topology, dtype="float64")
    pos = positions_nm(alanine)
    system = bare_system(alanine.topology)
    system.addForce(TransIPForce(str(baked)))
    reference = bare_system(alanine.topology)
    reference.addForce(TransIPForce(generic64, alanine.topology))
    e1, f1 = energy_forces(system, pos)
    e2, f2 = energy_forces(reference, pos)
    assert e1 == pytest.approx(e2, abs=1e-8)
    np.testing.assert_allclose(f1, f2, atol=1e-8)


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_ml_region_subset(alanine, generic64, backend):
    """atoms= selects the ML region: the others feel no force, energy = model on the subset."""
    topology = alanine.topology
    ml = [a.index for a in topology.atoms() if a.residue.name == "ALA"]
    system = bare_system(topology)
    system.addForce(TransIPForce(generic64, topology, atoms="resname ALA", backend=backend))
    pos = positions_nm(alanine)
    e, f = energy_forces(system, pos)
    z = atomic_numbers(topology)
    e_ref, f_ref = python_model_energy_forces([z[i] for i in ml], pos[ml])
    energy_tol, force_tol = tolerances("float64", [z[i] for i in ml], e_ref, f_ref)
    assert abs(e - e_ref) <= energy_tol
    np.testing.assert_allclose(f[ml], f_ref, rtol=0, atol=force_tol)
    others = [i for i in range(len(z)) if i not in ml]
    assert np.all(f[others] == 0.0)


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_periodic_shift_by_box_vector_changes_nothing(alanine, generic64, backend):
    """Minimum image makes the ML region whole: moving atoms by lattice vectors is invisible."""
    topology = app.Topology()
    topology.__dict__.update(alanine.topology.__dict__)  # shallow copy; box set below
    box = [openmm.Vec3(2.0, 0, 0), openmm.Vec3(0.5, 2.1, 0), openmm.Vec3(-0.4, 0.3, 2.2)] * u.nanometer
    system = bare_system(alanine.topology, box=box)
    system.addForce(TransIPForce(generic64, alanine.topology, backend=backend, periodic=True))
    pos = positions_nm(alanine)
    e0, f0 = energy_forces(system, pos)
    box_nm = np.array([[2.0, 0, 0], [0.5, 2.1, 0], [-0.4, 0.3, 2.2]])
    moved = pos.copy()
    moved[0] += box_nm[0] - 2 * box_nm[2]
    moved[5] += box_nm[1] + box_nm[0]
    moved[13] -= box_nm[2]
    e1, f1 = energy_forces(system, moved)
    assert e1 == pytest.approx(e0, abs=1e-7)
    np.testing.assert_allclose(f1, f0, atol=1e-6)
    e_ref, f_ref = python_model_energy_forces(atomic_numbers(alanine.topology), pos)
    assert abs(e0 - e_ref) <= tolerances("float64", atomic_numbers(alanine.topology), e_ref, f_ref)[0]


def test_nve_energy_conservation(alanine, generic64):
    """Velocity Verlet, 0.25 fs, 400 steps, float64 model on Reference: total energy stays put."""
    system = bare_system(alanine.topology)
    system.addForce(TransIPForce(generic64, alanine.topology, backend="torch"))
    integrator = openmm.VerletIntegrator(0.25 * u.femtosecond)
    context = openmm.Context(system, integrator, platform("Reference"))
    context.setPositions(alanine.positions)
    context.setVelocitiesToTemperature(300 * u.kelvin, 1)
    totals, kinetic = [], []
    for _ in range(40):
        integrator.step(10)
        state = context.getState(getEnergy=True)
        k = state.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        totals.append(k + state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
        kinetic.append(k)
    totals = np.array(totals)
    # Drift and fluctuation of the total energy against the kinetic energy (~80 kJ/mol here).
    # Measured: spread 0.055 kJ/mol against <K> = 114 kJ/mol (5e-4); wrong forces give >> 1e-2.
    assert np.ptp(totals) < 2e-3 * np.mean(kinetic), (np.ptp(totals), np.mean(kinetic))
