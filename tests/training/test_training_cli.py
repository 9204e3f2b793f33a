"""The real CLI: a tiny training run whose loss falls, resume equality, evaluation."""

from __future__ import annotations

import csv
import json
from typing import Tuple

import numpy as np
import pytest
import torch
from training_helpers import TEST_DATA, write_tiny_config
from transip_openmm.training.readers import read_dataset

from transip_openmm.artifacts import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    METADATA_ENTRY,
    load_checkpoint,
)
from transip_openmm.cli import main
from transip_openmm.units import ANGSTROM_TO_NM, EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL


def _log(path):
    with open(path / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("symmetry", ["none", "transip"])
def test_tiny_training_run_loss_falls(tmp_path, symmetry):
    cfg = write_tiny_config(tmp_path, symmetry=symmetry, max_steps=60)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(out)]) == 0
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    first = np.mean([float(r["loss_force"]) for r in rows[:3]])
    last = np.mean([float(r["loss_force"]) for r in rows[-3:]])
    assert last < 0.85 * first  # full batch, deterministic: a real, monotone decrease
    for name in ("last.ckpt", "best.ckpt", "config.yaml", "learning_curve.png", "summary.json"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["step"] == 60 and ckpt["elements"] == [1, 6, 8] and ckpt["symmetry"] == symmetry
    for key in ("optimizer_state", "scheduler_state", "rng_state", "config", "data_hash", "val_metrics"):
        assert key in ckpt
    # the fitted references live in the saved model's buffer
    assert ckpt["model_state"]["element_energies"][6].item() != 0.0
    assert main(["train", str(cfg), "--output", str(out)]) == 2  # refuses to overwrite a run
    if symmetry == "transip":
        res = tmp_path / "eval.json"
        assert main(["evaluate", str(out / "last.ckpt"), str(TEST_DATA / "acac_mini.xyz"), "--json", str(res),
                     "--rotation-structures", "2", "--rotations", "2"]) == 0
        latent = json.loads(res.read_text())["latent_equiv_err_rel"]
        assert np.isfinite(latent) and latent > 0.0  # T_ψ is aligned by cosine: no norm bound


def test_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = write_tiny_config(tmp_path, symmetry="transip", max_steps=8)
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", str(cfg), "--output", str(full)]) == 0
    assert main(["train", str(cfg), "--output", str(part), "--stop-after", "4"]) == 0
    assert load_checkpoint(part / "last.ckpt")["step"] == 4
    assert main(["train", str(cfg), "--output", str(part), "--resume"]) == 0
    a, b = _log(full), _log(part)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "loss_energy", "loss_force", "loss_equiv", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-6, abs=1e-12), (ra["step"], key)
    sa = load_checkpoint(full / "last.ckpt")["model_state"]
    sb = load_checkpoint(part / "last.ckpt")["model_state"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-7)


def test_resume_refuses_changed_config(tmp_path, capsys):
    cfg = write_tiny_config(tmp_path, max_steps=2)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(out)]) == 0
    assert main(["train", str(cfg), "--output", str(out), "--resume", "--symmetry", "augment"]) == 2
    assert "config differs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = write_tiny_config(tmp, symmetry="augment", max_steps=5)
    assert main(["train", str(cfg), "--output", str(tmp / "run")]) == 0
    return tmp / "run"


KEYS = ("n_structures", "energy_mae_meV", "energy_mae_meV_per_atom", "force_mae_meV_per_A",
        "force_rmse_meV_per_A", "force_cos_mean", "rot_energy_std_meV", "rot_force_err_rel")


def test_evaluate_checkpoint(trained, tmp_path):
    out = tmp_path / "m.json"
    png = tmp_path / "parity.png"
    assert main(["evaluate", str(trained / "best.ckpt"), str(TEST_DATA / "acac_mini.xyz"), "--json", str(out),
                 "--plot", str(png), "--rotation-structures", "2", "--rotations", "3"]) == 0
    result = json.loads(out.read_text())
    assert all(k in result for k in KEYS)
    assert result["n_structures"] == 8
    assert result["rot_energy_std_meV"] > 0  # not exactly invariant: learned, not built in
    assert png.stat().st_size > 1000


def test_evaluate_on_the_test_part_of_a_config(trained, tmp_path, capsys):
    import yaml
    from transip_openmm.training.config import load_config
    from transip_openmm.training.splits import held_out_test

    config = tmp_path / "split.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(TEST_DATA), "train": ["acac_mini.xyz"],
                                               "val": ["acac_mini.xyz"], "split": "block", "test_fraction": 0.25}}))
    test = held_out_test(load_config(config))
    assert 0 < len(test) < 8
    out = tmp_path / "test.json"
    assert main(["evaluate", str(trained / "best.ckpt"), "--test-of", str(config), "--json", str(out),
                 "--rotation-structures", "0"]) == 0
    result = json.loads(out.read_text())
    assert result["n_structures"] == len(test)
    assert result["test_of"] == str(config) and result["data"] == ["acac_mini.xyz"]  # as the config names them
    capsys.readouterr()
    assert main(["evaluate", str(trained / "best.ckpt"), str(TEST_DATA / "acac_mini.xyz"), "--test-of", str(config),
                 "--json", str(tmp_path / "both.json")]) == 2
    assert "DATA files or --test-of CONFIG" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"data": {"root": str(TEST_DATA), "train": ["acac_mini.xyz"]}}))
    assert main(["evaluate", str(trained / "best.ckpt"), "--test-of", str(config),
                 "--json", str(tmp_path / "n.json")]) == 2
    assert "names no test data" in capsys.readouterr().err
    assert not (tmp_path / "both.json").exists() and not (tmp_path / "n.json").exists()


def test_evaluate_rejects_unknown_elements(trained, tmp_path, capsys):
    assert main(["evaluate", str(trained / "last.ckpt"), str(TEST_DATA / "omol25_mini.aselmdb"),
                 "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("transip evaluate: error: ") and "\n" not in err
    assert "omol25_mini.aselmdb, record 0: element" in err
    assert not (tmp_path / "x.json").exists()


def test_evaluate_exported_file_matches_checkpoint(trained, tmp_path):
    """An exported-style TorchScript file (nm, kJ/mol) gives the checkpoint's metrics."""
    from transip_openmm.artifacts import model_from_checkpoint

    data = load_checkpoint(trained / "last.ckpt")
    model = model_from_checkpoint(data)
    mol = read_dataset(TEST_DATA / "acac_mini.xyz")[0]

    class Baked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("numbers", torch.tensor(mol.numbers).unsqueeze(0))
            self.angstrom_per_nm = 1.0 / ANGSTROM_TO_NM
            self.kj_per_ev = EV_TO_KJ_PER_MOL
            self.force_factor = EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM

        def forward(self, positions_nm: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            pos = (positions_nm * self.angstrom_per_nm).unsqueeze(0).detach().requires_grad_(True)
            mask = torch.ones_like(self.numbers, dtype=torch.bool)
            z = torch.zeros(1, dtype=torch.int64)
            e, _ = self.model(self.numbers, pos, mask, z, z + 1)
            g = torch.autograd.grad([e.sum()], [pos])[0]
            assert g is not None
            return e.sum() * self.kj_per_ev, -g[0] * self.force_factor

    path = tmp_path / "baked.pt"
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "elements": [1, 6, 8],
            "atomic_numbers": [int(z) for z in mol.numbers]}
    torch.jit.save(torch.jit.script(Baked()), str(path), _extra_files={METADATA_ENTRY: json.dumps(meta)})
    res = {}
    for name, model_path in (("exp", path), ("ckpt", trained / "last.ckpt")):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", str(model_path), str(TEST_DATA / "acac_mini.xyz"), "--json", str(out),
                     "--rotation-structures", "0"]) == 0
        res[name] = json.loads(out.read_text())
    for key in ("energy_mae_meV", "force_mae_meV_per_A", "force_cos_mean"):
        assert res["exp"][key] == pytest.approx(res["ckpt"][key], rel=1e-3, abs=0.5)


def test_evaluate_real_export_matches_checkpoint(trained, tmp_path):
    """A generic file from ``transip export`` is specialised per structure by the evaluator."""
    pytest.importorskip("transip_openmm.export.cli")
    exported = tmp_path / "model.pt"
    assert main(["export", str(trained / "last.ckpt"), "--output", str(exported), "--dtype", "float64"]) == 0
    res = {}
    for name, model_path in (("exp", exported), ("ckpt", trained / "last.ckpt")):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", str(model_path), str(TEST_DATA / "acac_mini.xyz"), "--json", str(out),
                     "--rotation-structures", "1", "--rotations", "2"]) == 0
        res[name] = json.loads(out.read_text())
    # float64 export vs float32 checkpoint evaluation of absolute energies near -9400 eV:
    # float32 rounding alone is ~1 meV
    for key in ("energy_mae_meV", "force_mae_meV_per_A", "force_cos_mean", "rot_energy_std_meV"):
        assert res["exp"][key] == pytest.approx(res["ckpt"][key], rel=2e-3, abs=2.0)


def test_fresh_run_drops_the_log_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    cfg = write_tiny_config(tmp_path, max_steps=2)
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("step,epoch,loss\n1,0,9.0\n2,0,8.0\n3,0,7.0\n")  # no last.ckpt: nothing to resume
    assert main(["train", str(cfg), "--output", str(out)]) == 0
    assert [int(r["step"]) for r in _log(out)] == [1, 2]
