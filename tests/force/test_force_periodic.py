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


# ---------------------------------------------------------------- capture-safe exported module


def specialised(path, topology, atoms=None):
    """A loaded exported module specialised to ``topology`` (the ML atoms ``atoms``, default all)."""
    from transip_openmm.force import load_exported
    from transip_openmm.system_spec import build_spec, specialise_module

    module, meta = load_exported(path)
    return specialise_module(module, build_spec(topology, atoms, 0, 1, meta["elements"], str(path))), meta


def module_energy_forces(module, pos_nm: np.ndarray, box_nm: np.ndarray):
    energy, forces = module(torch.tensor(pos_nm), torch.tensor(box_nm))
    return float(energy), forces.numpy()


def test_capture_safe_module_matches_data_shaped_module(water_box, relative64):
    """The exported wrapper in capture-safe mode (static neighbour list fitted on its first call)
    gives the data-shaped path's energy and forces, with and without the host checks."""
    topology, pos = water_box
    reference, _ = specialised(relative64, topology)
    e_ref, f_ref = module_energy_forces(reference, pos, TRICLINIC_NM)
    for check_finite in (True, False):
        module, _ = specialised(relative64, topology)
        module.check_finite = check_finite
        assert module.use_capture_safe(True)
        assert module.model.max_neighbors == 0
        e, f = module_energy_forces(module, pos, TRICLINIC_NM)
        assert module.model.max_neighbors > 0 and not module.neighbor_overflow()
        assert e == pytest.approx(e_ref, abs=1e-8)
        np.testing.assert_allclose(f, f_ref, atol=1e-8)


def test_capture_safe_module_overflow_is_refitted_or_poisoned(water_box, relative64):
    """Capacity fitted on an expanded (sparse) copy of the box; then the real, denser box. With host
    checks the module refits and evaluates again (exact result); inside a graph (no host checks)
    energy and forces come back NaN and ``neighbor_overflow`` says why, for the caller to refit."""
    topology, pos = water_box
    reference, _ = specialised(relative64, topology)
    e_ref, f_ref = module_energy_forces(reference, pos, TRICLINIC_NM)
    for check_finite in (True, False):
        module, _ = specialised(relative64, topology)
        module.check_finite = check_finite
        module.use_capture_safe(True)
        module.capacity_margin = 0.0
        module.fit_neighbor_capacity(torch.tensor(pos * 1.6), torch.tensor(TRICLINIC_NM * 1.6))
        sparse_capacity = module.model.max_neighbors
        e, f = module_energy_forces(module, pos, TRICLINIC_NM)
        if check_finite:
            assert module.model.max_neighbors > sparse_capacity and not module.neighbor_overflow()
            assert e == pytest.approx(e_ref, abs=1e-8)
            np.testing.assert_allclose(f, f_ref, atol=1e-8)
        else:
            assert module.neighbor_overflow()
            assert np.isnan(e) and np.isnan(f).all()
            module.fit_neighbor_capacity(torch.tensor(pos), torch.tensor(TRICLINIC_NM))
            e, f = module_energy_forces(module, pos, TRICLINIC_NM)
            assert e == pytest.approx(e_ref, abs=1e-8)


def test_capture_safe_module_reports_a_box_too_small(water_box, relative64):
    topology, pos = water_box
    module, _ = specialised(relative64, topology)
    module.use_capture_safe(True)
    module_energy_forces(module, pos, TRICLINIC_NM)
    with pytest.raises(torch.jit.Error, match="twice the cutoff"):
        module_energy_forces(module, pos * 0.5, TRICLINIC_NM * 0.5)


def test_rebuilt_shipped_local_model_is_the_same_function(water_box):
    """``rebuild_exported`` puts the shipped local model's weights into this version's code: same
    energies and forces as the shipped file, and it can be made capture-safe."""
    from transip_openmm.export.wrapper import rebuild_exported

    topology, pos = water_box
    box = np.eye(3) * BOX_NM
    shipped, meta = specialised("local", topology)
    rebuilt = torch.jit.script(rebuild_exported(shipped, meta))
    pos32, box32 = pos.astype(np.float32), box.astype(np.float32)
    e0, f0 = module_energy_forces(shipped, pos32, box32)
    e1, f1 = module_energy_forces(rebuilt, pos32, box32)
    assert e1 == e0
    np.testing.assert_array_equal(f1, f0)
    rebuilt.use_capture_safe(True)
    e2, f2 = module_energy_forces(rebuilt, pos32, box32)
    assert e2 == pytest.approx(e0, abs=1e-3)  # float32: summation order differs
    np.testing.assert_allclose(f2, f0, atol=1e-5 * np.abs(f0).max())


# ---------------------------------------------------------------- make-whole path, region too wide


def test_made_whole_region_wider_than_half_the_box_is_refused(water_box, generic64):
    """A model without periodic support, given a box: an ML region spanning more than half the
    smallest box width would make the potential jump; the run-time check names the fix."""
    topology, pos = water_box
    box = np.eye(3) * BOX_NM
    d = pos[::3] - pos[0]
    d -= BOX_NM * np.round(d / BOX_NM)  # minimum image of each water's O relative to the first
    # Waters about 0.4 box to the right and to the left of the first, close to it in y and z.
    right, left = (3 * int(np.argmin(np.abs(d[:, 0] - sign * 0.4 * BOX_NM) + np.abs(d[:, 1:]).sum(1)))
                   for sign in (1.0, -1.0))
    assert (d[right // 3, 0] - d[left // 3, 0]) > 0.55 * BOX_NM  # three waters: ~0.8 box across
    for atoms, ok in (([0, 1, 2, right, right + 1, right + 2], True),
                      ([0, 1, 2, right, right + 1, right + 2, left, left + 1, left + 2], False)):
        module, _ = specialised(generic64, topology, atoms=atoms)
        if ok:
            module_energy_forces(module, pos, box)
            continue
        with pytest.raises(torch.jit.Error, match=r"spans .* more than half the smallest width.*'local' model"):
            module_energy_forces(module, pos, box)
        box_vectors = [openmm.Vec3(*row) for row in box] * u.nanometer
        system = bare_system(topology, box=box_vectors)  # through OpenMM's PythonForce: the same one line
        system.addForce(TransIPForce(generic64, topology, atoms=atoms, backend="python", periodic=True))
        with pytest.raises(openmm.OpenMMException, match="more than half the smallest width"):
            energy_forces(system, pos)
        system = bare_system(topology, box=box_vectors)  # openmm-torch: check off (raising there crashes)
        system.addForce(TransIPForce(generic64, topology, atoms=atoms, backend="torch", periodic=True))
        energy_forces(system, pos)
        module.check_finite = False  # the check is a host read: not made inside a CUDA graph
        module_energy_forces(module, pos, box)
