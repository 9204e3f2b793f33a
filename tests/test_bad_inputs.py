"""Bad inputs, one table: every row is an ordinary user mistake.

Each row asserts that the mistake is refused with the project's error family
(:class:`~transip_openmm.errors.TransIPError`): ``transip`` exits with status 2 and prints ONE
line, ``transip <command>: error: <message>``, that names the problem; the Python API raises
the named subclass with a one-line message. And nothing is damaged: every file under the
test's folder keeps its bytes and modification time, and no output file or folder is left.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Type, Union

import pytest
import torch
import yaml

from transip_openmm.artifacts import ArtifactError, load_checkpoint, save_checkpoint
from transip_openmm.cli import main
from transip_openmm.errors import TransIPError
from transip_openmm.model import ModelConfig, TransIPModel

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
ALA = TEST_DATA / "alanine_dipeptide.pdb"
ACAC = TEST_DATA / "acac_mini.xyz"
NOBLE = TEST_DATA / "omol25_noble_gas_compounds.xyz"  # elements beyond H C N O
STARTER = REPO / "training" / "configs" / "omol25_starter.yaml"
WATER_XYZ = "3\nwater\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n"
TINY_MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "n_rbf": 8, "rbf_cutoff": 6.0}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Dict[str, Path]:
    """A tiny random-weight checkpoint (H C N O) and its generic export, made once."""
    from transip_openmm.export.exporter import export_checkpoint

    folder = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    model = TransIPModel(ModelConfig(**TINY_MODEL))
    ckpt = folder / "tiny.ckpt"
    save_checkpoint(ckpt, {"model_config": model.config_dict, "model_state": model.state_dict(),
                           "elements": [1, 6, 7, 8], "step": 1})
    exported = folder / "tiny.pt"
    export_checkpoint(ckpt, exported)
    return {"ckpt": ckpt, "pt": exported}


@dataclass
class Case:
    """A CLI call (``argv``) or an API call (``call``, raising ``error``), and the key word
    (``match``, case-insensitive) the one-line message must contain."""

    argv: Optional[List[str]] = None
    call: Optional[Callable[[], object]] = None
    error: Type[TransIPError] = TransIPError
    match: str = ""


Builder = Callable[[Path, Dict[str, Path]], Case]


def _copy(src: Path, tmp: Path, name: Optional[str] = None) -> Path:
    dst = tmp / (name or src.name)
    shutil.copy2(src, dst)
    return dst


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _tiny_config(tmp: Path, **changes) -> Path:
    """A valid acac training config; ``changes`` maps 'section.key' to a new value."""
    cfg = {"seed": 0, "data": {"root": str(TEST_DATA), "train": [ACAC.name], "val": [ACAC.name]},
           "model": dict(TINY_MODEL), "optim": {"max_steps": 2, "warmup_steps": 1},
           "run": {"val_every": 1000, "checkpoint_every": 1000, "progress": False}}
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    return _write(tmp, "cfg.yaml", yaml.safe_dump(cfg))


def _truncated(src: Path, tmp: Path, name: str) -> Path:
    data = src.read_bytes()
    path = tmp / name
    path.write_bytes(data[: len(data) // 2])
    return path


def _topology(path: Path):
    from transip_openmm.export.topology_io import load_structure

    return load_structure(path)[0]


def _force(model: Path, topology_file: Path, **kwargs) -> Callable[[], object]:
    from transip_openmm import TransIPForce

    return lambda: TransIPForce(str(model), _topology(topology_file), **kwargs)


CASES: Dict[str, Builder] = {
    # ---- transip train
    "train: config file missing": lambda t, a: Case(
        ["train", str(t / "nope.yaml"), "-o", str(t / "run")], match="does not exist"),
    "train: config is not valid YAML": lambda t, a: Case(
        ["train", str(_write(t, "bad.yaml", "data: {train: [a.xyz]\nmodel: [")), "-o", str(t / "run")],
        match="not valid YAML"),
    "train: config is a list, not sections": lambda t, a: Case(
        ["train", str(_write(t, "list.yaml", "- data\n- model\n")), "-o", str(t / "run")], match="mapping"),
    "train: typo in a config key": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"optim.max_step": 5})), "-o", str(t / "run")],
        match="did you mean 'max_steps'"),
    "train: wrong type of a config value": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"optim.lr": "fast"})), "-o", str(t / "run")], match="optim.lr"),
    "train: negative learning rate": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"optim.lr": -1e-3})), "-o", str(t / "run")], match="optim.lr"),
    "train: d_model not a multiple of n_heads": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"model.n_heads": 3})), "-o", str(t / "run")], match="n_heads"),
    "train: unknown symmetry mode": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"objective.symmetry": "rotate"})), "-o", str(t / "run")],
        match="symmetry"),
    "train: data file missing": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"data.train": ["missing.xyz"]})), "-o", str(t / "run")],
        match="missing.xyz"),
    "train: empty data file": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"data.root": str(t), "data.train": [_write(t, "empty.xyz", "").name],
                                         "data.val": ["empty.xyz"]})), "-o", str(t / "run")],
        match="no structures"),
    "train: element outside data.elements": lambda t, a: Case(
        ["train", str(_tiny_config(t, **{"data.elements": [1, 6]})), "-o", str(t / "run")],
        match="O (Z=8)"),
    "train: --resume with no run to resume": lambda t, a: Case(
        ["train", str(_tiny_config(t)), "-o", str(t / "run"), "--resume"], match="nothing to resume"),
    "train: --stop-after 0": lambda t, a: Case(
        ["train", str(_tiny_config(t)), "-o", str(t / "run"), "--stop-after", "0"], match="--stop-after"),
    # ---- transip evaluate
    "evaluate: text file named .pt": lambda t, a: Case(
        ["evaluate", str(_write(t, "notes.pt", "my best model\n")), str(ACAC), "--json", str(t / "m.json")],
        match="text file"),
    "evaluate: truncated checkpoint": lambda t, a: Case(
        ["evaluate", str(_truncated(a["ckpt"], t, "cut.ckpt")), str(ACAC), "--json", str(t / "m.json")],
        match="truncated"),
    "evaluate: --json names a folder": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)), str(ACAC), "--json", str(t)], match="is a folder"),
    "evaluate: glob matching no file": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)), str(t / "*.aselmdb"), "--json", str(t / "m.json")],
        match="no data file matches"),
    "evaluate: unknown data format": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)), str(_write(t, "data.csv", "x,y\n")), "--json", str(t / "m.json")],
        match="unknown data format"),
    "evaluate: malformed xyz file": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)), str(_write(t, "junk.xyz", "three\nnot xyz at all\n")),
         "--json", str(t / "m.json")], match="cannot read data file"),
    "evaluate: NaN position in the data": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)),
         str(_write(t, "nan.xyz", "2\nenergy=-1.0 Properties=species:S:1:pos:R:3:forces:R:3\n"
                                  "H 0 0 0 0 0 0\nH nan 0 0.7 0 0 0\n")),
         "--json", str(t / "m.json")], match="NaN"),
    "evaluate: multiplicity 2 on closed-shell water in the data": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)),
         str(_write(t, "w.xyz", "3\nenergy=-1.0 multiplicity=2 Properties=species:S:1:pos:R:3:forces:R:3\n"
                                "O 0 0 0 0 0 0\nH 0.96 0 0 0 0 0\nH -0.24 0.93 0 0 0 0\n")),
         "--json", str(t / "m.json")], match="multiplicity 2 is impossible with 10 electrons"),
    "evaluate: data element unknown to the model": lambda t, a: Case(
        ["evaluate", str(_copy(a["ckpt"], t)), str(NOBLE), "--json", str(t / "m.json")], match="element"),
    # ---- transip export
    "export: exported model given as the checkpoint": lambda t, a: Case(
        ["export", str(_copy(a["pt"], t)), "-o", str(t / "out.pt")], match="not a training checkpoint"),
    "export: --topology file missing": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--topology", str(t / "peptide.pdb")],
        match="peptide.pdb does not exist"),
    "export: element the model does not support": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--topology",
         str(_write(t, "h2s.xyz", "3\nh2s\nS 0 0 0\nH 1.3 0 0\nH 0 1.3 0\n"))], match="S (Z=16)"),
    "export: NaN coordinate in the structure": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--topology",
         str(_write(t, "w.xyz", WATER_XYZ.replace("0.96", "nan")))], match="NaN"),
    "export: multiplicity 2 on a closed-shell molecule": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--topology", str(ALA),
         "--multiplicity", "2"], match="impossible with 78 electrons"),
    "export: charge out of range": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--topology", str(ALA),
         "--charge", "99"], match="charge 99"),
    "export: bad mdtraj selection": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--topology", str(ALA),
         "--atoms", "resname ALA and"], match="selection"),
    "export: --atoms without --topology": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "out.pt"), "--atoms", "resname ALA"],
        match="--topology"),
    "export: output is the checkpoint itself": lambda t, a: Case(
        ["export", str(_copy(a["ckpt"], t)), "-o", str(t / "tiny.ckpt")], match="checkpoint itself"),
    # ---- transip simulate / analyze / demo
    "simulate: protocol file missing": lambda t, a: Case(
        ["simulate", str(t / "nope.yaml"), "-o", str(t / "run")], match="does not exist"),
    "simulate: protocol is not valid YAML": lambda t, a: Case(
        ["simulate", str(_write(t, "p.yaml", "name: x\nsystem: {structure: a.pdb\n")), "-o", str(t / "run")],
        match="YAML"),
    "simulate: NaN coordinate in the structure": lambda t, a: Case(
        ["simulate", str(_protocol_with_nan_structure(t)), "-o", str(t / "run")], match="NaN"),
    "analyze: folder that is not a run": lambda t, a: Case(["analyze", str(t)], match="not a simulation run"),
    "demo: --model file missing": lambda t, a: Case(
        ["demo", "--model", str(t / "nope.pt"), "-o", str(t / "run")], match="does not exist"),
    "demo: --model is a training checkpoint": lambda t, a: Case(
        ["demo", "--model", str(_copy(a["ckpt"], t)), "-o", str(t / "run")], match="training checkpoint"),
    # ---- Python API
    "API TransIPForce: checkpoint instead of exported model": lambda t, a: Case(
        call=_force(_copy(a["ckpt"], t), ALA), error=ArtifactError, match="export it first"),
    "API TransIPForce: text file named .pt": lambda t, a: Case(
        call=_force(_write(t, "m.pt", "weights\n"), ALA), error=ArtifactError, match="text file"),
    "API TransIPForce: multiplicity 2 on a closed-shell molecule": lambda t, a: Case(
        call=_force(_copy(a["pt"], t), ALA, multiplicity=2), error=TransIPError, match="impossible"),
    "API TransIPForce: unsupported element": lambda t, a: Case(
        call=_force(_copy(a["pt"], t), _write(t, "h2s.xyz", "3\nh2s\nS 0 0 0\nH 1.3 0 0\nH 0 1.3 0\n")),
        error=ArtifactError, match="S (Z=16)"),
    "API load_checkpoint: truncated file": lambda t, a: Case(
        call=_calling(load_checkpoint, _truncated(a["ckpt"], t, "cut.ckpt")), error=ArtifactError,
        match="truncated"),
    "API load_checkpoint: exported model": lambda t, a: Case(
        call=_calling(load_checkpoint, _copy(a["pt"], t)), error=ArtifactError, match="exported model"),
    "API read_dataset: missing file": lambda t, a: Case(
        call=lambda: _read_dataset(t / "nope.aselmdb"), error=TransIPError, match="does not exist"),
    "API load_protocol: unknown key": lambda t, a: Case(
        call=_calling(_load_protocol, _protocol_with_typo(t)), error=TransIPError, match="integrater"),
}


def _calling(function: Callable[[Path], object], path: Path) -> Callable[[], object]:
    """``function(path)`` for later, with ``path`` made now (before the snapshot)."""
    return lambda: function(path)


def _protocol_with_typo(tmp: Path) -> Path:
    """The shipped vacuum protocol with ``integrator`` misspelt."""
    data = yaml.safe_load((REPO / "simulations" / "protocols" / "alanine-dipeptide-vacuum.yaml").read_text())
    data["system"]["structure"] = str(REPO / "simulations" / "inputs" / "alanine-dipeptide.pdb")
    data["integrater"] = data.pop("integrator")
    return _write(tmp, "protocol.yaml", yaml.safe_dump(data))


def _protocol_with_nan_structure(tmp: Path) -> Path:
    """The shipped vacuum protocol on a copy of its PDB whose first atom has x = nan."""
    pdb = (REPO / "simulations" / "inputs" / "alanine-dipeptide.pdb").read_text().splitlines()
    first = next(i for i, line in enumerate(pdb) if line.startswith(("ATOM", "HETATM")))
    pdb[first] = pdb[first][:30] + "     nan" + pdb[first][38:]
    data = yaml.safe_load((REPO / "simulations" / "protocols" / "alanine-dipeptide-vacuum.yaml").read_text())
    data["system"]["structure"] = str(_write(tmp, "nan.pdb", "\n".join(pdb) + "\n"))
    return _write(tmp, "protocol.yaml", yaml.safe_dump(data))


def _read_dataset(path: Path):
    from transip_openmm.training.readers import read_dataset

    return read_dataset(path)


def _load_protocol(path: Path):
    from transip_openmm.simulations.protocol import load_protocol

    return load_protocol(path)


def _snapshot(folder: Path) -> Dict[str, Union[Tuple[int, bytes], str]]:
    """Every path under ``folder``: files by (mtime, bytes), folders by name."""
    snap: Dict[str, Union[Tuple[int, bytes], str]] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            snap[os.path.join(root, d)] = "dir"
        for f in files:
            p = Path(root) / f
            snap[str(p)] = (p.stat().st_mtime_ns, p.read_bytes())
    return snap


def test_the_table_is_large_and_distinct():
    assert len(CASES) >= 25 and len(set(CASES)) == len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_one_line(name, tmp_path, assets, capsys):
    case = CASES[name](tmp_path, assets)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    if case.argv is not None:
        status = main(case.argv)
        err = capsys.readouterr().err.strip()
        assert status == 2, err
        assert "\n" not in err and "Traceback" not in err, err
        command = case.argv[0]
        assert err.startswith(f"transip {command}: error: "), err
        message = err
    else:
        with pytest.raises(case.error) as info:
            case.call()
        message = str(info.value)
        assert "\n" not in message, message
    assert case.match.lower() in message.lower(), message
    assert _snapshot(tmp_path) == before  # nothing changed, nothing left behind
