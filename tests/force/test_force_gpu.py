"""CUDA: both backends on the CUDA platform, and CUDA-graph capture (skipped without a GPU).

Graph tests move atoms non-rigidly between calls: the models are translation invariant, so a
graph that replayed stale inputs would still match after a rigid shift.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from force_helpers import ELEMENTS, bare_system, energy_forces, export, positions_nm

from transip_openmm import TransIPForce

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def skip_unusable_backend(backend: str) -> None:
    """openmm-torch 1.5 loads with torch 2.9 only: its rows skip elsewhere (e.g. torch 2.11 machines)."""
    from transip_openmm.backends import torch_backend_available

    ok, reason = torch_backend_available() if backend == "torch" else (True, "")
    if not ok:
        pytest.skip(f"openmm-torch unusable here: {reason}")


def jiggled(pos: np.ndarray, k: int, scale: float = 0.002) -> np.ndarray:
    """``pos`` (n, 3) nm with an independent random displacement (~``scale`` nm) per atom, seed ``k``."""
    return pos + scale * np.random.default_rng(k).standard_normal(pos.shape)


def run_steps(system, positions: list, box=None):
    """[(energy kJ/mol, forces kJ/mol/nm)] of ``system`` on CUDA at each of ``positions``: arrays
    (n, 3) nm, or (array, box vectors) pairs that also set the box."""
    import openmm
    import openmm.unit as u

    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CUDA"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    out = []
    for pos in positions:
        if isinstance(pos, tuple):
            pos, new_box = pos
            context.setPeriodicBoxVectors(*new_box)
        context.setPositions(pos)
        state = context.getState(getEnergy=True, getForces=True)
        out.append((state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                    state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)))
    return out


def assert_same_steps(eager, graphs, energy_tol: float = 1e-2):
    for (e1, f1), (e2, f2) in zip(eager, graphs):
        assert e1 == pytest.approx(e2, abs=energy_tol)
        np.testing.assert_allclose(f1, f2, atol=1e-2 * np.abs(f1).max())
    # the inputs really changed the answer from step to step
    assert len({round(e, 3) for e, _ in eager}) == len(eager)


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_cuda_graphs_match_eager(alanine, generic32, backend):
    skip_unusable_backend(backend)
    pos = positions_nm(alanine)
    steps = [jiggled(pos, k) for k in range(15)]  # the first calls warm up and capture, the later ones replay
    results = {}
    for graphs in (False, True):
        system = bare_system(alanine.topology)
        system.addForce(TransIPForce(generic32, alanine.topology, backend=backend, use_cuda_graphs=graphs,
                                     device="cuda"))
        results[graphs] = run_steps(system, steps)
    assert_same_steps(results[False], results[True])


@pytest.fixture(scope="module")
def relative32(tmp_path_factory):
    """A float32 relative-position, local-attention model (periodic-capable) exported with this code."""
    from test_force_periodic import relative_model

    from transip_openmm.artifacts import save_checkpoint

    folder = tmp_path_factory.mktemp("gpu")
    model = relative_model()
    save_checkpoint(folder / "relative.ckpt", {
        "model_config": model.config_dict, "model_state": model.state_dict(), "elements": ELEMENTS,
        "data_hash": "test-hash", "val_metrics": {"energy_mae_mev": 1.0}, "config": {"seed": 0}})
    return export(folder / "relative.ckpt", folder / "relative32.pt", dtype="float32")


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_periodic_local_model_in_a_cuda_graph(relative32, backend):
    """The capture-safe neighbour list in a graph: a water box (neighbour-list path) with non-rigid
    moves; then the box compressed mid-run (denser: the python backend refits its capacity and
    captures again; openmm-torch cannot refit inside its graph, so that part is python only)."""
    skip_unusable_backend(backend)
    import openmm
    import openmm.app as app
    import openmm.unit as u

    from test_force_periodic import BOX_NM

    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField("amber14/tip3p.xml"), boxSize=openmm.Vec3(BOX_NM, BOX_NM, BOX_NM) * u.nanometer)
    topology = modeller.topology
    pos = np.asarray(modeller.getPositions().value_in_unit(u.nanometer))
    box = [openmm.Vec3(BOX_NM, 0, 0), openmm.Vec3(0, BOX_NM, 0), openmm.Vec3(0, 0, BOX_NM)] * u.nanometer
    steps = [jiggled(pos, k) for k in range(8)]
    results = {}
    for graphs in (False, True):
        system = bare_system(topology, box=box)
        system.addForce(TransIPForce(relative32, topology, backend=backend, periodic=True,
                                     use_cuda_graphs=graphs, device="cuda"))
        results[graphs] = run_steps(system, steps, box)
    assert_same_steps(results[False], results[True])
    if backend == "python":  # then 1.6x the density: more neighbours than the fitted capacity
        small = [v * 0.85 for v in box]
        steps = steps[:3] + [(jiggled(pos, k) * 0.85, small) for k in range(3)]
        results = {}
        for graphs in (False, True):
            system = bare_system(topology, box=box)
            system.addForce(TransIPForce(relative32, topology, backend=backend, periodic=True,
                                         use_cuda_graphs=graphs, device="cuda"))
            results[graphs] = run_steps(system, steps, box)
        assert_same_steps(results[False], results[True])


def test_python_backend_on_cuda_matches_reference(alanine, generic32):
    pos = positions_nm(alanine)
    system = bare_system(alanine.topology)
    system.addForce(TransIPForce(generic32, alanine.topology, backend="python", device="cuda"))
    e_cuda, f_cuda = energy_forces(system, pos, "CUDA")
    reference = bare_system(alanine.topology)
    reference.addForce(TransIPForce(generic32, alanine.topology, backend="python", device="cpu"))
    e_ref, f_ref = energy_forces(reference, pos, "Reference")
    assert e_cuda == pytest.approx(e_ref, rel=1e-6)
    np.testing.assert_allclose(f_cuda, f_ref, atol=1e-2 * np.abs(f_ref).max())
