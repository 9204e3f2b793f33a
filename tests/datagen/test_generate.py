"""The generator end to end: determinism, workers, resume after a kill, failures, output layout."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from datagen_helpers import REPO, assert_same_records, read_folder, tiny_config

from transip_openmm.data.config import config_from_dict
from transip_openmm.data.errors import DataGenError
from transip_openmm.data.generate import generate


def test_same_seed_same_records_with_one_or_two_workers(reference_run, tmp_path):
    generate(tiny_config(), tmp_path, workers=2, progress=False)
    assert_same_records(read_folder(reference_run), read_folder(tmp_path))


def test_another_seed_other_records(reference_run, tmp_path):
    generate(tiny_config(seed=4), tmp_path, workers=1, max_structures=4, progress=False)
    first = read_folder(tmp_path)[0]
    ref = read_folder(reference_run)[0]
    same_shape = first["positions"].shape == ref["positions"].shape
    assert not same_shape or not np.array_equal(first["positions"], ref["positions"])


def test_records_carry_labels_and_metadata(reference_run):
    records = read_folder(reference_run)
    manifest = json.loads((reference_run / "manifest.json").read_text())
    shards = manifest["shards"].values()
    assert len(records) == sum(s["records"] for s in shards)
    assert len(records) + sum(s["dropped"] for s in shards) == 20  # an SCF at a stretched bond may fail
    assert len(records) >= 17
    samplings = {r["data"]["sampling"].split("_")[0] for r in records}
    assert samplings == {"md", "random", "bond", "close"}
    for r in records:
        d = r["data"]
        assert d["level_of_theory"] == "GFN2-xTB" and d["teacher"] == "GFN2-xTB"
        assert (int(r["numbers"].sum()) - d["charge"]) % 2 == (d["spin"] - 1) % 2
        assert np.isfinite(r["energy"]) and np.all(np.isfinite(r["forces"]))
        assert r["forces"].shape == r["positions"].shape == (d["num_atoms"], 3)
    assert {r["data"]["charge"] for r in records} == {-1, 0, 1}  # Asp⁻, Gly / Li⁺BF₄⁻, Lys⁺ / Li⁺(EC)


def test_shards_read_back_through_the_training_reader(reference_run, tmp_path):
    import shutil

    from transip_openmm.training.readers import read_aselmdb

    records = read_folder(reference_run)
    shard = sorted(reference_run.glob("shard_*.aselmdb"))[0]
    dataset = read_aselmdb(shutil.copy(shard, tmp_path))  # a copy: the reader keeps its LMDB environment open
    assert len(dataset) == sum(1 for r in records if r["data"]["task"] <= json.loads(
        (reference_run / "manifest.json").read_text())["shards"][shard.name]["last"])
    for mol, rec in zip(dataset, records):
        assert mol.family == rec["data"]["family"]
        assert mol.charge == rec["data"]["charge"] and mol.multiplicity == rec["data"]["spin"]
        np.testing.assert_allclose(mol.forces, rec["forces"])
        assert mol.energy == pytest.approx(rec["energy"])


def test_interrupted_then_resumed_equals_uninterrupted(reference_run, tmp_path):
    generate(tiny_config(), tmp_path, workers=1, stop_after_shards=1, progress=False)
    (tmp_path / "shard_00002.aselmdb.partial").write_bytes(b"half a shard from a killed run")
    with pytest.raises(DataGenError, match="--resume"):
        generate(tiny_config(), tmp_path, workers=1, progress=False)
    generate(tiny_config(), tmp_path, workers=2, resume=True, progress=False)
    assert not list(tmp_path.glob("*.partial"))
    assert_same_records(read_folder(reference_run), read_folder(tmp_path))


def test_max_structures_then_resume_completes_the_run(reference_run, tmp_path):
    generate(tiny_config(), tmp_path, workers=1, max_structures=9, progress=False)
    assert 9 <= len(read_folder(tmp_path)) < 20
    generate(tiny_config(), tmp_path, workers=1, resume=True, progress=False)
    assert_same_records(read_folder(reference_run), read_folder(tmp_path))


def test_resume_with_another_config_is_refused(tmp_path):
    generate(tiny_config(), tmp_path, workers=1, max_structures=2, progress=False)
    with pytest.raises(DataGenError, match="another config"):
        generate(tiny_config(seed=9), tmp_path, workers=1, resume=True, progress=False)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(reference_run, tmp_path):
    config = tiny_config().to_dict()  # reads no files: the same identity wherever the YAML lies
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "transip_openmm.cli", "data", "generate", str(path), "--output", str(out),
               "--no-progress"]
    proc = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "manifest.json").is_file() and json.loads((out / "manifest.json").read_text())["shards"]:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker
    proc.wait()
    done = json.loads((out / "manifest.json").read_text())["shards"]
    assert 1 <= len(done) < 4
    subprocess.run(command + ["--resume"], check=True, stderr=subprocess.DEVNULL)
    assert_same_records(read_folder(reference_run), read_folder(out))


def test_scf_failures_drop_records_and_are_counted(tmp_path):
    """wB97M-V with max_cycle=1 never converges: every frame is dropped and counted, nothing crashes."""
    config = config_from_dict({
        "labeller": {"method": "wB97M-V", "basis": "def2-SVP", "max_cycle": 1},
        "jobs": [{"name": "water", "system": {"kind": "water_cluster", "n_molecules": [1, 1]},
                  "sampler": {"kind": "displacements", "sigmas": [0.02]}, "structures": 2, "frames_per_task": 2}],
    })
    summary = generate(config, tmp_path, workers=1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert summary.structures == 0 and summary.dropped == 2 and summary.label_failures == 2
    assert manifest["shards"]["shard_00000.aselmdb"]["label_failures"] == 2
    assert read_folder(tmp_path) == []


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(DataGenError, match="unknown keys.*sampling"):
        config_from_dict({"jobs": [{"system": {"kind": "water_cluster"}, "sampler": {"kind": "md"},
                                    "structures": 1, "sampling": 2}]})
    with pytest.raises(DataGenError, match="jobs"):
        config_from_dict({"seed": 1})
    bad = config_from_dict({"jobs": [{"system": {"kind": "water_cluster"}, "sampler": {"kind": "wiggle"},
                                      "structures": 1}]})
    from transip_openmm.data.worker import TaskRunner

    with pytest.raises(DataGenError, match="sampler.kind 'wiggle'"):
        TaskRunner(bad)


def test_cli_generates_and_reports(tmp_path):
    from transip_openmm.cli import main

    config = tmp_path / "peptides.yaml"
    config.write_text(yaml.safe_dump({"jobs": [{
        "name": "ala", "system": {"kind": "capped_amino_acid", "residues": ["ALA"]},
        "sampler": {"kind": "displacements", "sigmas": [0.05]}, "structures": 6, "frames_per_task": 3}]}))
    assert main(["data", "generate", str(config), "--output", str(tmp_path / "w"), "--max-structures", "3",
                 "--no-progress"]) == 0
    records = read_folder(tmp_path / "w")
    assert len(records) == 3 and all(r["data"]["family"] == "gen_peptide/ACE-ALA-NME" for r in records)
    assert main(["data", "generate", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("name", ["water", "biomolecular", "electrolytes", "dft_small", "default_corpus"])
def test_shipped_configs_are_valid(name):
    from transip_openmm.data.config import load_config
    from transip_openmm.data.plan import make_plan
    from transip_openmm.data.worker import TaskRunner

    config = load_config(REPO / "data" / "configs" / f"{name}.yaml")
    if name == "default_corpus" and not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the default corpus seeds from the reference data beside the repository")
    TaskRunner(config)  # every system, sampler and labeller builds
    total = sum(t.n_frames for t in make_plan(config))
    assert total == sum(job.structures for job in config.jobs)
    if name == "default_corpus":
        assert total == 50_000
