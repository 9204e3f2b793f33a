"""The shipped ``local`` model: relative positions, local attention, all-ML periodic boxes."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from transip_openmm import TransIPForce, shipped_model_path
from transip_openmm.artifacts import read_exported_metadata

BOX_NM = 1.2


def test_local_model_is_shipped_periodic_ready_and_described():
    path = shipped_model_path("local")
    assert path.stat().st_size < 5 * 2**20
    meta = read_exported_metadata(path)
    config = meta["model_config"]
    assert config["position_encoding"] == "relative" and config["attention_cutoff"] == 5.0
    assert meta["system"] is None
    assert "config_dir" not in meta["train_config"]
    assert np.isfinite(meta["validation_metrics"]["force_mae_meV_per_A"])


@pytest.fixture(scope="module")
def water_box():
    """All-ML periodic TIP3P-geometry water box (1.2 nm cube, ~170 atoms) with the local model."""
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("amber14/tip3p.xml"),
                        boxSize=openmm.Vec3(BOX_NM, BOX_NM, BOX_NM) * unit.nanometer)
    topology = modeller.topology
    system = openmm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    system.setDefaultPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    system.addForce(TransIPForce("local", topology))
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(modeller.positions)
    return topology, np.asarray(modeller.getPositions().value_in_unit(unit.nanometer)), context


def test_minimised_periodic_water_box_keeps_nearly_all_molecules(water_box):
    """The minimiser lowers the energy and leaves every water but at most one whole: both O-H
    within 15 % of TIP3P's 0.9572 Å and no H nearer another oxygen. (The shipped demo model
    moves one proton in this box; its model card says so. A model that keeps bulk water
    intact should tighten this to none.)"""
    topology, positions, context = water_box
    context.setPositions(positions)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    state = context.getState(getEnergy=True, getPositions=True, enforcePeriodicBox=False)
    assert state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) < e0
    x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert np.all(np.isfinite(x))
    bonds = np.array([[a.index, b.index] for a, b in topology.bonds()])
    oh = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1) / 0.09572
    oxygens = np.array([a.index for a in topology.atoms() if a.element.symbol == "O"])
    hydrogens = np.array([a.index for a in topology.atoms() if a.element.symbol == "H"])
    d = x[hydrogens][:, None, :] - x[oxygens][None, :, :]
    d -= BOX_NM * np.round(d / BOX_NM)  # cubic box: minimum image
    nearest_o = oxygens[np.argmin(np.linalg.norm(d, axis=-1), axis=1)]
    own_o = {b: a for a, b in bonds} | {a: b for a, b in bonds}
    changed = {own_o[h] for h, o in zip(hydrogens, nearest_o) if own_o[h] != o}
    oxygen_set = set(oxygens.tolist())
    changed |= {int(a) if int(a) in oxygen_set else int(b) for (a, b), ratio in zip(bonds, oh)
                if not 0.85 < ratio < 1.15}
    assert len(changed) <= 1, f"{len(changed)} of {len(oxygens)} waters changed in the minimiser"


def test_periodic_images_are_seen_by_the_shipped_model(water_box):
    """Moving a whole molecule by box vectors changes nothing."""
    topology, positions, context = water_box
    context.setPositions(positions)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    moved = positions.copy()
    moved[0:3] += np.array([BOX_NM, -BOX_NM, 2 * BOX_NM])
    context.setPositions(moved)
    e1 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert e1 == pytest.approx(e0, abs=1e-2)
