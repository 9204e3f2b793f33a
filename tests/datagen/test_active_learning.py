"""Active learning: frames of an MD run up to the first broken bond."""

import numpy as np
import openmm.app as app
import openmm.unit as unit
import pytest
from datagen_helpers import DATA

from transip_openmm.data.errors import DataGenError
from transip_openmm.data.systems import make_system
from transip_openmm.data.trajectories import first_failure


def _write_run(folder, n_frames: int, break_at: int) -> None:
    """A run folder as ``transip simulate`` writes it: topology.pdb and trajectory.dcd (alanine dipeptide)."""
    pdb = app.PDBFile(str(DATA / "alanine_dipeptide.pdb"))
    x0 = pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    folder.mkdir()
    with open(folder / "topology.pdb", "w") as fh:
        app.PDBFile.writeFile(pdb.topology, x0 * unit.nanometer, fh)
    rng = np.random.default_rng(0)
    with open(folder / "trajectory.dcd", "wb") as fh:
        dcd = app.DCDFile(fh, pdb.topology, 0.001)
        for f in range(n_frames):
            x = x0 + rng.normal(0.0, 0.002, size=x0.shape)
            if f >= break_at:
                x[0] += 0.15  # the first atom (a methyl H) leaves: a broken bond
            dcd.writeModel(x * unit.nanometer)


def test_first_failure_finds_a_broken_bond():
    rng = np.random.default_rng(1)
    x = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    frames = np.stack([x + rng.normal(0, 0.01, x.shape) for _ in range(6)])
    assert first_failure(frames, np.array([8, 1, 1])) is None
    frames[4:, 1] += [1.0, 0.0, 0.0]
    assert first_failure(frames, np.array([8, 1, 1])) == 4


def test_md_run_system_gives_the_frames_before_the_failure(tmp_path):
    _write_run(tmp_path / "run", n_frames=12, break_at=9)
    build = make_system({"kind": "md_run", "paths": ["run"], "window": 4, "charge": 0}, tmp_path, "jobs[0].system")
    frames = [build(i, np.random.default_rng(i)) for i in range(4)]
    assert all(len(s.atoms) == 22 and s.charge == 0 for s in frames)
    assert frames[0].family == "gen_md_run/run"
    d = [np.linalg.norm(s.atoms.positions[0] - s.atoms.positions[1]) for s in frames]
    assert d[-1] > 1.5 * d[0]  # frames 6..9: the last one is the broken one
    assert build(4, np.random.default_rng(0)).atoms.positions.tolist() == frames[0].atoms.positions.tolist()


def test_md_run_without_failure_is_an_error(tmp_path):
    _write_run(tmp_path / "calm", n_frames=5, break_at=99)
    build = make_system({"kind": "md_run", "paths": ["calm"]}, tmp_path, "jobs[0].system")
    with pytest.raises(DataGenError, match="select: all"):
        build(0, np.random.default_rng(0))
    every = make_system({"kind": "md_run", "paths": ["calm"], "select": "all", "every": 2}, tmp_path, "s")
    assert len({tuple(every(i, np.random.default_rng(0)).atoms.positions[0]) for i in range(3)}) == 3
