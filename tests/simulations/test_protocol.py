"""Protocol schema: bundled protocols validate; bad input fails naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transip_openmm.simulations.protocol import ProtocolError, load_protocol, parse_protocol

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "simulations" / "protocols"
INPUTS = REPO / "simulations" / "inputs"

BASE = {
    "system": {"structure": str(INPUTS / "alanine-dipeptide.pdb")},
    "model": {"path": "default"},
    "integrator": {"timestep_fs": 0.5},
    "stages": [{"type": "minimize"}, {"type": "production", "steps": 100}],
}


def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize("path", sorted(PROTOCOLS.glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_protocols_validate(path: Path) -> None:
    protocol = load_protocol(path)
    assert protocol.system.structure.is_file()
    assert protocol.stages and all(s.steps > 0 for s in protocol.stages if s.is_md)


def test_bundled_protocol_set_is_complete() -> None:
    names = {p.stem for p in PROTOCOLS.glob("*.yaml")}
    assert {"alanine-dipeptide-vacuum", "alanine-dipeptide-water", "serine-dipeptide-spice-water",
            "nacl-water", "li-ec-cluster"} <= names
    li = load_protocol(PROTOCOLS / "li-ec-cluster.yaml")
    assert (li.system.charge, li.system.multiplicity) == (1, 1)


def test_time_ps_becomes_steps_and_max_steps_caps() -> None:
    data = _with(stages=[{"type": "minimize", "max_iterations": 500}, {"type": "nvt", "time_ps": 2.0}])
    p = parse_protocol(data, Path("."))
    assert p.stages[1].steps == 4000  # 2 ps / 0.5 fs
    capped = p.capped(10)
    assert capped.stages[1].steps == 10 and capped.stages[0].max_iterations == 10
    assert p.stages[1].steps == 4000  # the original is untouched
    # the resolved protocol says what runs: 10 steps of 0.5 fs are 0.005 ps, not the 2 ps asked for
    resolved = capped.to_dict()["stages"][1]
    assert (resolved["steps"], resolved["time_ps"]) == (10, pytest.approx(0.005))
    assert p.to_dict()["stages"][1]["time_ps"] == pytest.approx(2.0)
    unlimited = parse_protocol(_with(stages=[{"type": "minimize", "max_iterations": 0}]), Path("."))
    assert unlimited.capped(10).stages[0].max_iterations == 10  # "no limit" is capped too
    steps_given = parse_protocol(_with(stages=[{"type": "nvt", "steps": 300}]), Path("."))
    assert steps_given.to_dict()["stages"][0]["time_ps"] == pytest.approx(0.15)


@pytest.mark.parametrize(
    "changes, key, expected",
    [
        ({"integrator__timstep_fs": 1.0}, "integrator", "unknown key"),
        ({"integrator__timestep_fs": "fast"}, "integrator.timestep_fs", "expected a number"),
        ({"integrator__timestep_fs": -1.0}, "integrator.timestep_fs", "positive"),
        ({"integrator__timestep_fs": 50.0}, "integrator.timestep_fs", "at most 10 fs"),
        ({"integrator__type": "Leapfrog"}, "integrator.type", "expected one of"),
        ({"system__structure": "missing.pdb"}, "system.structure", "does not exist"),
        ({"system__structure": "x.mol2"}, "system.structure", "unsupported file type"),
        ({"system__multiplicity": 0}, "system.multiplicity", ">= 1"),
        ({"system__charge": 1.5}, "system.charge", "expected an integer"),
        ({"model__path": "nope.pt"}, "model.path", "does not exist"),
        ({"stages": []}, "stages", "non-empty"),
        ({"stages__1__steps": 0}, "stages[1].steps", ">= 1"),
        ({"stages__1__type": "heat"}, "stages[1].type", "expected one of"),
        ({"stages__1__pressure_bar": 1.0}, "stages[1]", "unknown key"),
        ({"seed": -3}, "seed", ">= 0"),
        ({"platform": "TPU"}, "platform", "expected one of"),
        ({"stages__1__type": "npt"}, "stages", "periodic box"),
        ({"model__ml_region": "protein"}, "model.forcefield", "required"),
        ({"system__solvation": {"padding_nm": 1.0}}, "model.forcefield", "required"),
        ({"system__solvation": {"padding_nm": 1.0, "box_nm": [3, 3, 3]}}, "system.solvation", "exactly one"),
        ({"reporters": {"trajectory": {"interval": 30}, "checkpoint": {"interval": 100}}},
         "reporters.checkpoint.interval", "multiple"),
        ({"integrator__constraints": "HBonds"}, "integrator.constraints", "force field"),
    ],
)
def test_invalid_protocols_name_the_key(changes, key, expected) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_protocol(_with(**changes), INPUTS)
    message = str(info.value)
    assert message.startswith(key) or key in message, message
    assert expected in message, message


def test_missing_protocol_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="does not exist"):
        load_protocol(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: [unclosed")
    with pytest.raises(ProtocolError, match="not valid YAML"):
        load_protocol(bad)
