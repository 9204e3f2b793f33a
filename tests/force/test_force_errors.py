"""Bad input gets a clear error: files, elements, atoms, charge/multiplicity, NaN positions."""

from __future__ import annotations

import json

import numpy as np
import openmm
import pytest
import torch
from force_helpers import bare_system, export, positions_nm
from transip_openmm.export.topology_io import topology_from_numbers

from transip_openmm import TransIPForce
from transip_openmm.artifacts import METADATA_ENTRY, ArtifactError
from transip_openmm.system_spec import SystemSpecError, check_charge_multiplicity


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        TransIPForce(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a zip archive")
    with pytest.raises(ArtifactError, match="not a readable TorchScript file"):
        TransIPForce(bad)


def test_truncated_file(tmp_path, generic32):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(generic32.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a readable TorchScript file"):
        TransIPForce(bad)


def _rewrite_metadata(src, dst, **changes):
    extra = {METADATA_ENTRY: ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra[METADATA_ENTRY])
    meta.update(changes)
    torch.jit.save(module, str(dst), _extra_files={METADATA_ENTRY: json.dumps(meta)})
    return dst


def test_wrong_format_version(tmp_path, generic32, alanine):
    path = _rewrite_metadata(generic32, tmp_path / "v99.pt", format_version=99)
    with pytest.raises(ArtifactError, match="format version 99; this code reads version 1"):
        TransIPForce(path, alanine.topology)


def test_not_a_transip_model(tmp_path, alanine):
    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(path))
    with pytest.raises(ArtifactError, match="not a transip exported model"):
        TransIPForce(path, alanine.topology)


def test_unknown_element(generic32):
    topology = topology_from_numbers([6, 1, 1, 1, 54])  # Xe: not among the model's elements
    with pytest.raises(ArtifactError, match=r"does not support element\(s\) Xe \(Z=54\)"):
        TransIPForce(generic32, topology)


def test_generic_file_needs_topology(generic32):
    with pytest.raises(SystemSpecError, match="generic export"):
        TransIPForce(generic32)


def test_default_model_missing_is_clear():
    from transip_openmm import default_model_path

    try:
        default_model_path()
        pytest.skip("a default model is shipped")
    except FileNotFoundError:
        pass
    with pytest.raises(ArtifactError, match="'default' asks for the demo model"):
        TransIPForce("default")


def test_atom_count_mismatch(checkpoint, tmp_path, alanine):
    baked = export(checkpoint, tmp_path / "baked.pt", alanine.topology)
    water = topology_from_numbers([8, 1, 1])
    with pytest.raises(SystemSpecError, match="system of 22 particles but the topology has 3"):
        TransIPForce(baked, water)


def test_baked_charge_conflict(checkpoint, tmp_path, alanine):
    baked = export(checkpoint, tmp_path / "baked.pt", alanine.topology)
    with pytest.raises(SystemSpecError, match="exported with charge 0, not 1"):
        TransIPForce(baked, charge=1)


def test_baked_runs_only_on_its_particle_count(checkpoint, tmp_path, alanine):
    """A baked file added to a System of another size fails at run time with a clear message."""
    baked = export(checkpoint, tmp_path / "baked.pt", alanine.topology)
    system = openmm.System()
    for _ in range(23):
        system.addParticle(1.0)
    system.addForce(TransIPForce(baked, backend="torch"))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.zeros((23, 3)) + np.arange(23)[:, None] * 0.2)
    with pytest.raises(Exception, match=r"expected positions of shape \(22, 3\)"):
        context.getState(getEnergy=True)


@pytest.mark.parametrize("atoms, message", [
    ("resname XYZ", "matches no atom"),
    ("resname and and", "invalid atom selection"),
    ([0, 1, 99], r"out of range for a system of 22 particles"),
    ([0, 1, 1], "duplicate"),
    ([], "empty"),
])
def test_bad_atom_selection(generic32, alanine, atoms, message):
    with pytest.raises(SystemSpecError, match=message):
        TransIPForce(generic32, alanine.topology, atoms=atoms)


def test_selection_string_needs_topology():
    from transip_openmm.system_spec import resolve_atoms

    with pytest.raises(SystemSpecError, match="needs a topology"):
        resolve_atoms("resname ALA", 22, None)


@pytest.mark.parametrize("numbers, charge, multiplicity, message", [
    ([8, 1, 1], 0, 2, r"impossible with 10 electrons"),          # water, doublet
    ([8, 1], 0, 1, r"impossible with 9 electrons"),              # OH radical, singlet
    ([1, 1], 0, 5, r"needs 4 unpaired electrons but the ML region has only 2"),
    ([1], 2, 1, r"leaves -1 electrons"),
    ([6, 1, 1, 1, 1], 11, 1, r"outside the range"),
    ([6, 1, 1, 1, 1], 0, 0, r"outside 1\.\.11"),
])
def test_impossible_charge_multiplicity(numbers, charge, multiplicity, message):
    with pytest.raises(SystemSpecError, match=message):
        check_charge_multiplicity(numbers, charge, multiplicity)


def test_possible_charge_multiplicity_pass():
    check_charge_multiplicity([8, 1, 1], 0, 1)
    check_charge_multiplicity([8, 1], 0, 2)      # OH radical
    check_charge_multiplicity([8, 1], -1, 1)     # hydroxide
    check_charge_multiplicity([8, 8], 0, 3)      # triplet O2


def test_impossible_charge_through_force(generic32, alanine):
    with pytest.raises(SystemSpecError, match="impossible with 77 electrons"):
        TransIPForce(generic32, alanine.topology, charge=1, multiplicity=1)


@pytest.mark.parametrize("backend", ["torch", "python"])
def test_nan_positions_raise(generic32, alanine, backend):
    system = bare_system(alanine.topology)
    system.addForce(TransIPForce(generic32, alanine.topology, backend=backend))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    pos = positions_nm(alanine)
    pos[3, 1] = np.nan
    context.setPositions(pos)
    with pytest.raises(Exception, match="positions contain NaN or infinity"):
        context.getState(getEnergy=True, getForces=True)


def test_unknown_backend(generic32, alanine):
    with pytest.raises(ValueError, match="backend must be one of"):
        TransIPForce(generic32, alanine.topology, backend="jax")
