"""Helpers and fixtures of the OpenMM force tests: a small random-weight model, exported files, systems.

Imported by ``conftest.py`` (fixtures) and by the test modules (helpers); a unique module name
keeps it apart from other test folders' conftest modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch

from transip_openmm.artifacts import save_checkpoint
from transip_openmm.model import ModelConfig, TransIPModel

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
#: Elements the test model "knows" (those of the OMol25 sample).
ELEMENTS = [1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53]
PLATFORMS = ["Reference", "CPU", "CUDA"]



def make_model(seed: int = 0) -> TransIPModel:
    """Random-weight d=32, 2-layer model with plausible per-element reference energies (eV)."""
    torch.manual_seed(seed)
    model = TransIPModel(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_rbf=8, rbf_cutoff=6.0))
    refs = {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2042.0, 16: -10830.0}
    for z, e in refs.items():
        model.element_energies[z] = e
    return model.eval()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    model = make_model()
    save_checkpoint(path, {"model_config": model.config_dict, "model_state": model.state_dict(),
                           "elements": ELEMENTS, "data_hash": "test-hash",
                           "val_metrics": {"energy_mae_mev": 1.0}, "config": {"seed": 0}})
    return path


@pytest.fixture(scope="session")
def alanine() -> app.PDBFile:
    return app.PDBFile(str(TEST_DATA / "alanine_dipeptide.pdb"))


def export(checkpoint: Path, out: Path, topology=None, dtype: str = "float32", **spec_args) -> Path:
    """Export ``checkpoint`` to ``out`` (baked with ``topology`` when given)."""
    from transip_openmm.export.exporter import export_checkpoint

    from transip_openmm.system_spec import build_spec

    spec = build_spec(topology, **spec_args) if topology is not None else None
    export_checkpoint(checkpoint, out, spec, dtype)
    return out


@pytest.fixture(scope="session")
def generic64(checkpoint, tmp_path_factory) -> Path:
    return export(checkpoint, tmp_path_factory.mktemp("exp") / "generic64.pt", dtype="float64")


@pytest.fixture(scope="session")
def generic32(checkpoint, tmp_path_factory) -> Path:
    return export(checkpoint, tmp_path_factory.mktemp("exp") / "generic32.pt", dtype="float32")


def platform(name: str) -> openmm.Platform:
    try:
        return openmm.Platform.getPlatformByName(name)
    except Exception:
        pytest.skip(f"OpenMM platform {name} is not available")


def bare_system(topology: app.Topology, box=None) -> openmm.System:
    system = openmm.System()
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    return system


def energy_forces(system: openmm.System, positions, platform_name: str = "Reference",
                  groups=-1, box=None) -> Tuple[float, np.ndarray]:
    """(energy kJ/mol, forces (n, 3) kJ/mol/nm) of ``system`` at ``positions`` (nm)."""
    props = {"Precision": "double"} if platform_name == "CUDA" else {}
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform(platform_name), props)
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    return (state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
            np.asarray(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)))


def python_model_energy_forces(atomic_numbers: List[int], positions_nm: np.ndarray, charge: int = 0,
                               multiplicity: int = 1, dtype=torch.float64) -> Tuple[float, np.ndarray]:
    """Eager model: (energy kJ/mol, forces kJ/mol/nm) via the units module, for comparison."""
    from transip_openmm.model import compute_forces
    from transip_openmm.units import (
        EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM,
        EV_TO_KJ_PER_MOL,
        NM_TO_ANGSTROM,
    )

    model = make_model().to(dtype)
    pos = torch.tensor(np.asarray(positions_nm) * NM_TO_ANGSTROM, dtype=dtype).unsqueeze(0).requires_grad_(True)
    z = torch.tensor([atomic_numbers])
    mask = torch.ones_like(z, dtype=torch.bool)
    energy, _ = model(z, pos, mask, torch.tensor([charge]), torch.tensor([multiplicity]))
    forces = compute_forces(energy, pos)
    return (float(energy.detach()) * EV_TO_KJ_PER_MOL,
            forces[0].detach().numpy() * EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM)


#: Tolerances are this many machine epsilons of the model's dtype times the quantity's scale.
#: Measured on alanine dipeptide (OpenMM Reference and CPU, both backends): a float64 model
#: agrees with the eager float64 model to 1 ulp of the total energy (2e-10 of 1.3e6 kJ/mol) and
#: 7e-16 of max |F|; a float32 model to 2e-7 of the reference-subtracted energy and 6e-7 of
#: max |F| (~2-5 eps32).
EPSILONS = 100


def tolerances(dtype: str, atomic_numbers_: List[int], energy: float, forces: np.ndarray) -> Tuple[float, float]:
    """(energy kJ/mol, force kJ/mol/nm) absolute tolerances for comparing a ``dtype`` model with
    the eager float64 model whose result is ``energy``/``forces``.

    The per-element reference energies (~1e6 kJ/mol) are always summed in float64 (the
    wrapper adds them outside the model), so the energy scale is float64 rounding of the
    total plus ``dtype`` rounding of the model's own (reference-subtracted) energy.
    """
    eps = float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)
    eps64 = float(np.finfo(np.float64).eps)
    model_energy = energy - reference_energy_kj(atomic_numbers_)
    energy_tol = EPSILONS * (eps * abs(model_energy) + eps64 * abs(energy))
    force_tol = EPSILONS * eps * float(np.abs(forces).max())
    return energy_tol, force_tol


def reference_energy_kj(atomic_numbers_: List[int]) -> float:
    """Sum of the test model's per-element reference energies (kJ/mol)."""
    from transip_openmm.units import EV_TO_KJ_PER_MOL

    refs = make_model().element_energies.detach().double()
    return float(refs[torch.tensor(atomic_numbers_)].sum()) * EV_TO_KJ_PER_MOL


def positions_nm(pdb: app.PDBFile) -> np.ndarray:
    return np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(u.nanometer))


def atomic_numbers(topology: app.Topology) -> List[int]:
    return [a.element.atomic_number for a in topology.atoms()]


def omol25_molecule() -> Tuple[app.Topology, np.ndarray, Dict]:
    """A 32-atom SPICE molecule of the OMol25 sample copy in tests/data (skip when absent)."""
    path = TEST_DATA / "omol25_mini.aselmdb"
    if not path.exists():
        pytest.skip(f"{path} not available")
    from transip_openmm.export.topology_io import topology_from_numbers
    from transip_openmm.training.readers import read_dataset

    from transip_openmm.units import ANGSTROM_TO_NM

    # the project's reader: it shares the process's LMDB environments with the other tests
    # (a second lmdb.open of the same file in one process is refused)
    mol = max(read_dataset(path), key=lambda m: m.n_atoms if m.n_atoms <= 40 else 0)
    data = {"charge": mol.charge, "spin": mol.multiplicity}
    return topology_from_numbers(mol.numbers), mol.positions * ANGSTROM_TO_NM, data
