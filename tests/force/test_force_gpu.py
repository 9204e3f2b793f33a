"""CUDA: both backends on the CUDA platform, and CUDA-graph capture (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from force_helpers import bare_system, energy_forces, positions_nm

from transip_openmm import TransIPForce

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_cuda_graphs_match_eager(alanine, generic32, backend):
    import openmm
    import openmm.unit as u

    pos = positions_nm(alanine)
    results = {}
    for graphs in (False, True):
        system = bare_system(alanine.topology)
        system.addForce(TransIPForce(generic32, alanine.topology, backend=backend, use_cuda_graphs=graphs,
                                     device="cuda"))
        context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("CUDA"))
        out = []
        for k in range(15):  # the first calls warm up and capture, the later ones replay
            context.setPositions(pos + 0.001 * (k % 3))
            state = context.getState(getEnergy=True, getForces=True)
            out.append((state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                        state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)))
        results[graphs] = out
    for (e1, f1), (e2, f2) in zip(results[False], results[True]):
        assert e1 == pytest.approx(e2, abs=1e-2)
        np.testing.assert_allclose(f1, f2, atol=1e-2 * np.abs(f1).max())


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
