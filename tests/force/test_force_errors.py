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
    with pytest.raises(ArtifactError, match="is a text file, not a file written by PyTorch"):
        TransIPForce(bad)


def test_truncated_file(tmp_path, generic32):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(generic32.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="is truncated or corrupt .*write or copy it again"):
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


def test_shipped_model_missing_from_the_installation_is_clear(monkeypatch):
    import transip_openmm

    def missing(name="default"):
        raise FileNotFoundError(f"the shipped model {name!r} is missing from the installation")

    monkeypatch.setattr(transip_openmm, "shipped_model_path", missing)
    with pytest.raises(ArtifactError, match="'default' asks for a model shipped with transip-openmm, but this "
                                            "installation has none"):
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


def _water_box(n_side: int = 3, spacing_nm: float = 0.31):
    """(topology with bonds and box, positions (n, 3) nm) of n_side³ waters on a cubic lattice."""
    import openmm.app as app
    import openmm.unit as u

    top = app.Topology()
    chain = top.addChain()
    positions = []
    for i in range(n_side ** 3):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", app.element.oxygen, res)
        for name in ("H1", "H2"):
            top.addBond(o, top.addAtom(name, app.element.hydrogen, res))
        centre = spacing_nm * (np.array([i % n_side, (i // n_side) % n_side, i // n_side ** 2]) + 0.5)
        positions += [centre, centre + [0.0957, 0, 0], centre + [-0.024, 0.0927, 0]]
    top.setPeriodicBoxVectors(np.eye(3) * n_side * spacing_nm * u.nanometer)
    return top, np.array(positions)


def test_absolute_position_model_refuses_a_periodic_all_ml_box(generic32, tmp_path):
    """A cluster model in a bulk box would make the box whole around atom 0: refused, naming the fix."""
    top, _ = _water_box()
    with pytest.raises(SystemSpecError, match=r"every one of the 81 atoms .* shipped 'local'") as info:
        TransIPForce(generic32, top)
    assert "\n" not in str(info.value)
    TransIPForce(generic32, top, periodic=False)  # the same waters as an isolated cluster: allowed


def test_ml_region_wider_than_half_the_box_is_refused(generic32):
    """ML/MM in a box: a cluster model needs the made-whole ML region (here a layer of 9 waters,
    0.74 nm across) to span at most half the smallest box width: a 0.93 nm box is too small,
    a 3 nm box is not."""
    top, pos = _water_box(n_side=3)
    layer = list(range(27))  # the 9 waters of the first z layer
    with pytest.raises(SystemSpecError, match=r"spans 0\.74 nm across the box, more than half the smallest box "
                                              r"width \(0\.46 nm\)"):
        TransIPForce(generic32, top, atoms=layer, positions=pos)
    top.setPeriodicBoxVectors(np.eye(3) * 3.0 * openmm.unit.nanometer)
    TransIPForce(generic32, top, atoms=layer, positions=pos)  # 0.74 nm < 1.5 nm: fine


def test_relative_position_local_model_accepts_a_periodic_all_ml_box():
    from transip_openmm import shipped_model_path

    try:
        shipped_model_path("local")
    except FileNotFoundError:
        pytest.skip("the shipped local model is not installed")
    top, pos = _water_box(n_side=4)  # 1.24 nm box: at least twice the 5 Å cutoff
    TransIPForce("local", top, positions=pos)
