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
  minimum image when periodic), self included, by a cell list in O(N) time and memory.

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


def _fmt(x: float, digits: int) -> str:
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
            _fmt(volume, 6)))
    width = float(widths.min())
    if cutoff > 0.5 * width:
        shown = ", ".join([_fmt(w, 3) for w in _floats(widths)])
        raise ValueError(
            "cutoff {} Å is more than half the smallest perpendicular width of the periodic box ({} Å): "
            "the box must be at least twice the cutoff wide (widths {} Å)".format(
                _fmt(cutoff, 6), _fmt(width, 6), shown))


def _select(candidates: Tensor, close: Tensor) -> Tuple[Tensor, Tensor]:
    """Compact each row of (N, C) candidates to those marked ``close``, padded with the row index."""
    n = candidates.shape[0]
    device = candidates.device
    n_close = close.sum(dim=1)
    m = int(n_close.max())
    rank = torch.argsort(close.to(torch.int8), dim=1, descending=True, stable=True)[:, :m]
    neighbors = torch.gather(candidates, 1, rank)
    valid = torch.arange(m, device=device).unsqueeze(0) < n_close.unsqueeze(1)
    self_index = torch.arange(n, device=device).unsqueeze(1).expand(n, m)
    return torch.where(valid, neighbors, self_index), valid


def _cell_candidates(cell_id: Tensor, neighbor_cell: Tensor) -> Tuple[Tensor, Tensor]:
    """Atoms of the cells ``neighbor_cell`` (N, 27) given each atom's ``cell_id`` (N,):
    (candidates (N, 27 K) int64, in_cell (N, 27 K) bool), K the largest cell occupancy."""
    n = cell_id.shape[0]
    sorted_id, order = torch.sort(cell_id)
    unique_id, counts = torch.unique_consecutive(sorted_id, return_counts=True)
    k_max = int(counts.max())
    start = torch.searchsorted(sorted_id, neighbor_cell)
    end = torch.searchsorted(sorted_id, neighbor_cell, right=True)
    slot = start.unsqueeze(-1) + torch.arange(k_max, device=cell_id.device)  # (N, 27, K)
    in_cell = slot < end.unsqueeze(-1)
    candidates = order[slot.clamp(max=n - 1)].reshape(n, 27 * k_max)
    return candidates, in_cell.reshape(n, 27 * k_max)


def _offsets(device: torch.device) -> Tensor:
    """The 27 cell offsets (27, 3) int64 in {-1, 0, 1}^3."""
    ar = torch.arange(-1, 2, device=device)
    return torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), dim=-1).reshape(27, 3)


def _open_neighbor_list(pos: Tensor, cutoff: float) -> Tuple[Tensor, Tensor]:
    """Open boundaries: cell grid over the bounding box with an empty layer on each side."""
    cell = torch.floor((pos - pos.min(dim=0).values) / cutoff).to(torch.long) + 1
    dims = cell.max(dim=0).values + 2  # one empty cell layer on each side: no wrap-around
    stride = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])
    cell_id = (cell * stride).sum(dim=1)
    neighbor_cell = cell_id.unsqueeze(1) + (_offsets(pos.device) * stride).sum(dim=1)  # (N, 27)
    candidates, in_cell = _cell_candidates(cell_id, neighbor_cell)
    d = pos[candidates] - pos.unsqueeze(1)
    close = in_cell & ((d * d).sum(dim=-1) < cutoff * cutoff)
    return _select(candidates, close)


def _periodic_neighbor_list(pos: Tensor, cutoff: float, box: Tensor) -> Tuple[Tensor, Tensor]:
    """Periodic boundaries (``check_cell`` already passed); ``box`` (3, 3) in pos's dtype/device."""
    n = pos.shape[0]
    device = pos.device
    widths, _ = _perpendicular_widths(box)
    n_cells: List[int] = [int(math.floor(float(w) / cutoff)) for w in _floats(widths)]
    if min(n_cells) < 3:  # the 27 wrapped cells would repeat: all pairs (small boxes only)
        d = minimum_image(pos.unsqueeze(0) - pos.unsqueeze(1), box)  # (N, N, 3): x_j - x_i
        candidates = torch.arange(n, device=device).unsqueeze(0).expand(n, n)
        return _select(candidates, (d * d).sum(dim=-1) < cutoff * cutoff)
    dims = torch.tensor(n_cells, dtype=torch.long, device=device)
    stride = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])
    frac = pos @ torch.linalg.inv(box)  # (N, 3) fractional coordinates, any real value
    cell = torch.remainder(torch.floor(frac * dims.to(frac.dtype)).to(torch.long), dims)  # wrapped into [0, n_k)
    cell_id = (cell * stride).sum(dim=1)
    neighbor = torch.remainder(cell.unsqueeze(1) + _offsets(device), dims)  # (N, 27, 3)
    neighbor_cell = (neighbor * stride).sum(dim=-1)  # (N, 27), distinct since every n_k >= 3
    candidates, in_cell = _cell_candidates(cell_id, neighbor_cell)
    d = minimum_image(pos[candidates] - pos.unsqueeze(1), box)
    close = in_cell & ((d * d).sum(dim=-1) < cutoff * cutoff)
    return _select(candidates, close)


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

    Periodic: the box is divided into ``floor(width_k / cutoff)`` cells along each fractional
    axis, so all neighbours lie in the 27 adjacent cells (wrapped); a box less than three
    cutoffs wide along some axis falls back to all N² pairs.
    """
    pos = positions.detach()
    if cell is None:
        return _open_neighbor_list(pos, cutoff)
    if check:  # callers that validated the cell already (once per evaluation) pass False
        check_cell(cell, cutoff)
    box = cell.detach().to(dtype=pos.dtype, device=pos.device)
    return _periodic_neighbor_list(pos, cutoff, box)
