"""Backend choice: "auto" picks openmm-torch when it works here, else PythonForce, and says so."""

from __future__ import annotations

import logging

import openmm
import pytest
from force_helpers import bare_system, energy_forces, positions_nm

from transip_openmm import TransIPForce, backends


def test_auto_prefers_torch_and_logs(generic32, alanine, caplog):
    ok, reason = backends.torch_backend_available()
    with caplog.at_level(logging.INFO, logger="transip_openmm.backends"):
        force = TransIPForce(generic32, alanine.topology, backend="auto")
    expected = "TorchForce" if ok else "PythonForce"
    assert type(force).__name__ == expected
    assert "TransIP backend: " + ("torch" if ok else "python") in caplog.text


def test_auto_falls_back_to_python(generic32, alanine, caplog, monkeypatch):
    monkeypatch.setattr(backends, "torch_backend_available", lambda: (False, "simulated incompatible torch"))
    with caplog.at_level(logging.INFO, logger="transip_openmm.backends"):
        force = TransIPForce(generic32, alanine.topology, backend="auto")
    assert isinstance(force, openmm.PythonForce)
    assert "simulated incompatible torch" in caplog.text
    with pytest.raises(backends.BackendError, match="backend='torch' is unavailable"):
        TransIPForce(generic32, alanine.topology, backend="torch")


def test_python_force_applies_to_ml_particles_only(generic32, alanine):
    force = TransIPForce(generic32, alanine.topology, atoms=[0, 1, 2, 3, 4], multiplicity=2, backend="python")
    assert list(force.getParticles()) == [0, 1, 2, 3, 4]
    system = bare_system(alanine.topology)
    system.addForce(force)
    _, f = energy_forces(system, positions_nm(alanine))
    assert (f[5:] == 0).all() and (f[:5] != 0).any()


def test_python_graphs_need_cuda(generic32, alanine):
    with pytest.raises(backends.BackendError, match="needs the model on a CUDA device"):
        TransIPForce(generic32, alanine.topology, backend="python", use_cuda_graphs=True, device="cpu")
