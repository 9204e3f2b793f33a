"""Trajectory analysis with mdtraj: free functions ``compute_*`` returning numpy arrays.

Units follow mdtraj: lengths in nm, angles in degrees (converted from mdtraj's radians
here and said so), times in ps, energies in kJ/mol, temperatures in K, densities in g/mL.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Single-atom residues treated as ions, and the default ion-oxygen coordination cutoff (nm),
#: about the first minimum of the ion-water-oxygen g(r) in aqueous solution.
ION_O_CUTOFF_NM = {"Li": 0.28, "Na": 0.32, "K": 0.36, "Rb": 0.38, "Cs": 0.40, "Mg": 0.28,
                   "Ca": 0.32, "F": 0.32, "Cl": 0.38, "Br": 0.40, "I": 0.42}


def read_state_data(path: Path) -> dict[str, np.ndarray]:
    """Columns of ``state_data.csv`` as arrays (``stage`` as str, the rest float)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = np.array(values) if key == "stage" else np.array([float(v) for v in values])
    return out


def compute_rmsd(traj, atom_indices: Sequence[int] | None = None, reference_frame: int = 0) -> np.ndarray:
    """RMSD (n_frames,) in nm of ``atom_indices`` after optimal superposition on frame
    ``reference_frame`` (same atoms)."""
    import mdtraj

    idx = np.arange(traj.n_atoms) if atom_indices is None else np.asarray(atom_indices)
    return mdtraj.rmsd(traj, traj, reference_frame, atom_indices=idx)


def compute_bond_stretch(traj, reference, atom_indices: Sequence[int] | None = None) -> np.ndarray:
    """Bond length / reference bond length, (n_frames, n_bonds), for the topology's bonds
    between ``atom_indices`` (default: all atoms). Ratios far above 1 (e.g. > 1.5) mean a
    bond broke: the molecule did not stay intact. ``reference``: an mdtraj frame with the
    same topology (e.g. the starting structure). Bonds across periodic images are measured
    by minimum image."""
    import mdtraj

    keep = None if atom_indices is None else set(int(i) for i in atom_indices)
    pairs = np.array([[a.index, b.index] for a, b in traj.topology.bonds
                      if keep is None or (a.index in keep and b.index in keep)], dtype=int)
    if len(pairs) == 0:
        return np.zeros((traj.n_frames, 0))
    periodic = traj.unitcell_vectors is not None
    d0 = mdtraj.compute_distances(reference[0], pairs, periodic=reference.unitcell_vectors is not None)[0]
    return mdtraj.compute_distances(traj, pairs, periodic=periodic) / d0


#: A non-bonded pair closer than this times the sum of covalent radii counts as a new bond.
NEW_BOND_FACTOR = 1.1


def new_bond_pairs(positions_nm: np.ndarray, numbers: Sequence[int], bonds: np.ndarray,
                   factor: float = NEW_BOND_FACTOR, box_nm: np.ndarray | None = None) -> np.ndarray:
    """Atom pairs (K, 2), i < j, of one frame (N, 3) nm that are *not* bonded in the topology
    but closer than ``factor`` × the sum of their covalent radii (Å → nm); bonds (B, 2);
    box_nm (3, 3) rows = box vectors: distances by minimum image (periodic runs)."""
    from ase.data import covalent_radii

    x = np.asarray(positions_nm, dtype=np.float64)
    n = x.shape[0]
    radii_nm = covalent_radii[np.asarray(numbers, dtype=int)] / 10.0
    threshold = factor * (radii_nm[:, None] + radii_nm[None, :])
    bonded = np.eye(n, dtype=bool)
    if len(bonds):
        b = np.asarray(bonds, dtype=int)
        bonded[b[:, 0], b[:, 1]] = bonded[b[:, 1], b[:, 0]] = True
    diff = x[:, None, :] - x[None, :, :]
    if box_nm is not None:
        box = np.asarray(box_nm, dtype=np.float64)
        frac = diff @ np.linalg.inv(box)
        diff = (frac - np.round(frac)) @ box
    d = np.linalg.norm(diff, axis=-1)
    return np.argwhere(np.triu((d < threshold) & ~bonded, k=1))


def count_new_bonds(positions_nm: np.ndarray, numbers: Sequence[int], bonds: np.ndarray,
                    factor: float = NEW_BOND_FACTOR, boxes_nm: np.ndarray | None = None) -> np.ndarray:
    """Number of atom pairs per frame that are *not* bonded in the topology but closer than
    ``factor`` × the sum of their covalent radii: bonds the topology does not have, i.e. the
    chemistry changed (a collapsed ring, a transferred proton). positions_nm (F, N, 3) or
    (N, 3) nm; numbers (N,) atomic numbers; bonds (B, 2) atom indices; boxes_nm (F, 3, 3) or
    None: periodic boxes of the frames (mdtraj's ``unitcell_vectors``). Returns (F,) int."""
    x = np.asarray(positions_nm, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    boxes = [None] * len(x) if boxes_nm is None else np.asarray(boxes_nm).reshape(-1, 3, 3)
    # one frame at a time: memory N², not F·N²
    return np.array([len(new_bond_pairs(frame, numbers, bonds, factor, box)) for frame, box in zip(x, boxes)],
                    dtype=np.int64)


def compute_ramachandran(traj) -> tuple[np.ndarray, np.ndarray]:
    """Backbone dihedrals φ and ψ in degrees, each (n_frames, n_angles) in [-180, 180)."""
    import mdtraj

    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    return np.degrees(phi), np.degrees(psi)


def circular_stats_deg(angles_deg: np.ndarray) -> dict[str, float]:
    """Circular statistics of angles in degrees (any shape, flattened; NaN ignored).

    ``circular_mean_deg`` in [-180, 180): direction of the mean unit vector;
    ``circular_std_deg``: sqrt(-2 ln R) in degrees; ``mean_resultant_length`` R in [0, 1]
    (1: all equal, ~0: spread round the circle). A plain mean of -179° and 179° is 0°; the
    circular mean is 180°.
    """
    from scipy import stats

    a = np.asarray(angles_deg, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {}
    rad = np.radians(a)
    resultant = float(np.hypot(np.mean(np.cos(rad)), np.mean(np.sin(rad))))
    mean = float(np.degrees(stats.circmean(rad, high=np.pi, low=-np.pi)))
    return {"circular_mean_deg": (mean + 180.0) % 360.0 - 180.0,
            "circular_std_deg": float(np.degrees(stats.circstd(rad, high=np.pi, low=-np.pi))),
            "mean_resultant_length": resultant, "n": int(a.size)}


def compute_pair_distances(traj, centers: Sequence[int], partners: Sequence[int]) -> np.ndarray:
    """Distances (n_frames, n_centers * n_partners) in nm, minimum image if periodic."""
    import mdtraj

    pairs = np.array([(c, p) for c in centers for p in partners if c != p])
    if len(pairs) == 0:
        return np.zeros((traj.n_frames, 0))
    return mdtraj.compute_distances(traj, pairs, periodic=traj.unitcell_vectors is not None)


def compute_rdf(traj, centers: Sequence[int], partners: Sequence[int], r_max_nm: float = 0.8,
                n_bins: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function of ``partners`` around ``centers``.

    Returns ``(r, g)``: bin centres (n_bins,) in nm and g(r) (n_bins,) (dimensionless). With a
    periodic box g is normalised by the partners' mean number density (→ 1 far away); for a
    cluster without a box it is the local number density in nm⁻³ (no bulk reference).
    """
    d = compute_pair_distances(traj, centers, partners)
    edges = np.linspace(0.0, r_max_nm, n_bins + 1)
    counts, _ = np.histogram(d.ravel(), bins=edges)
    r = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    local = counts / (traj.n_frames * max(len(centers), 1) * shell)  # nm^-3
    if traj.unitcell_volumes is not None:
        bulk = len(partners) / float(np.mean(traj.unitcell_volumes))
        return r, local / bulk
    return r, local


def compute_coordination_number(traj, center: int, partners: Sequence[int], cutoff_nm: float) -> np.ndarray:
    """Number of ``partners`` within ``cutoff_nm`` of atom ``center``, per frame (n_frames,)."""
    d = compute_pair_distances(traj, [center], partners)
    return (d < cutoff_nm).sum(axis=1).astype(float)


def find_ions(topology) -> dict[int, str]:
    """Atom index -> element symbol of single-atom residues that are ions (mdtraj topology)."""
    out = {}
    for residue in topology.residues:
        if residue.n_atoms == 1:
            atom = residue.atom(0)
            if atom.element is not None and atom.element.symbol in ION_O_CUTOFF_NM:
                out[atom.index] = atom.element.symbol
    return out


def peptide_atoms(topology) -> np.ndarray:
    """Indices of protein atoms (including ACE/NME caps)."""
    caps = [r.index for r in topology.residues if r.name in ("ACE", "NME", "NH2")]
    sel = set(topology.select("protein").tolist())
    for r in caps:
        sel.update(a.index for a in topology.residue(r).atoms)
    return np.array(sorted(sel), dtype=int)
