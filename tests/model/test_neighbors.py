"""Neighbour lists and minimum image, open and periodic: brute force, ASE, scripting."""

from __future__ import annotations

from typing import Dict, Set, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor

from transip_openmm.neighbors import check_cell, minimum_image, neighbor_list

ase_neighborlist = pytest.importorskip("ase.neighborlist")
ase = pytest.importorskip("ase")

TRICLINIC = np.array([[20.0, 0.0, 0.0], [5.0, 19.0, 0.0], [-4.0, 6.0, 18.0]])  # Å, rows a, b, c
ORTHORHOMBIC = np.diag([19.0, 21.0, 17.5])
DENSITY = 0.1  # atoms / Å^3, about liquid water

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def scripted():
    return torch.jit.script(neighbor_list), torch.jit.script(minimum_image)


def widths(cell: np.ndarray) -> np.ndarray:
    """Perpendicular widths of a box (rows a, b, c)."""
    volume = np.linalg.det(cell)
    return volume / np.linalg.norm(np.cross(np.roll(cell, -1, 0), np.roll(cell, -2, 0)), axis=1)


def is_reduced(cell: np.ndarray) -> bool:
    """OpenMM's reduced triclinic form."""
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = cell
    return (ay == az == bz == 0 and ax > 0 and by > 0 and cz > 0
            and abs(bx) <= ax / 2 and abs(cx) <= ax / 2 and abs(cy) <= by / 2)


def periodic_atoms(cell: np.ndarray, seed: int, outside: float = 0.5, density: float = DENSITY) -> np.ndarray:
    """Random atoms (``density`` per Å^3) in the box; fractional coordinates in
    [-outside, 1 + outside) for a third of them, so some lie outside the box."""
    rng = np.random.default_rng(seed)
    n = int(density * np.linalg.det(cell))
    frac = rng.random((n, 3))
    frac[::3] = frac[::3] * (1 + 2 * outside) - outside
    return frac @ cell


def pairs(neighbors: Tensor, valid: Tensor) -> Set[Tuple[int, int]]:
    """{(i, j)} from a neighbour list, self pairs included; checks the padding contract."""
    n, m = neighbors.shape
    assert neighbors.dtype == torch.int64 and valid.dtype == torch.bool
    rows = torch.arange(n, device=neighbors.device).unsqueeze(1).expand(n, m)
    assert torch.equal(neighbors[~valid], rows[~valid])  # padding: index i
    counts = valid.sum(1)
    assert int(counts.max()) == m  # M is the largest count
    assert bool((valid[:, :-1] | ~valid[:, 1:]).all())  # valid entries first
    i, j = rows[valid].tolist(), neighbors[valid].tolist()
    out = set(zip(i, j))
    assert len(out) == len(i)  # no duplicates
    return out


def ase_pairs(pos: np.ndarray, cell: np.ndarray, cutoff: float) -> Set[Tuple[int, int]]:
    atoms = ase.Atoms("H" * len(pos), positions=pos, cell=cell, pbc=True)
    i, j = ase_neighborlist.neighbor_list("ij", atoms, cutoff)
    out = set(zip(i.tolist(), j.tolist()))
    assert len(out) == len(i)  # cutoff <= half width: at most one image of each atom in range
    return out


def min_image_brute(d: np.ndarray, cell: np.ndarray, reach: int = 2) -> np.ndarray:
    """Shortest image of each displacement (..., 3) over (2 reach + 1)^3 lattice shifts."""
    r = np.arange(-reach, reach + 1)
    shifts = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3) @ cell  # (S, 3)
    images = d[..., None, :] + shifts
    best = np.argmin((images**2).sum(-1), axis=-1)
    return np.take_along_axis(images, best[..., None, None], axis=-2)[..., 0, :]


# ---------------------------------------------------------------- open boundaries


@pytest.mark.parametrize("device", DEVICES)
def test_open_matches_brute_force(device):
    rng = np.random.default_rng(0)
    n, cutoff = 300, 5.0
    pos = rng.random((n, 3)) * (n / DENSITY) ** (1 / 3)
    pos[::11] += 40.0  # a distant group: sparse cell grid
    dist = np.linalg.norm(pos[None] - pos[:, None], axis=-1)
    expected = set(zip(*[a.tolist() for a in np.nonzero(dist < cutoff)]))
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(pos, dtype=dtype, device=device)
        nb, valid = neighbor_list(x, cutoff)
        got = pairs(nb, valid)
        if dtype == torch.float64:
            assert got == expected
        else:  # float32 may disagree only on pairs within rounding of the cutoff
            assert all(abs(dist[p] - cutoff) < 1e-4 for p in got ^ expected)


# ---------------------------------------------------------------- periodic boundaries

# (cell, cutoff, grid): "cells": at least 3 cells along every axis; "narrow": fewer along some
# axis, where the offsets that would name a cell twice are switched off
PERIODIC_CASES = {
    "ortho-cells": (ORTHORHOMBIC, 5.0, "cells"),  # n = (3, 4, 3)
    "ortho-narrow": (ORTHORHOMBIC, 8.0, "narrow"),  # 17.5 / 8 < 3
    "tric-cells-3": (TRICLINIC, 5.5, "cells"),  # n = (3, 3, 3): wrapped cells just distinct
    "tric-cells-6": (TRICLINIC, 3.0, "cells"),  # n = (6, 6, 6); c width exactly 6 cutoffs
    "tric-narrow": (TRICLINIC, 7.5, "narrow"),  # 18 / 7.5 < 3
}


def _check_case(name: str) -> Tuple[np.ndarray, float]:
    cell, cutoff, path = PERIODIC_CASES[name]
    assert is_reduced(cell)
    n_cells = np.floor(widths(cell) / cutoff)
    assert n_cells.min() >= 2  # cutoff <= half width
    assert (n_cells.min() >= 3) == (path == "cells")
    return cell, cutoff


@pytest.mark.parametrize("name", list(PERIODIC_CASES))
def test_periodic_pairs_equal_ase(name, scripted):
    cell, cutoff = _check_case(name)
    pos = periodic_atoms(cell, seed=len(name), density=0.05)  # half of DENSITY: ASE is the slow part
    nb, valid = neighbor_list(torch.tensor(pos), cutoff, torch.tensor(cell))
    got = pairs(nb, valid)
    n = len(pos)
    assert {(i, i) for i in range(n)} <= got
    assert {p for p in got if p[0] != p[1]} == ase_pairs(pos, cell, cutoff)
    nb_s, valid_s = scripted[0](torch.tensor(pos), cutoff, torch.tensor(cell))
    assert torch.equal(nb_s, nb) and torch.equal(valid_s, valid)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["tric-cells-6", "tric-narrow"])
def test_periodic_float32_and_device(name, device):
    """float32 (cell given in float64) agrees with float64 up to pairs at the cutoff."""
    cell, cutoff = _check_case(name)
    pos = periodic_atoms(cell, seed=3)
    ref = pairs(*neighbor_list(torch.tensor(pos), cutoff, torch.tensor(cell)))
    x = torch.tensor(pos, dtype=torch.float32, device=device)
    got = pairs(*neighbor_list(x, cutoff, torch.tensor(cell, device=device)))
    diff = [(i, j) for i, j in ref ^ got]
    r = np.linalg.norm(min_image_brute(pos[[j for _, j in diff]] - pos[[i for i, _ in diff]], cell), axis=-1)
    assert np.all(np.abs(r - cutoff) < 1e-4)


@pytest.mark.parametrize("name", ["tric-cells-3", "tric-cells-6", "tric-narrow", "ortho-cells"])
def test_lattice_shifts_leave_neighbour_sets_unchanged(name):
    cell, cutoff = _check_case(name)
    pos = periodic_atoms(cell, seed=7)
    rng = np.random.default_rng(8)
    shifted = pos + rng.integers(-3, 4, size=(len(pos), 3)) @ cell
    t_cell = torch.tensor(cell)
    assert pairs(*neighbor_list(torch.tensor(shifted), cutoff, t_cell)) == pairs(
        *neighbor_list(torch.tensor(pos), cutoff, t_cell))


def test_periodic_memory_is_linear():
    """Cell-list path: the candidate width (27 x largest cell occupancy) does not grow with N."""
    cutoff = 4.5
    sizes: Dict[int, int] = {}
    for scale in (1.0, 2.0):
        cell = scale * TRICLINIC
        pos = periodic_atoms(cell, seed=1, density=0.03)
        nb, _ = neighbor_list(torch.tensor(pos), cutoff, torch.tensor(cell))
        sizes[len(pos)] = nb.shape[1]
    small, large = sorted(sizes)
    assert large > 3 * small and sizes[large] < 2 * sizes[small]


# ---------------------------------------------------------------- minimum image


@pytest.mark.parametrize("cell", [TRICLINIC, ORTHORHOMBIC, 2.0 * TRICLINIC], ids=["tric", "ortho", "tric2"])
def test_minimum_image_is_the_shortest_image_within_half_a_width(cell, scripted):
    rng = np.random.default_rng(5)
    d = rng.uniform(-1.5, 1.5, size=(4000, 3)) @ cell
    best = min_image_brute(d, cell)
    short = np.linalg.norm(best, axis=-1) < 0.5 * widths(cell).min()
    assert short.sum() > 500
    t_d, t_cell = torch.tensor(d), torch.tensor(cell)
    out = minimum_image(t_d, t_cell)
    np.testing.assert_allclose(out.numpy()[short], best[short], rtol=0, atol=1e-9)
    lattice = np.linalg.solve(cell.T, (d - out.numpy()).T).T  # every result is an image of d
    np.testing.assert_allclose(lattice, np.round(lattice), rtol=0, atol=1e-9)
    assert torch.equal(scripted[1](t_d, t_cell), out)
    batched = minimum_image(t_d.reshape(40, 100, 3), t_cell)  # any leading shape
    assert torch.equal(batched.reshape(-1, 3), out)
    out32 = minimum_image(t_d.float(), t_cell)  # cell follows d's dtype
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy()[short], best[short], rtol=0, atol=1e-4)


def test_minimum_image_gradient_is_identity(scripted):
    rng = np.random.default_rng(6)
    d = torch.tensor(rng.uniform(-2.0, 2.0, size=(50, 3)) @ TRICLINIC, requires_grad=True)
    v = torch.randn(50, 3, dtype=torch.float64)
    for fn in (minimum_image, scripted[1]):
        (grad,) = torch.autograd.grad(fn(d, torch.tensor(TRICLINIC)), d, v)
        assert torch.equal(grad, v)


# ---------------------------------------------------------------- check_cell


def _raises(fn, cell: Tensor, cutoff: float, *words: str) -> None:
    """``ValueError`` eagerly; TorchScript re-raises it as ``torch.jit.Error`` with the same text."""
    with pytest.raises((ValueError, torch.jit.Error)) as info:
        fn(cell, cutoff)
    for word in words:
        assert word in str(info.value)


def test_check_cell_rejects_small_or_invalid_boxes():
    scripted_check = torch.jit.script(check_cell)
    cell = torch.tensor(TRICLINIC)
    w = float(widths(TRICLINIC).min())  # 18.0
    for fn in (check_cell, scripted_check):
        fn(cell, 0.5 * w)  # exactly half: accepted
        fn(cell.float(), 4.0)
        _raises(fn, cell, 9.01, "width", "18", "9.01")
        _raises(fn, cell * torch.tensor([[1.0], [1.0], [-1.0]], dtype=torch.float64), 1.0, "volume")
        _raises(fn, torch.zeros(3, 3, dtype=torch.float64), 1.0)
        _raises(fn, cell.T.contiguous(), 1.0, "lower triangular")  # not OpenMM's form
        _raises(fn, torch.eye(2, dtype=torch.float64), 1.0, "(3, 3)")
    with pytest.raises(ValueError, match="width"):
        neighbor_list(torch.zeros(4, 3, dtype=torch.float64), 9.5, cell)


def test_narrow_boxes_visit_each_cell_once():
    """Sanity of the case table: along an axis with n_k < 3 cells only n_k of the 3 offsets are
    kept (the others name the same cell again), so the kept offsets number prod(min(n_k, 3))."""
    from transip_openmm.neighbors import _cell_grid, cell_widths

    for name, (cell, cutoff, grid) in PERIODIC_CASES.items():
        n_cells = np.maximum(np.floor(cell_widths(torch.tensor(cell)).numpy() / cutoff), 1).astype(int)
        assert (n_cells.min() < 3) == (grid == "narrow"), name
        pos = torch.tensor(periodic_atoms(cell, seed=2))
        cell_id, neighbor_cell, offset_ok = _cell_grid(pos, cutoff, torch.tensor(cell))
        assert int(offset_ok.sum()) == int(np.prod(np.minimum(n_cells, 3))), name
        kept = neighbor_cell[:, offset_ok]
        assert all(len(set(row)) == kept.shape[1] for row in kept.tolist()), name  # distinct cells
        assert int(cell_id.max()) < int(np.prod(n_cells))
