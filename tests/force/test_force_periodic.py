"""All-ML periodic boxes: a relative-position, local-attention model sees periodic images."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch
from force_helpers import ELEMENTS, atomic_numbers, bare_system, energy_forces, export

from transip_openmm import TransIPForce
from transip_openmm.artifacts import save_checkpoint
from transip_openmm.model import ModelConfig, TransIPModel, compute_forces
from transip_openmm.units import EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

BOX_NM = 1.2
#: Random water box in OpenMM's reduced triclinic form (nm); ~1.2 nm wide, 3.7 Å model cutoff.
TRICLINIC_NM = np.array([[1.25, 0.0, 0.0], [0.3, 1.2, 0.0], [-0.2, 0.4, 1.15]])


def relative_model(seed: int = 0) -> TransIPModel:
    torch.manual_seed(seed)
    config = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_rbf=8, rbf_cutoff=6.0, attention_cutoff=3.5,
                         position_encoding="relative", neighbor_list_min_atoms=64)
    model = TransIPModel(config)
    for z, e in {1: -13.6, 8: -2042.0}.items():
        model.element_energies[z] = e
    return model.eval()


@pytest.fixture(scope="module")
def relative64(tmp_path_factory):
    folder = tmp_path_factory.mktemp("periodic")
    model = relative_model()
    save_checkpoint(folder / "relative.ckpt", {
        "model_config": model.config_dict, "model_state": model.state_dict(), "elements": ELEMENTS,
        "data_hash": "test-hash", "val_metrics": {"energy_mae_mev": 1.0}, "config": {"seed": 0}})
    return export(folder / "relative.ckpt", folder / "relative64.pt", dtype="float64")


@pytest.fixture(scope="module")
def water_box():
    """(topology, positions (n, 3) nm) of TIP3P water filling a periodic 1.2 nm cube."""
    forcefield = app.ForceField("amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, boxSize=openmm.Vec3(BOX_NM, BOX_NM, BOX_NM) * u.nanometer)
    return modeller.topology, np.asarray(modeller.getPositions().value_in_unit(u.nanometer))


def periodic_system(topology: app.Topology, model_path, box_nm: np.ndarray, backend: str) -> openmm.System:
    box = [openmm.Vec3(*row) for row in box_nm] * u.nanometer
    system = bare_system(topology, box=box)
    system.addForce(TransIPForce(model_path, topology, backend=backend, periodic=True))
    return system


def eager_energy_forces(topology: app.Topology, pos_nm: np.ndarray, box_nm: np.ndarray):
    """The eager model with the same cell: (energy kJ/mol, forces kJ/mol/nm)."""
    model = relative_model().double()
    z = torch.tensor([atomic_numbers(topology)])
    pos = torch.tensor(pos_nm * NM_TO_ANGSTROM).unsqueeze(0).requires_grad_(True)
    cell = torch.tensor(box_nm * NM_TO_ANGSTROM)
    energy, _ = model(z, pos, torch.ones_like(z, dtype=torch.bool), torch.tensor([0]), torch.tensor([1]), cell)
    forces = compute_forces(energy, pos)
    return float(energy.detach()) * EV_TO_KJ_PER_MOL, forces[0].detach().numpy() * EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_openmm_periodic_box_matches_eager_model_with_cell(water_box, relative64, backend):
    topology, pos = water_box
    system = periodic_system(topology, relative64, TRICLINIC_NM, backend)
    e, f = energy_forces(system, pos)
    e_ref, f_ref = eager_energy_forces(topology, pos, TRICLINIC_NM)
    assert e == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(f, f_ref, atol=1e-6)


def test_moving_a_molecule_by_a_box_vector_changes_nothing(water_box, relative64):
    topology, pos = water_box
    system = periodic_system(topology, relative64, TRICLINIC_NM, "torch")
    e0, f0 = energy_forces(system, pos)
    moved = pos.copy()
    moved[0:3] += TRICLINIC_NM[0] - TRICLINIC_NM[2]  # one whole water, across two faces
    moved[9:12] += 2 * TRICLINIC_NM[1]
    e1, f1 = energy_forces(system, moved)
    assert e1 == pytest.approx(e0, abs=1e-7)
    np.testing.assert_allclose(f1, f0, atol=1e-6)


def test_supercell_energy_is_twice_the_cell(water_box, relative64):
    """The model sees the periodic images: a 2x1x1 supercell has exactly twice the energy."""
    topology, pos = water_box
    e1, f1 = energy_forces(periodic_system(topology, relative64, TRICLINIC_NM, "torch"), pos)
    modeller = app.Modeller(topology, pos * u.nanometer)
    modeller.add(topology, (pos + TRICLINIC_NM[0]) * u.nanometer)
    double_box = TRICLINIC_NM.copy()
    double_box[0] *= 2.0
    e2, f2 = energy_forces(periodic_system(modeller.topology, relative64, double_box, "torch"),
                           np.asarray(modeller.getPositions().value_in_unit(u.nanometer)))
    assert e2 == pytest.approx(2.0 * e1, abs=1e-6)
    np.testing.assert_allclose(f2, np.concatenate([f1, f1]), atol=1e-6)
    # ...and the images matter: the isolated cluster (no box) has another energy.
    system = bare_system(topology)
    system.addForce(TransIPForce(relative64, topology, periodic=False))
    e_open, _ = energy_forces(system, pos)
    assert abs(e_open - e1) > 1.0  # kJ/mol


def test_exported_metadata_says_the_model_sees_periodic_images(relative64, generic64):
    from transip_openmm.artifacts import read_exported_metadata

    assert "sees the periodic images" in read_exported_metadata(relative64)["interface"]["periodic"]
    assert "made whole" in read_exported_metadata(generic64)["interface"]["periodic"]
