"""System building: structures, ML-region selection, mechanical-embedding bookkeeping."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import openmm
import pytest
from openmm import app, unit
from transip_openmm.simulations.protocol import ProtocolError, parse_protocol
from transip_openmm.simulations.systems import (
    build_system,
    load_structure,
    remove_ml_interactions,
    select_ml_atoms,
)

REPO = Path(__file__).resolve().parents[2]
INPUTS = REPO / "simulations" / "inputs"
FF = ["amber14-all.xml", "amber14/tip3p.xml"]


def _energy_forces(system: openmm.System, positions) -> tuple:
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def test_mechanical_embedding_removes_exactly_the_ml_ml_terms() -> None:
    """E_MM(full) = E_MM(full minus ML-ML terms) + E_MM(ML region alone), forces too.

    With the ML region's own MM energy standing in for the ML force, the mixed system must
    reproduce the full MM system: nothing double counted, no ML-MM term lost.
    """
    top, pos = load_structure(INPUTS / "serine-dipeptide-water.pdb")
    ff = app.ForceField(*FF)
    full = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    ml = select_ml_atoms(top, pos, "resname ACE SER NME")
    assert len(ml) == 23
    stripped = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    remove_ml_interactions(stripped, ml)
    modeller = app.Modeller(top, pos * unit.nanometer)
    modeller.delete([r for r in top.residues() if r.name == "HOH"])
    alone = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    e_full, f_full = _energy_forces(full, pos)
    e_stripped, f_stripped = _energy_forces(stripped, pos)
    e_alone, f_alone = _energy_forces(alone, pos[ml])
    assert abs(e_full - e_stripped) > 10.0  # the ML region's MM terms are substantial
    assert e_stripped + e_alone == pytest.approx(e_full, abs=1e-6 * abs(e_full) + 1e-6)
    f_mixed = f_stripped.copy()
    f_mixed[ml] += f_alone
    np.testing.assert_allclose(f_mixed, f_full, atol=1e-6 * np.abs(f_full).max())


def test_mechanical_embedding_with_pme_removes_exactly_the_ml_pair() -> None:
    """Under PME, removing the ML-ML pair (Na+ Cl-) takes away exactly its minimum-image
    Coulomb + LJ energy (direct and reciprocal parts): E_PME(full) - E_PME(embedded) equals
    the pair energy of the two ions alone without cutoff. (Interactions with the periodic
    images of the ML region stay MM, as in any periodic mechanical embedding.)"""
    top, pos = load_structure(INPUTS / "nacl-pair.pdb")
    top.setPeriodicBoxVectors(np.eye(3) * 3.0 * unit.nanometer)
    ff = app.ForceField(*FF)

    def system(method):
        s = ff.createSystem(top, nonbondedMethod=method, nonbondedCutoff=1.2 * unit.nanometer)
        for force in s.getForces():
            if isinstance(force, openmm.NonbondedForce):
                force.setEwaldErrorTolerance(1e-7)
                force.setUseDispersionCorrection(False)
        return s

    for shift in (0.0, 0.3):
        positions = pos.copy()
        positions[1] += [0.0, 0.0, shift]
        e_full, _ = _energy_forces(system(app.PME), positions)
        embedded = system(app.PME)
        remove_ml_interactions(embedded, [0, 1])
        e_embedded, _ = _energy_forces(embedded, positions)
        e_pair, _ = _energy_forces(system(app.NoCutoff), positions)
        assert e_full - e_embedded == pytest.approx(e_pair, rel=1e-4)


def test_ml_shell_grows_by_whole_residues() -> None:
    top, pos = load_structure(INPUTS / "serine-dipeptide-water.pdb")
    core = select_ml_atoms(top, pos, "resname SER")
    grown = select_ml_atoms(top, pos, "resname SER", shell_nm=0.3)
    assert set(core) < set(grown)
    residues = {}
    for atom in top.atoms():
        residues.setdefault(atom.residue.index, set()).add(atom.index)
    for atoms in residues.values():  # every residue is either fully in or fully out
        assert atoms <= set(grown) or not (atoms & set(grown))
    with pytest.raises(ProtocolError, match="model.ml_region"):
        select_ml_atoms(top, pos, "resname XYZ")
    with pytest.raises(ProtocolError, match="model.ml_region"):
        select_ml_atoms(top, pos, "resname (((")


def test_xyz_cluster_topology() -> None:
    top, pos = load_structure(INPUTS / "li-ec4.xyz")
    names = [r.name for r in top.residues()]
    assert names == ["LI", "MOL", "MOL", "MOL", "MOL"]
    assert all(len(list(r.atoms())) == 10 for r in list(top.residues())[1:])
    assert top.getNumBonds() == 4 * 10  # EC: 10 bonds; Li+ bonded to nothing
    li_o = np.linalg.norm(pos[1:] - pos[0], axis=1)
    assert li_o.min() == pytest.approx(0.195, abs=1e-3)  # nm


def _protocol(tmp_path: Path, **system) -> object:
    data = {
        "system": {"structure": str(INPUTS / "serine-dipeptide-water.pdb"), **system},
        "model": {"path": "none", "forcefield": FF},
        "stages": [{"type": "nvt", "steps": 10}],
    }
    return parse_protocol(data, tmp_path)


def test_pure_mm_system_and_solvation(tmp_path: Path) -> None:
    built = build_system(_protocol(tmp_path, solvation={"padding_nm": 0.9}))
    assert built.periodic and built.ml_atoms == [] and built.ml_force is None
    assert built.topology.getNumAtoms() > 500
    assert any(isinstance(f, openmm.NonbondedForce) and f.getNonbondedMethod() == openmm.NonbondedForce.PME
               for f in built.system.getForces())


def test_charge_and_multiplicity_are_checked(tmp_path: Path, tiny_model: Path) -> None:
    data = {
        "system": {"structure": str(INPUTS / "serine-dipeptide-water.pdb"), "charge": 1},
        "model": {"path": str(tiny_model), "ml_region": "resname ACE SER NME", "forcefield": FF},
        "stages": [{"type": "nvt", "steps": 10}],
    }
    with pytest.raises(ProtocolError, match="system.charge.*expected 0"):
        build_system(parse_protocol(data, tmp_path))
    data["system"].update(charge=0, multiplicity=2)
    with pytest.raises(ProtocolError, match="system.multiplicity"):
        build_system(parse_protocol(data, tmp_path))
    data["system"].update(multiplicity=1)
    built = build_system(parse_protocol(data, tmp_path))
    assert len(built.ml_atoms) == 23 and built.ml_force is not None
    # no constraint and no bonded MM term left inside the ML region
    ml = set(built.ml_atoms)
    for k in range(built.system.getNumConstraints()):
        i, j, _ = built.system.getConstraintParameters(k)
        assert not (i in ml and j in ml)


# --------------------------------------------------------------------------- against openmm-ml
def _move_force_to_end(system: openmm.System, kind: type) -> None:
    index = next(i for i, f in enumerate(system.getForces()) if isinstance(f, kind))
    force = copy.deepcopy(system.getForce(index))
    system.removeForce(index)
    system.addForce(force)


def _serine_mm_system(forcefield: list[str], order: str, periodic: bool):
    top, pos = load_structure(INPUTS / "serine-dipeptide-water.pdb")
    method = app.NoCutoff
    if periodic:
        top.setPeriodicBoxVectors(np.diag(np.ptp(pos, axis=0) + 1.2) * unit.nanometer)
        method = app.PME
    system = app.ForceField(*forcefield).createSystem(
        top, nonbondedMethod=method, nonbondedCutoff=0.8 * unit.nanometer, constraints=None, rigidWater=False,
        removeCMMotion=order != "no-cm-remover")
    if order == "nonbonded-last":
        _move_force_to_end(system, openmm.NonbondedForce)
    return top, pos, system


def _energy_forces_groups(system: openmm.System, positions, groups) -> tuple:
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


@pytest.mark.parametrize("forcefield, order, periodic", [
    (["amber14-all.xml", "amber14/tip3p.xml"], "as created", False),
    (["amber14-all.xml", "amber14/tip3p.xml"], "as created", True),
    (["amber19-all.xml", "amber19/tip3p.xml"], "as created", False),    # ... CMAP, CMMotionRemover, angles
    (["amber19-all.xml", "amber19/tip3p.xml"], "no-cm-remover", False),  # HarmonicAngleForce right after CMAP
    (["amber19-all.xml", "amber19/tip3p.xml"], "nonbonded-last", False),  # NonbondedForce after CMAP
    (["amber19-all.xml", "amber19/tip3p.xml"], "nonbonded-last", True),
])
def test_mechanical_embedding_equals_openmmml(forcefield, order, periodic, tiny_model: Path) -> None:
    """Our ML/MM system equals openmm-ml's ``createMixedSystem`` (mechanical embedding) with
    the same ML force, for amber14 and amber19 (CMAP) in several force orders.

    The ML region (serine dipeptide, a whole molecule) cuts no bond, so openmm-ml adds no link
    atoms and the two must agree term by term. Periodic: PME with ``mlLongRange=False``, which
    our openmm-ml plugin reports itself (TransIP's interactions are local). MM in float64 on
    the Reference platform: agreement to ~1e-9 of the MM energy's scale; the ML force is the
    same computation in both (compared separately, force group 1).
    """
    from openmmml import MLPotential

    from transip_openmm.force import TransIPForce

    top, pos, mm = _serine_mm_system(forcefield, order, periodic)
    ml = select_ml_atoms(top, pos, "resname ACE SER NME")
    cmap = [f for f in mm.getForces() if isinstance(f, openmm.CMAPTorsionForce)]
    assert bool(cmap) == ("amber19" in forcefield[0])
    mixed = MLPotential("transip", modelPath=str(tiny_model)).createMixedSystem(top, mm, ml, forceGroup=1)
    ours = copy.deepcopy(mm)
    remove_ml_interactions(ours, ml)
    assert [type(f).__name__ for f in ours.getForces()] == [type(f).__name__ for f in mm.getForces()]
    force = TransIPForce(str(tiny_model), top, atoms=ml)
    force.setForceGroup(1)
    ours.addForce(force)
    e_mm_full, f_mm_full = _energy_forces_groups(mm, pos, {0})
    e_ours, f_ours = _energy_forces_groups(ours, pos, {0})
    e_ref, f_ref = _energy_forces_groups(mixed, pos, {0})
    assert np.abs(f_mm_full - f_ours).max() > 100.0  # the ML region's own MM terms are really gone
    scale = abs(e_mm_full) + 1.0
    assert e_ours == pytest.approx(e_ref, abs=1e-9 * scale)
    np.testing.assert_allclose(f_ours, f_ref, atol=1e-9 * np.abs(f_mm_full).max())
    e_ml_ours, f_ml_ours = _energy_forces_groups(ours, pos, {1})
    e_ml_ref, f_ml_ref = _energy_forces_groups(mixed, pos, {1})
    assert e_ml_ours == e_ml_ref
    np.testing.assert_array_equal(f_ml_ours, f_ml_ref)


def test_periodic_all_ml_box_with_a_cluster_model_is_refused(tmp_path: Path, tiny_model: Path,
                                                              tiny_local_model: Path) -> None:
    from transip_openmm.system_spec import SystemSpecError

    data = {"system": {"structure": str(INPUTS / "serine-dipeptide-water.pdb"), "box_nm": [2.5, 2.5, 2.5]},
            "model": {"path": str(tiny_model)}, "stages": [{"type": "nvt", "steps": 10}]}
    with pytest.raises(SystemSpecError, match="absolute positions.*shipped 'local'"):
        build_system(parse_protocol(data, tmp_path))
    data["model"]["path"] = str(tiny_local_model)
    assert build_system(parse_protocol(data, tmp_path)).periodic


def test_ml_region_that_cuts_bonds_is_warned_about(tmp_path: Path, tiny_model: Path, caplog) -> None:
    data = {"system": {"structure": str(INPUTS / "serine-dipeptide-water.pdb")},
            "model": {"path": str(tiny_model), "ml_region": "resname SER", "forcefield": FF},
            "stages": [{"type": "nvt", "steps": 10}]}
    with caplog.at_level("WARNING"):
        build_system(parse_protocol(data, tmp_path))
    assert "cuts 2 covalent bond(s)" in caplog.text and "link atoms" in caplog.text
