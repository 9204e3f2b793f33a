"""mdtraj analysis functions on configurations with known answers."""

from __future__ import annotations

from pathlib import Path

import mdtraj
import numpy as np
import pytest
from transip_openmm.simulations import analysis as A

REPO = Path(__file__).resolve().parents[2]
INPUTS = REPO / "simulations" / "inputs"


def _gas(n_frames: int = 50, n: int = 400, box: float = 3.0, seed: int = 0) -> mdtraj.Trajectory:
    top = mdtraj.Topology()
    chain = top.add_chain()
    for _ in range(n):
        top.add_atom("O", mdtraj.element.oxygen, top.add_residue("HOH", chain))
    xyz = np.random.default_rng(seed).uniform(0, box, (n_frames, n, 3)).astype(np.float32)
    return mdtraj.Trajectory(xyz, top, unitcell_lengths=np.full((n_frames, 3), box),
                             unitcell_angles=np.full((n_frames, 3), 90.0))


def test_rdf_of_ideal_gas_is_one() -> None:
    traj = _gas()
    r, g = A.compute_rdf(traj, [0, 1, 2, 3], list(range(4, 400)), r_max_nm=1.2, n_bins=12)
    assert r.shape == g.shape == (12,)
    assert np.mean(g[3:]) == pytest.approx(1.0, abs=0.05)


def test_coordination_number_counts_neighbours_within_cutoff() -> None:
    top = mdtraj.Topology()
    chain = top.add_chain()
    for name, el in [("NA", mdtraj.element.sodium)] + [("O", mdtraj.element.oxygen)] * 4:
        top.add_atom(name, el, top.add_residue(name, chain))
    xyz = np.array([[[0, 0, 0], [0.24, 0, 0], [0, 0.25, 0], [0, 0, -0.30], [0.5, 0, 0]]], np.float32)
    traj = mdtraj.Trajectory(np.repeat(xyz, 2, axis=0), top)
    cn = A.compute_coordination_number(traj, 0, [1, 2, 3, 4], cutoff_nm=0.32)
    np.testing.assert_array_equal(cn, [3.0, 3.0])
    assert A.find_ions(top) == {0: "Na"}


def test_ramachandran_and_rmsd_of_alanine_dipeptide() -> None:
    traj = mdtraj.load(str(INPUTS / "alanine-dipeptide.pdb"))
    phi, psi = A.compute_ramachandran(traj)
    assert phi.shape == psi.shape == (1, 1)
    _, ref_phi = mdtraj.compute_phi(traj)
    assert phi[0, 0] == pytest.approx(np.degrees(ref_phi[0, 0]))
    assert -180 <= phi[0, 0] <= 180 and -180 <= psi[0, 0] <= 180
    two = mdtraj.join([traj, traj])
    two.xyz[1] = two.xyz[1] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32).T + 1.0
    np.testing.assert_allclose(A.compute_rmsd(two), [0.0, 0.0], atol=1e-3)  # rigid motion only
    assert len(A.peptide_atoms(traj.topology)) == 22


def test_bond_stretch_detects_a_broken_bond():
    import mdtraj

    from transip_openmm.simulations.analysis import compute_bond_stretch

    top = mdtraj.Topology()
    chain = top.add_chain()
    res = top.add_residue("MOL", chain)
    c = top.add_atom("C", mdtraj.element.carbon, res)
    h = top.add_atom("H", mdtraj.element.hydrogen, res)
    top.add_bond(c, h)
    xyz = np.array([[[0.0, 0.0, 0.0], [0.109, 0.0, 0.0]],
                    [[0.0, 0.0, 0.0], [0.120, 0.0, 0.0]],
                    [[0.0, 0.0, 0.0], [0.500, 0.0, 0.0]]], dtype=np.float32)
    traj = mdtraj.Trajectory(xyz, top)
    ratio = compute_bond_stretch(traj, traj[0])
    assert ratio.shape == (3, 1)
    np.testing.assert_allclose(ratio[:, 0], [1.0, 0.120 / 0.109, 0.500 / 0.109], rtol=1e-5)


def test_new_bonds_are_counted_only_between_unbonded_atoms_in_covalent_contact():
    """O-C-N (an amide's O and N, 2.25 Å apart, not bonded) collapsing to 1.2 Å is a new bond;
    the bonded pairs at any length and the starting geometry are not."""
    from transip_openmm.simulations.analysis import count_new_bonds

    numbers = [8, 6, 7]
    bonds = np.array([[0, 1], [1, 2]])
    start = np.array([[-0.1125, 0.07, 0.0], [0.0, 0.0, 0.0], [0.1125, 0.07, 0.0]])  # O...N 0.225 nm
    collapsed = start.copy()
    collapsed[2] = start[0] + np.array([0.12, 0.0, 0.0])  # O...N 0.12 nm
    stretched = start * 3.0  # bonded pairs far apart: breaking is not "new"
    counts = count_new_bonds(np.stack([start, collapsed, stretched]), numbers, bonds)
    np.testing.assert_array_equal(counts, [0, 1, 0])
    assert count_new_bonds(collapsed, numbers, np.zeros((0, 2), int)).tolist() == [3]


def test_new_bonds_across_a_periodic_boundary_are_found_by_minimum_image():
    """An O-H and a lone O, the two oxygens 0.1 nm apart through a face of a 1.0 nm box (0.9 nm
    apart in the frame): a new bond only when the box is given; the pair is named."""
    from transip_openmm.simulations.analysis import count_new_bonds, new_bond_pairs

    numbers = [8, 1, 8]
    bonds = np.array([[0, 1]])
    frame = np.array([[0.05, 0.5, 0.5], [0.145, 0.5, 0.5], [0.95, 0.5, 0.5]])
    box = np.eye(3) * 1.0
    assert count_new_bonds(frame, numbers, bonds).tolist() == [0]
    assert count_new_bonds(frame, numbers, bonds, boxes_nm=box[None]).tolist() == [1]
    assert new_bond_pairs(frame, numbers, bonds, box_nm=box).tolist() == [[0, 2]]


def test_circular_statistics_of_angles_across_the_wrap() -> None:
    """-170° and 170° are 20° apart round ±180°: the circular mean is 180°, not the plain 0°."""
    stats = A.circular_stats_deg(np.array([-170.0, 170.0, -175.0, 175.0]))
    assert abs(abs(stats["circular_mean_deg"]) - 180.0) < 1e-9
    assert stats["circular_std_deg"] == pytest.approx(7.9, abs=0.1)  # sqrt(-2 ln R), R = (cos 10° + cos 5°) / 2
    assert 0.99 < stats["mean_resultant_length"] <= 1.0
    same = A.circular_stats_deg(np.full(5, 42.0))
    assert same["circular_mean_deg"] == pytest.approx(42.0) and same["circular_std_deg"] == pytest.approx(0.0, abs=1e-6)
    spread = A.circular_stats_deg(np.arange(-180.0, 180.0, 10.0))
    assert spread["mean_resultant_length"] < 1e-9  # uniform round the circle


def _fake_run(run: Path) -> mdtraj.Trajectory:
    """A run directory as `transip simulate` leaves it: alanine dipeptide, 6 distorted frames."""
    import csv
    import json

    from transip_openmm.simulations.runner import CSV_COLUMNS

    run.mkdir()
    start = mdtraj.load(str(INPUTS / "alanine-dipeptide.pdb"))
    start.save_pdb(str(run / "topology.pdb"))
    rng = np.random.default_rng(1)
    traj = mdtraj.join([start] * 6)
    traj.xyz = traj.xyz + rng.normal(0, 0.01, traj.xyz.shape).astype(np.float32)
    traj.save_dcd(str(run / "trajectory.dcd"))
    (run / "run.json").write_text(json.dumps({"protocol": "fake", "trajectory": "trajectory.dcd", "timestep_fs": 0.5,
                                              "frame_interval_ps": 0.05, "frame_steps": list(range(100, 700, 100)),
                                              "ml_atoms": list(range(22))}))
    with open(run / "state_data.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for k in range(6):
            writer.writerow(["2-production", 100 * (k + 1), 0.05 * (k + 1), -1.3e6 + k, 50.0, -1.3e6 + 50 + k,
                             300.0, "nan", "nan", 100.0, 1.0])
    return traj


def test_summary_states_units_reference_and_circular_angles(tmp_path: Path) -> None:
    from transip_openmm.simulations.analyze_cli import analyze_run

    traj = _fake_run(tmp_path / "run")
    summary = analyze_run(tmp_path / "run", tmp_path / "run" / "analysis")
    assert "rmsd_nm" not in summary
    rmsd = summary["rmsd_angstrom"]
    heavy = [a.index for a in traj.topology.atoms if a.element.symbol != "H"]
    written = mdtraj.load(str(tmp_path / "run" / "trajectory.dcd"), top=str(tmp_path / "run" / "topology.pdb"))
    expected = mdtraj.rmsd(written, traj, 0, atom_indices=heavy) * 10.0  # nm -> Å
    assert rmsd["max"] == pytest.approx(float(expected.max()), rel=1e-4)
    assert "frame 0 (t = 0.05 ps)" in rmsd["reference"] and "heavy atoms (10)" in rmsd["atoms"]
    phi, _ = A.compute_ramachandran(traj)
    assert summary["ramachandran_deg"]["phi"]["circular_mean_deg"] == pytest.approx(
        A.circular_stats_deg(phi)["circular_mean_deg"], abs=0.05)
    assert set(Path(p).name for p in summary["plots"]) == {"traces.png", "rmsd.png", "ramachandran.png"}
