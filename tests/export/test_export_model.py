"""Exporter and export CLI: eager == scripted, metadata, units, baking, periodic wrapping."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import TEST_DATA, tiny_model
from transip_openmm.export.exporter import build_wrapper, export_checkpoint
from transip_openmm.export.topology_io import load_structure, topology_from_numbers
from transip_openmm.export.wrapper import OpenMMTransIP

from transip_openmm.artifacts import ArtifactError, read_exported_metadata
from transip_openmm.cli import main
from transip_openmm.model import compute_forces
from transip_openmm.system_spec import build_spec, specialise_module
from transip_openmm.units import EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

ALA = TEST_DATA / "alanine_dipeptide.pdb"


@pytest.fixture(scope="module")
def ala():
    return load_structure(ALA)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_scripted_equals_eager(ala, dtype, tol):
    topology, pos = ala
    spec = build_spec(topology)
    eager = build_wrapper(tiny_model(), spec, dtype)
    scripted = torch.jit.script(build_wrapper(tiny_model(), spec, dtype))
    x = torch.tensor(pos, dtype=getattr(torch, dtype))
    for box in (None, torch.eye(3, dtype=x.dtype) * 1.7):
        e1, f1 = eager(x, box)
        e2, f2 = scripted(x, box)
        for _ in range(2):  # also after the profiling executor has optimised the graph
            e2, f2 = scripted(x, box)
        assert abs(float(e1) - float(e2)) <= tol * abs(float(e1))
        torch.testing.assert_close(f1, f2, atol=tol * float(f1.abs().max()), rtol=0)


def test_wrapper_units_against_model(ala):
    """kJ/mol and kJ/mol/nm from nm in, via the units module, against the model in Å/eV."""
    topology, pos = ala
    spec = build_spec(topology)
    wrapper = build_wrapper(tiny_model(), spec, "float64")
    e, f = wrapper(torch.tensor(pos))
    model = tiny_model().double()
    x = (torch.tensor(pos) * NM_TO_ANGSTROM).unsqueeze(0).requires_grad_(True)
    z = torch.tensor([spec.atomic_numbers])
    energy, _ = model(z, x, torch.ones_like(z, dtype=torch.bool), torch.tensor([0]), torch.tensor([1]))
    forces = compute_forces(energy, x)[0]
    assert float(e) == pytest.approx(float(energy.detach()) * EV_TO_KJ_PER_MOL, abs=1e-8)
    torch.testing.assert_close(f, forces * EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM, atol=1e-8, rtol=0)
    assert EV_TO_KJ_PER_MOL == pytest.approx(96.4853321, abs=1e-6)


def test_charge_and_multiplicity_reach_the_model(ala):
    topology, pos = ala
    x = torch.tensor(pos)
    e0, _ = build_wrapper(tiny_model(), build_spec(topology), "float64")(x)
    e1, _ = build_wrapper(tiny_model(), build_spec(topology, charge=1, multiplicity=2), "float64")(x)
    assert abs(float(e0) - float(e1)) > 1e-6


def test_make_whole_triclinic():
    """Shifting atoms by lattice vectors of a reduced triclinic box leaves the whole molecule."""
    box = torch.tensor([[2.0, 0, 0], [0.6, 1.9, 0], [-0.5, 0.4, 2.1]], dtype=torch.float64)
    x = torch.tensor([[0.3, 0.2, 0.1], [0.4, 0.25, 0.12], [0.2, 0.3, 0.05]], dtype=torch.float64)
    moved = x.clone()
    moved[1] += box[0] - box[2]
    moved[2] += 2 * box[1] + box[2]
    torch.testing.assert_close(OpenMMTransIP.make_whole(moved, box), x)


def test_generic_export_refuses_to_run_until_specialised(ckpt, tmp_path, ala):
    topology, pos = ala
    out = tmp_path / "generic.pt"
    export_checkpoint(ckpt, out)
    module = torch.jit.load(str(out))
    with pytest.raises(Exception, match="generic"):
        module(torch.tensor(pos, dtype=torch.float32))
    specialise_module(module, build_spec(topology))
    e, f = module(torch.tensor(pos, dtype=torch.float32))
    baked = tmp_path / "baked.pt"
    export_checkpoint(ckpt, baked, build_spec(topology))
    e2, f2 = torch.jit.load(str(baked))(torch.tensor(pos, dtype=torch.float32))
    assert float(e) == float(e2)
    torch.testing.assert_close(f, f2)


def test_metadata(ckpt, tmp_path, ala):
    topology, _ = ala
    out = tmp_path / "m.pt"
    export_checkpoint(ckpt, out, build_spec(topology, atoms="resname ALA"), dtype="float64")
    meta = read_exported_metadata(out)
    assert meta["format"] == "transip-exported-model" and meta["format_version"] == 1
    assert meta["elements"] == [1, 6, 7, 8]
    assert meta["baked"] and meta["system"]["n_particles"] == 22
    assert meta["system"]["ml_indices"] == [a.index for a in topology.atoms() if a.residue.name == "ALA"]
    assert meta["units"]["training"] == {"energy": "eV", "length": "angstrom", "forces": "eV/angstrom"}
    assert meta["units"]["interface"]["forces"] == "kJ/mol/nm"
    assert meta["data_hash"] == "abc123"
    assert meta["validation_metrics"]["energy_mae_mev"] == 12.5
    assert meta["train_config"]["objective"]["symmetry"] == "transip"
    assert meta["model_config"]["d_model"] == 32
    assert meta["dtype"] == "float64" and meta["code_version"]


def test_export_refuses_unknown_elements(ckpt, tmp_path):
    spec = build_spec(topology_from_numbers([6, 17, 1, 1, 1]))
    with pytest.raises(ArtifactError, match=r"Cl \(Z=17\)"):
        export_checkpoint(ckpt, tmp_path / "x.pt", spec)


def test_export_refuses_non_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(ArtifactError, match="not a transip checkpoint"):
        export_checkpoint(bad, tmp_path / "x.pt")


def test_cli_baked(ckpt, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    rc = main(["export", str(ckpt), "-o", str(out), "--topology", str(ALA), "--atoms", "resname ALA",
               "--charge", "0", "--multiplicity", "1", "--dtype", "float64"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["baked"] and summary["n_ml_atoms"] == 10 and summary["n_particles"] == 22
    assert read_exported_metadata(out)["dtype"] == "float64"


def test_cli_xyz_topology(ckpt, tmp_path):
    xyz = tmp_path / "water.xyz"
    xyz.write_text("3\nwater\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n")
    out = tmp_path / "w.pt"
    assert main(["export", str(ckpt), "-o", str(out), "--topology", str(xyz)]) == 0
    assert read_exported_metadata(out)["system"]["atomic_numbers"] == [8, 1, 1]


def test_cli_rejects_impossible_multiplicity(ckpt, tmp_path, capsys):
    rc = main(["export", str(ckpt), "-o", str(tmp_path / "x.pt"), "--topology", str(ALA), "--multiplicity", "2"])
    assert rc == 2 and "impossible with 78 electrons" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_atoms_without_topology_is_refused(ckpt, tmp_path, capsys):
    assert main(["export", str(ckpt), "-o", str(tmp_path / "x.pt"), "--atoms", "resname ALA"]) == 2
    assert "baked only with --topology" in capsys.readouterr().err


def test_cli_debug_shows_the_traceback(ckpt, tmp_path):
    from transip_openmm.errors import UsageError

    with pytest.raises(UsageError, match="baked only with --topology"):
        main(["--debug", "export", str(ckpt), "-o", str(tmp_path / "x.pt"), "--atoms", "resname ALA"])


def test_cli_frame_average_is_invariant_to_cube_rotations(ckpt, tmp_path):
    """--frame-average: energy identical under a 90° rotation, forces rotate with it."""
    out = tmp_path / "fa.pt"
    assert main(["export", str(ckpt), "-o", str(out), "--topology",
                 str(TEST_DATA / "alanine_dipeptide.pdb"), "--dtype", "float64", "--frame-average"]) == 0
    assert read_exported_metadata(out)["frame_averaging"] == "octahedral group, 24 rotations"
    module = torch.jit.load(str(out))
    topology, positions = load_structure(TEST_DATA / "alanine_dipeptide.pdb")
    x = torch.tensor(positions, dtype=torch.float64)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    e0, f0 = module(x)
    e1, f1 = module(x @ rot.T)
    assert torch.equal(e0, e1)
    torch.testing.assert_close(f1, f0 @ rot.T, atol=1e-9, rtol=1e-9)
    # and the plain export is not invariant: the test can fail
    plain = tmp_path / "plain.pt"
    main(["export", str(ckpt), "-o", str(plain), "--topology", str(TEST_DATA / "alanine_dipeptide.pdb"),
          "--dtype", "float64"])
    p = torch.jit.load(str(plain))
    assert not torch.equal(p(x)[0], p(x @ rot.T)[0])
