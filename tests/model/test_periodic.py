"""Relative position encoding and periodic cells: image invariance, extensivity, exactness."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from model_helpers import energy_forces, inputs, make_model, random_molecule

RELATIVE = {"position_encoding": "relative", "attention_cutoff": 3.0, "pair_energy": True, "pair_cutoff": 4.0}
#: OpenMM reduced triclinic box (rows a, b, c; Å): |b_x| <= a_x/2, |c_x| <= a_x/2, |c_y| <= b_y/2.
TRICLINIC = torch.tensor([[10.0, 0.0, 0.0], [2.5, 9.5, 0.0], [-1.5, 3.0, 9.0]], dtype=torch.float64)


def periodic_structure(cell: Tensor, per_axis: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(atomic_numbers (1, n), positions (1, n, 3) Å) on a jittered fractional grid of ``cell``."""
    g = torch.Generator().manual_seed(seed)
    ar = torch.arange(per_axis, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)
    frac = (grid + 0.5 + 0.3 * (torch.rand(grid.shape, generator=g, dtype=torch.float64) - 0.5)) / per_axis
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (grid.shape[0],), generator=g)]
    return z.unsqueeze(0), (frac @ cell).unsqueeze(0)


def periodic_energy_forces(model, z: Tensor, pos: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    mask, charge, mult = inputs(z)
    p = pos.clone().requires_grad_(True)
    energy, _ = model(z, p, mask, charge, mult, cell)
    (grad,) = torch.autograd.grad(energy.sum(), p)
    return energy.detach(), -grad


@pytest.fixture(scope="module")
def models():
    """The same weights on the neighbour-list path and on the dense (minimum-image) path."""
    neighbors = make_model(neighbor_list_min_atoms=1, **RELATIVE)
    dense = make_model(neighbor_list_min_atoms=10**9, **RELATIVE)
    dense.load_state_dict(neighbors.state_dict())
    return neighbors, dense


@pytest.mark.parametrize("path", [0, 1], ids=["neighbors", "dense"])
def test_energy_and_forces_unchanged_when_atoms_move_by_box_vectors(models, path):
    model = models[path]
    z, pos = periodic_structure(TRICLINIC)
    e0, f0 = periodic_energy_forces(model, z, pos, TRICLINIC)
    g = torch.Generator().manual_seed(4)
    images = torch.randint(-2, 3, (pos.shape[1], 3), generator=g).to(torch.float64)
    e1, f1 = periodic_energy_forces(model, z, pos + (images @ TRICLINIC).unsqueeze(0), TRICLINIC)
    torch.testing.assert_close(e1, e0, rtol=0, atol=1e-9)
    torch.testing.assert_close(f1, f0, rtol=0, atol=1e-9)


def test_dense_minimum_image_path_equals_neighbour_list_path(models):
    z, pos = periodic_structure(TRICLINIC, seed=2)
    e_n, f_n = periodic_energy_forces(models[0], z, pos, TRICLINIC)
    e_d, f_d = periodic_energy_forces(models[1], z, pos, TRICLINIC)
    torch.testing.assert_close(e_n, e_d, rtol=0, atol=1e-9)
    torch.testing.assert_close(f_n, f_d, rtol=0, atol=1e-9)


def test_periodic_energy_is_extensive_supercell_equals_twice_the_cell(models):
    """A 2x1x1 supercell has exactly twice the energy, and each copy the same forces."""
    z, pos = periodic_structure(TRICLINIC, seed=3)
    e1, f1 = periodic_energy_forces(models[0], z, pos, TRICLINIC)
    super_cell = TRICLINIC.clone()
    super_cell[0] *= 2.0
    z2 = torch.cat([z, z], dim=1)
    pos2 = torch.cat([pos, pos + TRICLINIC[0]], dim=1)
    e2, f2 = periodic_energy_forces(models[0], z2, pos2, super_cell)
    torch.testing.assert_close(e2, 2.0 * e1, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(f2, torch.cat([f1, f1], dim=1), rtol=0, atol=1e-9)


def test_periodic_images_interact_and_a_large_box_equals_open_boundaries(models):
    z, pos = random_molecule(20, seed=5, spacing=1.7)  # ~5 Å across
    e_open, f_open = energy_forces(models[0], z, pos)
    big = torch.eye(3, dtype=torch.float64) * 30.0
    e_big, f_big = periodic_energy_forces(models[0], z, pos, big)
    torch.testing.assert_close(e_big, e_open, rtol=0, atol=1e-10)
    torch.testing.assert_close(f_big, f_open, rtol=0, atol=1e-10)
    tight = torch.eye(3, dtype=torch.float64) * 8.0  # images within the cutoff
    e_tight, _ = periodic_energy_forces(models[0], z, pos, tight)
    assert abs(float(e_tight - e_open)) > 1e-3  # eV; paths agree to 1e-10


def test_periodic_forces_are_minus_gradient_by_finite_differences(models):
    z, pos = periodic_structure(TRICLINIC, per_axis=4, seed=6)
    model = models[0]
    _, forces = periodic_energy_forces(model, z, pos, TRICLINIC)
    mask, charge, mult = inputs(z)
    h = 1e-5
    for atom, axis in [(0, 0), (13, 1), (40, 2), (63, 0)]:  # corner atoms see images across faces
        plus, minus = pos.clone(), pos.clone()
        plus[0, atom, axis] += h
        minus[0, atom, axis] -= h
        with torch.no_grad():
            numeric = -(model(z, plus, mask, charge, mult, TRICLINIC)[0]
                        - model(z, minus, mask, charge, mult, TRICLINIC)[0]) / (2 * h)
        assert abs(float(numeric) - float(forces[0, atom, axis])) < 1e-6 * max(1.0, abs(float(numeric)))


def test_scripted_periodic_model_equals_eager(models):
    z, pos = periodic_structure(TRICLINIC, seed=7)
    scripted = torch.jit.script(models[0])
    for _ in range(3):  # the profiling executor specialises on the first calls
        e_s, f_s = periodic_energy_forces(scripted, z, pos, TRICLINIC)
    e_e, f_e = periodic_energy_forces(models[0], z, pos, TRICLINIC)
    torch.testing.assert_close(e_s, e_e, rtol=0, atol=1e-12)
    torch.testing.assert_close(f_s, f_e, rtol=0, atol=1e-12)


def test_relative_model_is_not_rotation_invariant_by_construction():
    """Direction features break exact invariance: the symmetry is left to training (TransIP)."""
    model = make_model(**RELATIVE)
    z, pos = random_molecule(12)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    e0, _ = energy_forces(model, z, pos)
    e1, _ = energy_forces(model, z, pos @ rot.T)
    assert abs(float(e1 - e0)) > 1e-6


def test_bad_cells_get_clear_errors():
    z, pos = periodic_structure(TRICLINIC)
    mask, charge, mult = inputs(z)
    absolute = make_model(attention_cutoff=3.0)
    with pytest.raises(ValueError, match="relative"):
        absolute(z, pos, mask, charge, mult, TRICLINIC)
    no_cutoff = make_model(position_encoding="relative")
    with pytest.raises(ValueError, match="attention_cutoff"):
        no_cutoff(z, pos, mask, charge, mult, TRICLINIC)
    with pytest.raises(ValueError, match="width"):
        make_model(**RELATIVE)(z, pos, mask, charge, mult, TRICLINIC * 0.7)
