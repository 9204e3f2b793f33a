"""Capture-safe evaluation (CUDA graphs): static shapes, no host reads, same energies and forces.

What the CPU can show: that the capture-safe path computes the same function as the data-shaped
path (float64, to rounding), that its forces are -dE/dx, that an overflowing capacity or a bad
cell is flagged and reported after the call, and -- by running it on the ``meta`` device, where
every host read (``.item()``, ``bool(t)``, ``int(t)``, ``tolist()``) and every op whose output
shape depends on values raises -- that it reads nothing on the host and has static shapes. What
it cannot show: that a real CUDA graph replays it correctly (``tests/force/test_force_gpu.py``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from model_helpers import inputs, make_model, random_molecule
from transip_openmm.neighbors import neighbor_demand, static_neighbor_list

RELATIVE = {"position_encoding": "relative", "attention_cutoff": 3.0, "pair_energy": True, "pair_cutoff": 4.0}
#: Absolute positions, local attention, ZBL (on by default): the open-boundary molecule model.
ABSOLUTE_LOCAL = {"attention_cutoff": 3.0}
#: OpenMM reduced triclinic box (rows a, b, c; Å).
TRICLINIC = torch.tensor([[10.0, 0.0, 0.0], [2.5, 9.5, 0.0], [-1.5, 3.0, 9.0]], dtype=torch.float64)


def periodic_structure(cell: Tensor, per_axis: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(atomic_numbers (1, n), positions (1, n, 3) Å) on a jittered fractional grid of ``cell``."""
    g = torch.Generator().manual_seed(seed)
    ar = torch.arange(per_axis, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)
    frac = (grid + 0.5 + 0.3 * (torch.rand(grid.shape, generator=g, dtype=torch.float64) - 0.5)) / per_axis
    z = torch.tensor([1, 6, 7, 8])[torch.randint(0, 4, (grid.shape[0],), generator=g)]
    return z.unsqueeze(0), (frac @ cell).unsqueeze(0)


def evaluate(model, z: Tensor, pos: Tensor, cell: Tensor | None = None, mask: Tensor | None = None):
    """(energy (B,) eV, forces (B, N, 3) eV/Å)."""
    default_mask, charge, mult = inputs(z)
    p = pos.clone().requires_grad_(True)
    energy, _ = model(z, p, default_mask if mask is None else mask, charge, mult, cell)
    (grad,) = torch.autograd.grad(energy.sum(), p)
    return energy.detach(), -grad


def capture_safe_copy(model, z: Tensor, pos: Tensor, cell: Tensor | None = None, margin: float = 0.25):
    """A copy of ``model`` in capture-safe mode with its capacity fitted on (z, pos, cell)."""
    safe = copy.deepcopy(model)
    safe.capture_safe = True
    safe.fit_neighbor_capacity(pos[0], cell, margin)
    return safe


@pytest.fixture(scope="module")
def relative():
    return make_model(neighbor_list_min_atoms=1, **RELATIVE)


@pytest.fixture(scope="module")
def absolute_local():
    return make_model(neighbor_list_min_atoms=1, **ABSOLUTE_LOCAL)


# ---------------------------------------------------------------- same function as today's path


@pytest.mark.parametrize("per_axis, scale", [(3, 1.0), (4, 1.0), (6, 1.5)])  # 27, 64, 216 atoms; 2 to 3 cells/axis
def test_periodic_capture_safe_equals_data_shaped_path(relative, per_axis, scale):
    cell = TRICLINIC * scale
    z, pos = periodic_structure(cell, per_axis, seed=per_axis)
    e_ref, f_ref = evaluate(relative, z, pos, cell)
    safe = capture_safe_copy(relative, z, pos, cell)
    e, f = evaluate(safe, z, pos, cell)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-10)
    assert not safe.neighbor_overflow()


@pytest.mark.parametrize("n", [20, 90, 250])
@pytest.mark.parametrize("config", ["relative", "absolute_local"])
def test_open_capture_safe_equals_data_shaped_path(request, config, n):
    model = request.getfixturevalue(config)
    z, pos = random_molecule(n, seed=n, spacing=1.3)
    pos[0, 0] = pos[0, 1] + torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64)  # a ZBL-active pair
    e_ref, f_ref = evaluate(model, z, pos)
    safe = capture_safe_copy(model, z, pos)
    e, f = evaluate(safe, z, pos)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-10)


def test_dense_path_capture_safe_equals_data_shaped_path():
    """Below ``neighbor_list_min_atoms`` (all pairs), capture-safe takes the padded dense path."""
    model = make_model(neighbor_list_min_atoms=10**6, **RELATIVE)
    z, pos = periodic_structure(TRICLINIC, 4, seed=9)
    for cell in (None, TRICLINIC):
        e_ref, f_ref = evaluate(model, z, pos, cell)
        safe = copy.deepcopy(model)
        safe.capture_safe = True  # no capacity needed on the dense path
        e, f = evaluate(safe, z, pos, cell)
        torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-10)


def test_padding_atoms_are_ignored(relative):
    """Padding atoms (mask False, Z 0) change nothing on the capture-safe neighbour path."""
    z, pos = random_molecule(60, seed=4)
    e_ref, f_ref = evaluate(relative, z, pos)
    z_pad = torch.cat([z, torch.zeros(1, 5, dtype=z.dtype)], dim=1)
    pos_pad = torch.cat([pos, pos[:, :5] + 0.5], dim=1)  # padding placed among real atoms
    safe = capture_safe_copy(relative, z_pad, pos_pad)
    e, f = evaluate(safe, z_pad, pos_pad, mask=z_pad > 0)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(f[:, :60], f_ref, rtol=0, atol=1e-10)
    assert float(f[:, 60:].abs().max()) == 0.0


def test_capture_safe_forces_are_minus_gradient(relative):
    z, pos = periodic_structure(TRICLINIC, 4, seed=6)
    safe = capture_safe_copy(relative, z, pos, TRICLINIC)
    _, forces = evaluate(safe, z, pos, TRICLINIC)
    mask, charge, mult = inputs(z)
    h = 1e-5
    for atom, axis in [(0, 0), (13, 1), (40, 2), (63, 0)]:
        plus, minus = pos.clone(), pos.clone()
        plus[0, atom, axis] += h
        minus[0, atom, axis] -= h
        with torch.no_grad():
            numeric = -(safe(z, plus, mask, charge, mult, TRICLINIC)[0]
                        - safe(z, minus, mask, charge, mult, TRICLINIC)[0]) / (2 * h)
        assert abs(float(numeric) - float(forces[0, atom, axis])) < 1e-6 * max(1.0, abs(float(numeric)))


def test_scripted_capture_safe_model_equals_eager(relative):
    z, pos = periodic_structure(TRICLINIC, 4, seed=7)
    eager = capture_safe_copy(relative, z, pos, TRICLINIC)
    scripted = torch.jit.script(copy.deepcopy(relative))
    scripted.capture_safe = True
    scripted.fit_neighbor_capacity(pos[0], TRICLINIC, 0.25)
    assert (scripted.max_neighbors, scripted.max_cell_atoms) == (eager.max_neighbors, eager.max_cell_atoms)
    for _ in range(3):  # the profiling executor specialises on the first calls
        e_s, f_s = evaluate(scripted, z, pos, TRICLINIC)
    e_e, f_e = evaluate(eager, z, pos, TRICLINIC)
    torch.testing.assert_close(e_s, e_e, rtol=0, atol=1e-12)
    torch.testing.assert_close(f_s, f_e, rtol=0, atol=1e-12)
    assert not scripted.neighbor_overflow()


# ---------------------------------------------------------------- capacity, overflow, cell


def test_capacity_is_the_fitted_need_with_a_margin(relative):
    z, pos = periodic_structure(TRICLINIC, 4, seed=1)
    m, k = neighbor_demand(pos[0], relative.neighbor_cutoff, TRICLINIC)
    safe = capture_safe_copy(relative, z, pos, TRICLINIC, margin=0.5)
    assert safe.max_neighbors == -(-3 * m // 2) + 2 and safe.max_cell_atoms == -(-3 * k // 2) + 2
    evaluate(safe, z, pos, TRICLINIC)
    assert safe.neighbor_demand.tolist() == [m, k, 0]


def test_output_shapes_depend_only_on_the_capacity():
    """Two structures with different neighbour counts give lists of the same shape (M = capacity)."""
    cutoff = 3.5
    shapes = set()
    for per_axis in (3, 5):
        _, pos = periodic_structure(TRICLINIC, per_axis, seed=per_axis)
        neighbors, valid, demand = static_neighbor_list(pos[0, :27], cutoff, TRICLINIC, 40, 12)
        shapes.add((tuple(neighbors.shape), tuple(valid.shape), tuple(demand.shape)))
        assert int(demand[0]) <= 40
    assert shapes == {((27, 40), (27, 40), (2,))}


def test_denser_structure_overflows_and_is_reported(relative):
    """Capacity fitted on a sparse box; a structure twice as dense overflows: flagged after the
    call (no host read inside), reported with the numbers and the fix, fixed by refitting."""
    z, pos = periodic_structure(TRICLINIC, 3, seed=2)
    safe = capture_safe_copy(relative, z, pos, TRICLINIC, margin=0.0)
    z2, pos2 = periodic_structure(TRICLINIC, 5, seed=3)  # 125 atoms in the same box
    e_cut, _ = evaluate(safe, z2, pos2, TRICLINIC)
    assert safe.neighbor_overflow()
    with pytest.raises(ValueError, match=r"overflowed.*neighbours within 4(\.0)? Å \(capacity .*fit_neighbor_capacity"):
        safe.check_neighbor_capacity(TRICLINIC)
    e_ref, f_ref = evaluate(relative, z2, pos2, TRICLINIC)
    assert abs(float(e_cut - e_ref)) > 1e-6  # the truncated list really is wrong
    safe.fit_neighbor_capacity(pos2[0], TRICLINIC, 0.25)
    e, f = evaluate(safe, z2, pos2, TRICLINIC)
    assert not safe.neighbor_overflow()
    safe.check_neighbor_capacity(TRICLINIC)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-10)


def test_scripted_overflow_is_reported(relative):
    z, pos = periodic_structure(TRICLINIC, 3, seed=2)
    scripted = torch.jit.script(copy.deepcopy(relative))
    scripted.capture_safe = True
    scripted.fit_neighbor_capacity(pos[0], TRICLINIC, 0.0)
    z2, pos2 = periodic_structure(TRICLINIC, 5, seed=3)
    evaluate(scripted, z2, pos2, TRICLINIC)
    assert scripted.neighbor_overflow()
    with pytest.raises(torch.jit.Error, match="overflowed"):
        scripted.check_neighbor_capacity(TRICLINIC)


def test_invalid_cell_is_flagged_not_checked_inside(relative):
    """A box narrower than twice the cutoff: the capture-safe forward runs (no host check), flags
    it, and the check after the call gives check_cell's message."""
    z, pos = periodic_structure(TRICLINIC, 4, seed=5)
    safe = capture_safe_copy(relative, z, pos, TRICLINIC)
    small = TRICLINIC * 0.7
    evaluate(safe, z, pos, small)
    assert safe.neighbor_overflow()
    with pytest.raises(ValueError, match="width"):
        safe.check_neighbor_capacity(small)
    evaluate(safe, z, pos, TRICLINIC)
    assert not safe.neighbor_overflow()


def test_capture_safe_without_capacity_is_refused(relative):
    z, pos = random_molecule(30)
    safe = copy.deepcopy(relative)
    safe.capture_safe = True
    with pytest.raises(ValueError, match="fit_neighbor_capacity"):
        evaluate(safe, z, pos)


# ---------------------------------------------------------------- no host reads, static shapes


def _on_meta(model, z: Tensor, pos: Tensor, cell: Tensor | None):
    """Energy and forces with every tensor on the ``meta`` device (no data: a host read raises)."""
    meta = copy.deepcopy(model).to("meta")
    mask, charge, mult = inputs(z)
    p = pos.to("meta").requires_grad_(True)
    energy, hidden = meta(z.to("meta"), p, mask.to("meta"), charge.to("meta"), mult.to("meta"),
                          None if cell is None else cell.to("meta"))
    (grad,) = torch.autograd.grad(energy.sum(), p)
    return energy, grad, meta


@pytest.mark.parametrize("periodic", [False, True], ids=["open", "periodic"])
def test_capture_safe_forward_and_backward_read_nothing_on_the_host(relative, periodic):
    z, pos = periodic_structure(TRICLINIC, 4, seed=8)
    cell = TRICLINIC if periodic else None
    safe = capture_safe_copy(relative, z, pos, cell)
    energy, grad, meta = _on_meta(safe, z, pos, cell)
    assert energy.shape == (1,) and grad.shape == pos.shape
    assert meta.neighbor_demand.device.type == "meta"
    # The check is real: the data-shaped path cannot run without reading values.
    with pytest.raises((RuntimeError, NotImplementedError)):
        _on_meta(relative, z, pos, cell)


def test_capture_safe_dense_path_reads_nothing_on_the_host():
    """Small structures (all pairs; ZBL without its activity check) on the meta device too."""
    model = make_model(neighbor_list_min_atoms=10**6, **ABSOLUTE_LOCAL)
    z, pos = random_molecule(22)
    safe = copy.deepcopy(model)
    safe.capture_safe = True
    energy, grad, _ = _on_meta(safe, z, pos, None)
    assert energy.shape == (1,) and grad.shape == pos.shape
