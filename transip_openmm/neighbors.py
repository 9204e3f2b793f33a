"""Neighbour lists and minimum-image displacements, open or periodic (TorchScript compatible).

Units: positions, displacements, cutoffs and box vectors in Å.

Periodic boxes follow OpenMM: ``cell`` is a (3, 3) tensor whose rows are the box vectors
a, b, c in reduced triclinic form (a along x, b in the xy plane, so ``cell`` is lower
triangular with a positive diagonal; in addition OpenMM keeps ``|b_x| <= a_x/2``,
``|c_x| <= a_x/2``, ``|c_y| <= b_y/2``). The perpendicular width of the box along
fractional axis k is ``volume / |cross of the other two box vectors|``.

* :func:`minimum_image` (d (..., 3), cell (3, 3)) -> (..., 3): minimum-image displacements by
  sequential rounding along c, then b, then a (as OpenMM). It is exact, i.e. it returns the
  shortest image, whenever that image is shorter than half the smallest perpendicular width.
* :func:`check_cell` (cell (3, 3), cutoff) -> None: raises ``ValueError`` unless the cell is
  lower triangular with a positive volume and ``cutoff <= width / 2`` for every width, the
  condition under which every atom has at most one image within the cutoff and
  :func:`minimum_image` finds it.
* :func:`neighbor_list` (positions (N, 3), cutoff, cell (3, 3) or None) ->
  ``(neighbors (N, M) int64, valid (N, M) bool)``: every pair closer than ``cutoff`` (by
  minimum image when periodic), self included, by a cell list in O(N) time and memory; M is
  the largest neighbour count, read on the host.
* :func:`static_neighbor_list` (..., max_neighbors M, max_cell_atoms K) -> ``(neighbors (N, M),
  valid (N, M), demand (2,))``: the same list with shapes fixed by a capacity and no host read
  (capturable in a CUDA graph); ``demand`` tells the caller, after the call, whether the
  capacity held. :func:`neighbor_demand` measures the capacity a structure needs;
  :func:`cell_is_valid` is :func:`check_cell` as a device-side flag.

The cell list divides space into cells at least ``cutoff`` wide (periodic: ``floor(width_k /
cutoff)`` cells along each fractional axis, wrapped), so all neighbours lie in the 27
adjacent cells; along a periodic axis with fewer than three cells, offsets that would name a
cell twice are left out.

Called from TorchScript, ``ValueError`` surfaces as ``torch.jit.Error`` (a ``RuntimeError``)
with the same message.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor


def minimum_image(d: Tensor, cell: Tensor) -> Tensor:
    """Minimum-image displacement vectors.

    d: (..., 3) Å; cell: (3, 3) Å, rows are the box vectors a, b, c in OpenMM's reduced
    triclinic form (lower triangular). Subtracts ``round(d_z / c_z) c``, then
    ``round(d_y / b_y) b``, then ``round(d_x / a_x) a`` (rounding half up, as OpenMM's
    ``floor(x + 0.5)``). The result is the shortest image whenever that is shorter than half
    the smallest perpendicular width of the box. The rounding uses detached values, so the
    result is differentiable in ``d`` (gradient: the identity) and in ``cell``.
    Returns (..., 3) in the dtype of ``d``.
    """
    box = cell.to(dtype=d.dtype, device=d.device)
    out = d
    for k in [2, 1, 0]:
        shift = torch.floor(out.detach()[..., k] / box[k, k].detach() + 0.5)
        out = out - shift.unsqueeze(-1) * box[k]
    return out


def _floats(t: Tensor) -> List[float]:
    """A 1-D tensor as a Python list (TorchScript needs the annotation)."""
    out: List[float] = t.tolist()
    return out


def _rows(t: Tensor) -> List[List[float]]:
    """A 2-D tensor as nested Python lists."""
    out: List[List[float]] = t.tolist()
    return out


def format_decimal(x: float, digits: int) -> str:
    """``x`` rounded to ``digits`` decimals, trailing zeros dropped (TorchScript's ``str(float)``
    prints 17 significant digits)."""
    scale = 1
    for _ in range(digits):
        scale *= 10
    units = int(math.floor(abs(x) * scale + 0.5))
    frac = str(units % scale + scale)[1:].rstrip("0")  # zero-padded to ``digits``, trailing zeros dropped
    text = str(units // scale) + "." + (frac if len(frac) > 0 else "0")
    return "-" + text if x < 0.0 else text


def _perpendicular_widths(cell: Tensor) -> Tuple[Tensor, float]:
    """(widths (3,), volume) of a (3, 3) cell, computed in float64 on the CPU."""
    c = cell.detach().to(device=torch.device("cpu"), dtype=torch.float64)
    normals = torch.linalg.cross(torch.roll(c, -1, 0), torch.roll(c, -2, 0))  # b×c, c×a, a×b
    volume = float((c[0] * normals[0]).sum())
    return volume / torch.linalg.vector_norm(normals, dim=1), volume


def check_cell(cell: Tensor, cutoff: float) -> None:
    """Validate a periodic box for a neighbour cutoff (Å); raises ``ValueError`` unless
    ``cell`` is a finite (3, 3) lower-triangular matrix (OpenMM's reduced form: a along x,
    b in the xy plane) with a positive volume and ``cutoff <= width_k / 2`` for each
    perpendicular width ``width_k = volume / |cross of the other two box vectors|``."""
    if cell.dim() != 2 or cell.shape[0] != 3 or cell.shape[1] != 3:
        raise ValueError("periodic cell must have shape (3, 3) (rows: box vectors a, b, c in Å), got {}".format(
            cell.shape))
    c = cell.detach().to(device=torch.device("cpu"), dtype=torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("periodic cell has non-finite entries: {}".format(_rows(c)))
    scale = float(c.abs().max())
    if max(abs(float(c[0, 1])), abs(float(c[0, 2])), abs(float(c[1, 2]))) > 1e-6 * scale:
        raise ValueError(
            "periodic cell must be in OpenMM's reduced form, lower triangular (a along x, b in the "
            "xy plane), got rows {}".format(_rows(c)))
    widths, volume = _perpendicular_widths(c)
    if not volume > 0.0:
        raise ValueError("periodic cell must have a positive volume (right-handed a, b, c), got {} Å^3".format(
            format_decimal(volume, 6)))
    width = float(widths.min())
    if cutoff > 0.5 * width:
        shown = ", ".join([format_decimal(w, 3) for w in _floats(widths)])
        raise ValueError(
            "cutoff {} Å is more than half the smallest perpendicular width of the periodic box ({} Å): "
            "the box must be at least twice the cutoff wide (widths {} Å)".format(
                format_decimal(cutoff, 6), format_decimal(width, 6), shown))


def cell_widths(cell: Tensor) -> Tensor:
    """Perpendicular widths (3,) Å of a (3, 3) cell, computed on its device and in its dtype
    (no host read: usable inside a CUDA graph)."""
    normals = torch.linalg.cross(torch.roll(cell, -1, 0), torch.roll(cell, -2, 0))  # b×c, c×a, a×b
    volume = (cell[0] * normals[0]).sum()
    return volume / torch.linalg.vector_norm(normals, dim=1)


def cell_is_valid(cell: Tensor, cutoff: float) -> Tensor:
    """Capture-safe counterpart of :func:`check_cell`: a bool () tensor on the cell's device, True
    when ``check_cell(cell, cutoff)`` passes (same tests, float64, no host read). ``cell``: (3, 3) Å."""
    c = cell.detach().to(torch.float64)
    finite = torch.isfinite(c).all()
    c = torch.where(finite, c, torch.eye(3, dtype=c.dtype, device=c.device))  # keep the algebra finite
    upper = torch.stack([c[0, 1], c[0, 2], c[1, 2]]).abs().max()
    lower_triangular = upper <= 1e-6 * c.abs().max()
    volume = c[0, 0] * c[1, 1] * c[2, 2]
    fits = 2.0 * cutoff <= cell_widths(c).min()
    return finite & lower_triangular & (volume > 0.0) & fits


def _offsets(device: torch.device) -> Tensor:
    """The 27 cell offsets (27, 3) int64 in {-1, 0, 1}^3; row 13 is (0, 0, 0)."""
    ar = torch.arange(-1, 2, device=device)
    return torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1).reshape(27, 3)


def _fractional(pos: Tensor, box: Tensor) -> Tensor:
    """Fractional coordinates (N, 3) of positions (N, 3) in a lower-triangular box (3, 3), by
    forward substitution (no matrix inverse: ``linalg.inv`` checks for singularity on the host)."""
    fc = pos[:, 2] / box[2, 2]
    fb = (pos[:, 1] - fc * box[2, 1]) / box[1, 1]
    fa = (pos[:, 0] - fb * box[1, 0] - fc * box[2, 0]) / box[0, 0]
    return torch.stack([fa, fb, fc], dim=1)


def _cell_grid(pos: Tensor, cutoff: float, box: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Cell-list grid of cells at least ``cutoff`` wide, built on the device with static shapes.

    Returns (cell_id (N,) int64, neighbor_cell (N, 27) int64: the ids of the 27 cells around
    each atom's cell, offset_ok (27,) bool: offsets that name distinct cells). Open boundaries:
    a grid over the bounding box with an empty layer on each side (no wrap-around). Periodic
    (``box`` (3, 3) in pos's dtype): ``max(1, floor(width_k / cutoff))`` cells along each
    fractional axis, wrapped; along an axis with fewer than 3 cells the offsets that would
    name the same cell twice are switched off (``offset_ok``), so every pair is found once.
    """
    offsets = _offsets(pos.device)
    if box is None:
        cell = torch.floor((pos - pos.min(dim=0).values) / cutoff).to(torch.long) + 1
        dims = cell.max(dim=0).values + 2  # one empty cell layer on each side: no wrap-around
        stride = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])
        cell_id = (cell * stride).sum(dim=1)
        neighbor_cell = cell_id.unsqueeze(1) + (offsets * stride).sum(dim=1)
        return cell_id, neighbor_cell, torch.ones(27, dtype=torch.bool, device=pos.device)
    dims = torch.clamp(torch.floor(cell_widths(box) / cutoff), min=1.0).to(torch.long)  # (3,)
    stride = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])
    frac = _fractional(pos, box)  # any real value
    cell = torch.remainder(torch.floor(frac * dims.to(frac.dtype)).to(torch.long), dims)  # in [0, n_k)
    cell_id = (cell * stride).sum(dim=1)
    neighbor_cell = (torch.remainder(cell.unsqueeze(1) + offsets, dims) * stride).sum(dim=-1)  # (N, 27)
    distinct = (offsets == 0) | ((offsets == 1) & (dims >= 2)) | ((offsets == -1) & (dims >= 3))
    return cell_id, neighbor_cell, distinct.all(dim=1)


def _cell_ranges(cell_id: Tensor, neighbor_cell: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(order (N,): atoms sorted by cell, start (N, 27), end (N, 27)): the atoms of cell
    ``neighbor_cell[i, k]`` are ``order[start[i, k]:end[i, k]]``."""
    sorted_id, order = torch.sort(cell_id)
    start = torch.searchsorted(sorted_id, neighbor_cell)
    end = torch.searchsorted(sorted_id, neighbor_cell, right=True)
    return order, start, end


def _candidates(order: Tensor, start: Tensor, end: Tensor, offset_ok: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """(candidates (N, 27 k) int64, in_cell (N, 27 k) bool): the first ``k`` atoms of each of the
    27 cells around every atom; cells holding more than ``k`` atoms are cut short."""
    n = order.shape[0]
    slot = start.unsqueeze(-1) + torch.arange(k, device=order.device)  # (N, 27, k)
    in_cell = (slot < end.unsqueeze(-1)) & offset_ok.view(1, 27, 1)
    candidates = order[slot.clamp(max=n - 1)].reshape(n, 27 * k)
    return candidates, in_cell.reshape(n, 27 * k)


def _close(pos: Tensor, candidates: Tensor, in_cell: Tensor, cutoff: float, box: Optional[Tensor]) -> Tensor:
    """(N, C) bool: candidate j of atom i lies within ``cutoff`` (minimum image when periodic)."""
    d = pos[candidates] - pos.unsqueeze(1)
    if box is not None:
        d = minimum_image(d, box)
    return in_cell & ((d * d).sum(dim=-1) < cutoff * cutoff)


def _compact(candidates: Tensor, close: Tensor, m: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Each row of (N, C) ``candidates`` cut down to those marked ``close``, in their order,
    in ``m`` columns padded with the row's own index. Returns (neighbors (N, m), valid (N, m),
    n_close (N,)); rows with more than ``m`` close candidates are cut short."""
    n, c = candidates.shape
    device = candidates.device
    if c < m:  # fewer candidates than columns: pad with never-close entries
        candidates = torch.cat([candidates, torch.zeros(n, m - c, dtype=candidates.dtype, device=device)], dim=1)
        close = torch.cat([close, torch.zeros(n, m - c, dtype=torch.bool, device=device)], dim=1)
    n_close = close.sum(dim=1)
    rank = torch.argsort(close.to(torch.int8), dim=1, descending=True, stable=True)[:, :m]
    neighbors = torch.gather(candidates, 1, rank)
    valid = torch.arange(m, device=device).unsqueeze(0) < n_close.unsqueeze(1)
    self_index = torch.arange(n, device=device).unsqueeze(1).expand(n, m)
    return torch.where(valid, neighbors, self_index), valid, n_close


def static_neighbor_list(
    positions: Tensor, cutoff: float, cell: Optional[Tensor], max_neighbors: int, max_cell_atoms: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """The neighbour list of :func:`neighbor_list` with static shapes and no host read, so it can
    be captured in a CUDA graph.

    positions: (N, 3) Å; cutoff: Å; cell: None or (3, 3) Å in OpenMM's reduced form (not
    validated here: see :func:`cell_is_valid`); ``max_neighbors`` (M, self included) and
    ``max_cell_atoms`` (K, atoms per cell-list cell): the capacity, fixed by the caller.
    Returns ``(neighbors (N, M) int64, valid (N, M) bool, demand (2,) int64)``, where
    ``demand`` = (largest neighbour count, self included; largest cell occupancy). The list is
    complete only if ``demand <= (M, K)``; otherwise rows are cut short and the caller, outside
    the captured region, must refit the capacity (:func:`neighbor_demand`) and evaluate again.
    """
    pos = positions.detach()
    box: Optional[Tensor] = None
    if cell is not None:
        box = cell.detach().to(dtype=pos.dtype, device=pos.device)
    cell_id, neighbor_cell, offset_ok = _cell_grid(pos, cutoff, box)
    order, start, end = _cell_ranges(cell_id, neighbor_cell)
    occupancy = (end[:, 13] - start[:, 13]).max()  # offset 13 = (0, 0, 0): the atom's own cell
    candidates, in_cell = _candidates(order, start, end, offset_ok, max_cell_atoms)
    neighbors, valid, n_close = _compact(candidates, _close(pos, candidates, in_cell, cutoff, box), max_neighbors)
    return neighbors, valid, torch.stack([n_close.max(), occupancy])


def neighbor_demand(positions: Tensor, cutoff: float, cell: Optional[Tensor] = None) -> Tuple[int, int]:
    """(largest neighbour count, self included; largest cell occupancy) of a structure: the
    smallest capacity of :func:`static_neighbor_list` that holds it. Reads the counts on the host
    (for setting a capacity up, outside any captured region). Arguments as :func:`neighbor_list`."""
    _, valid, occupancy = _dynamic_neighbor_list(positions, cutoff, cell, True)
    return int(valid.sum(dim=1).max()), occupancy


def _dynamic_neighbor_list(
    positions: Tensor, cutoff: float, cell: Optional[Tensor], check: bool
) -> Tuple[Tensor, Tensor, int]:
    """:func:`neighbor_list` and the largest cell occupancy (both read on the host)."""
    pos = positions.detach()
    box: Optional[Tensor] = None
    if cell is not None:
        if check:
            check_cell(cell, cutoff)
        box = cell.detach().to(dtype=pos.dtype, device=pos.device)
    cell_id, neighbor_cell, offset_ok = _cell_grid(pos, cutoff, box)
    order, start, end = _cell_ranges(cell_id, neighbor_cell)
    k = int((end[:, 13] - start[:, 13]).max())
    candidates, in_cell = _candidates(order, start, end, offset_ok, k)
    close = _close(pos, candidates, in_cell, cutoff, box)
    neighbors, valid, _ = _compact(candidates, close, int(close.sum(dim=1).max()))
    return neighbors, valid, k


def neighbor_list(
    positions: Tensor, cutoff: float, cell: Optional[Tensor] = None, check: bool = True
) -> Tuple[Tensor, Tensor]:
    """Pairs closer than ``cutoff`` (self included) by a cell list, in O(N) time and memory.

    positions: (N, 3) Å (not differentiated); cutoff: Å; cell: None (open boundaries) or
    (3, 3) Å, rows the box vectors in OpenMM's reduced form (validated by :func:`check_cell`;
    atoms may lie outside the box). Returns ``(neighbors (N, M) int64, valid (N, M) bool)``:
    row i lists every atom j (i itself included) with ``|minimum_image(x_j - x_i)| < cutoff``
    (plain ``|x_j - x_i|`` without a cell), padded (``valid`` False) with index i up to M,
    the largest neighbour count. The order within a row is unspecified.

    ``check=False`` skips :func:`check_cell` for a cell the caller has validated already.
    The shapes depend on the data (two host reads: the largest cell occupancy and the largest
    neighbour count); :func:`static_neighbor_list` is the same list with fixed shapes.
    """
    neighbors, valid, _ = _dynamic_neighbor_list(positions, cutoff, cell, check)
    return neighbors, valid
