"""The YAML protocol schema: parse, validate and resolve a simulation protocol.

A protocol is a YAML mapping with the sections ``system``, ``model``, ``integrator``,
``stages``, ``reporters`` and the scalars ``name``, ``platform``, ``precision``, ``seed``.
Every key carries its unit in its name (``timestep_fs``, ``temperature_k``,
``padding_nm``...). :func:`load_protocol` validates everything before anything runs:
unknown keys, wrong types, missing files and impossible values raise
:class:`ProtocolError` naming the key (as a dotted path) and what is expected.

Example::

    name: alanine-dipeptide-vacuum
    system: {structure: ../inputs/alanine-dipeptide.pdb, charge: 0, multiplicity: 1}
    model: {path: default, ml_region: all}
    integrator: {type: LangevinMiddle, temperature_k: 300, friction_per_ps: 1, timestep_fs: 0.5}
    stages:
      - {type: minimize, max_iterations: 200}
      - {type: nvt, steps: 1000}
      - {type: production, steps: 10000}
    reporters:
      trajectory: {format: dcd, interval: 100}
      state_data: {interval: 100}
      checkpoint: {interval: 1000}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from transip_openmm import SHIPPED_MODELS
from transip_openmm.errors import TransIPError

#: Structure file suffixes read with openmm.app (biomolecules) and with ASE (small molecules).
OPENMM_STRUCTURE_SUFFIXES = (".pdb", ".cif", ".pdbx")
ASE_STRUCTURE_SUFFIXES = (".xyz", ".extxyz", ".sdf")
INTEGRATORS = ("LangevinMiddle", "Langevin", "Verlet", "BAOAB", "VVVR", "GeodesicBAOAB")
CONSTRAINTS = ("none", "HBonds", "AllBonds", "HAngles")
STAGE_TYPES = ("minimize", "nvt", "npt", "nve", "production")
TRAJECTORY_FORMATS = ("dcd", "xtc")
PLATFORMS = ("auto", "Reference", "CPU", "CUDA", "OpenCL")
PRECISIONS = ("single", "mixed", "double")
WATER_MODELS = ("tip3p", "spce", "tip4pew", "tip5p", "swm4ndp")
POSITIVE_IONS = ("Na+", "K+", "Li+", "Cs+", "Rb+")
NEGATIVE_IONS = ("Cl-", "F-", "Br-", "I-")
NONBONDED_METHODS = ("auto", "NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "PME")


class ProtocolError(TransIPError, ValueError):
    """A protocol is invalid; the message names the key and what is expected."""


@dataclass
class Solvation:
    """Solvent box built by OpenMM's Modeller (lengths in nm, ionic strength in mol/L)."""

    water_model: str = "tip3p"
    padding_nm: float | None = None
    box_nm: list[float] | None = None
    ionic_strength_molar: float = 0.0
    positive_ion: str = "Na+"
    negative_ion: str = "Cl-"
    neutralize: bool = True


@dataclass
class SystemSpec:
    """What to simulate: a structure file, optional solvent, ML-region charge and spin."""

    structure: Path
    charge: int = 0
    multiplicity: int = 1
    solvation: Solvation | None = None
    box_nm: list[float] | None = None


@dataclass
class ModelSpec:
    """The potential: ML model file (or ``default``/``none``), ML region, MM force field."""

    path: str = "default"
    ml_region: str = "all"
    ml_shell_nm: float = 0.0
    forcefield: list[str] = field(default_factory=list)
    nonbonded_method: str = "auto"
    cutoff_nm: float = 1.0
    backend: str = "auto"

    @property
    def uses_ml(self) -> bool:
        return self.path != "none"


@dataclass
class IntegratorSpec:
    """Integrator and its parameters (K, 1/ps, fs, amu)."""

    type: str = "LangevinMiddle"
    temperature_k: float = 300.0
    friction_per_ps: float = 1.0
    timestep_fs: float = 0.5
    constraints: str = "none"
    rigid_water: bool = True
    hydrogen_mass_amu: float | None = None


@dataclass
class StageSpec:
    """One stage: ``minimize`` (iterations) or an MD stage (steps; NPT pressure in bar).

    After parsing, ``time_ps`` of an MD stage is always ``steps`` × the time step, whichever
    of the two the YAML gave (and after ``--max-steps``)."""

    type: str
    name: str
    steps: int = 0
    max_iterations: int = 0
    tolerance_kj_per_mol_nm: float = 10.0
    pressure_bar: float = 1.0
    barostat_interval: int = 25
    ensemble: str = "nvt"
    time_ps: float | None = None

    @property
    def is_md(self) -> bool:
        return self.type != "minimize"

    @property
    def uses_barostat(self) -> bool:
        return self.type == "npt" or (self.type == "production" and self.ensemble == "npt")

    @property
    def records_trajectory(self) -> bool:
        return self.type == "production"


@dataclass
class ReporterSpec:
    """Output intervals in MD steps. The trajectory is written during production stages."""

    trajectory_format: str = "dcd"
    trajectory_interval: int = 100
    state_data_interval: int = 100
    checkpoint_interval: int = 1000
    max_force_kj_per_mol_nm: float = 1.0e6


@dataclass
class Protocol:
    """A validated protocol. ``source`` is the YAML file it came from (or None)."""

    name: str
    system: SystemSpec
    model: ModelSpec
    integrator: IntegratorSpec
    stages: list[StageSpec]
    reporters: ReporterSpec
    platform: str = "auto"
    precision: str = "mixed"
    seed: int = 0
    source: Path | None = None

    def capped(self, max_steps: int | None) -> Protocol:
        """Copy with every stage's steps (and minimiser iterations) capped at ``max_steps``."""
        if max_steps is None:
            return self
        if max_steps < 1:
            raise ProtocolError(f"--max-steps must be >= 1 (got {max_steps})")
        out = copy.deepcopy(self)
        for stage in out.stages:
            stage.steps = min(stage.steps, max_steps)
            stage.max_iterations = min(stage.max_iterations or max_steps, max_steps)  # 0: no limit
        out._resolve_times()
        return out

    def _resolve_times(self) -> None:
        """Every MD stage's ``time_ps`` = its ``steps`` × the time step (the stage as run)."""
        for stage in self.stages:
            if stage.is_md:
                stage.time_ps = stage.steps * self.integrator.timestep_fs / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (paths as strings) for logging and ``protocol.resolved.yaml``."""
        data = asdict(self)
        data["system"]["structure"] = str(self.system.structure)
        data["source"] = str(self.source) if self.source else None
        return data


# --------------------------------------------------------------------------- checking helpers
_MISSING = object()


class _Section:
    """A mapping being validated: every read is checked and unknown keys are reported."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where or 'protocol'}: expected a mapping, got {_kind(data)}")
        self.data = data
        self.where = where
        self.used: set = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None and default is not _MISSING:
            if default is _MISSING:
                raise ProtocolError(f"{self.key(name)}: required key is missing ({_describe(kind)})")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise ProtocolError(f"{self.key(name)}: expected {_describe(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise ProtocolError(f"{self.key(name)}: expected {_describe(kind)}, got {_kind(value)} {value!r}")
        return value

    def number(self, name: str, default: Any = _MISSING, *, minimum: float | None = None,
               positive: bool = False, integer: bool = False) -> Any:
        value = self.get(name, int if integer else float, default)
        if value is None:
            return None
        if not integer and not math.isfinite(value):
            raise ProtocolError(f"{self.key(name)}: expected a finite number, got {value!r}")
        if positive and value <= 0:
            raise ProtocolError(f"{self.key(name)}: expected a positive number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ProtocolError(f"{self.key(name)}: expected a number >= {minimum}, got {value!r}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: Any = _MISSING) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ProtocolError(f"{self.key(name)}: expected one of {list(choices)}, got {value!r}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            where = self.where or "top level"
            raise ProtocolError(
                f"{where}: unknown key(s) {unknown}; expected a subset of {sorted(self.used)}"
            )


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _describe(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "a mapping"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _vector3(section: _Section, name: str) -> list[float] | None:
    value = section.get(name, list, None)
    if value is None:
        return None
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                  for v in value):
        raise ProtocolError(f"{section.key(name)}: expected three positive lengths in nm, got {value!r}")
    return [float(v) for v in value]


# --------------------------------------------------------------------------- section parsers
def _parse_solvation(data: Any) -> Solvation:
    s = _Section(data, "system.solvation")
    out = Solvation(
        water_model=s.choice("water_model", WATER_MODELS, "tip3p"),
        padding_nm=s.number("padding_nm", None, positive=True),
        box_nm=_vector3(s, "box_nm"),
        ionic_strength_molar=s.number("ionic_strength_molar", 0.0, minimum=0.0),
        positive_ion=s.choice("positive_ion", POSITIVE_IONS, "Na+"),
        negative_ion=s.choice("negative_ion", NEGATIVE_IONS, "Cl-"),
        neutralize=s.get("neutralize", bool, True),
    )
    s.finish()
    if (out.padding_nm is None) == (out.box_nm is None):
        raise ProtocolError("system.solvation: give exactly one of padding_nm or box_nm")
    return out


def _parse_system(data: Any, base: Path, check_files: bool) -> SystemSpec:
    s = _Section(data, "system")
    structure = Path(s.get("structure", str))
    if not structure.is_absolute():
        structure = (base / structure).resolve()
    suffix = structure.suffix.lower()
    if suffix not in OPENMM_STRUCTURE_SUFFIXES + ASE_STRUCTURE_SUFFIXES:
        raise ProtocolError(
            f"system.structure: unsupported file type {suffix!r}; expected one of "
            f"{list(OPENMM_STRUCTURE_SUFFIXES + ASE_STRUCTURE_SUFFIXES)}"
        )
    if check_files and not structure.is_file():
        raise ProtocolError(f"system.structure: file {structure} does not exist (paths are relative "
                            "to the protocol file)")
    charge = s.number("charge", 0, integer=True)
    multiplicity = s.number("multiplicity", 1, integer=True, minimum=1)
    solvation = s.get("solvation", dict, None)
    out = SystemSpec(
        structure=structure,
        charge=charge,
        multiplicity=multiplicity,
        solvation=_parse_solvation(solvation) if solvation is not None else None,
        box_nm=_vector3(s, "box_nm"),
    )
    s.finish()
    if out.solvation is not None and out.box_nm is not None:
        raise ProtocolError("system.box_nm: not allowed together with system.solvation (the "
                            "solvent box sets the periodic box)")
    return out


def _parse_model(data: Any, base: Path, check_files: bool) -> ModelSpec:
    s = _Section(data, "model")
    path = s.get("path", str, "default")
    if path not in (*SHIPPED_MODELS, "none"):
        resolved = Path(path) if Path(path).is_absolute() else (base / path).resolve()
        if check_files and not resolved.is_file():
            raise ProtocolError(f"model.path: model file {resolved} does not exist; expected an "
                                f"exported model (transip export), one of {sorted(SHIPPED_MODELS)} "
                                "(shipped models) or 'none'")
        path = str(resolved)
    forcefield = s.get("forcefield", (list, str), [])
    if isinstance(forcefield, str):
        forcefield = [forcefield]
    if not all(isinstance(f, str) for f in forcefield):
        raise ProtocolError(f"model.forcefield: expected a list of force field XML files, got {forcefield!r}")
    out = ModelSpec(
        path=path,
        ml_region=s.get("ml_region", str, "all"),
        ml_shell_nm=s.number("ml_shell_nm", 0.0, minimum=0.0),
        forcefield=list(forcefield),
        nonbonded_method=s.choice("nonbonded_method", NONBONDED_METHODS, "auto"),
        cutoff_nm=s.number("cutoff_nm", 1.0, positive=True),
        backend=s.get("backend", str, "auto"),
    )
    s.finish()
    if not out.ml_region.strip():
        raise ProtocolError("model.ml_region: expected an mdtraj selection (e.g. 'all', 'protein')")
    return out


def _parse_integrator(data: Any) -> IntegratorSpec:
    s = _Section(data, "integrator")
    out = IntegratorSpec(
        type=s.choice("type", INTEGRATORS, "LangevinMiddle"),
        temperature_k=s.number("temperature_k", 300.0, positive=True),
        friction_per_ps=s.number("friction_per_ps", 1.0, minimum=0.0),
        timestep_fs=s.number("timestep_fs", 0.5, positive=True),
        constraints=s.choice("constraints", CONSTRAINTS, "none"),
        rigid_water=s.get("rigid_water", bool, True),
        hydrogen_mass_amu=s.number("hydrogen_mass_amu", None, positive=True),
    )
    s.finish()
    if out.timestep_fs > 10.0:
        raise ProtocolError(f"integrator.timestep_fs: {out.timestep_fs} fs is far too long for MD; "
                            "expected at most 10 fs (0.5-2 fs is usual)")
    if out.temperature_k > 10000:
        raise ProtocolError(f"integrator.temperature_k: expected a temperature below 10000 K, "
                            f"got {out.temperature_k}")
    return out


def _parse_stage(data: Any, index: int) -> StageSpec:
    s = _Section(data, f"stages[{index}]")
    kind = s.choice("type", STAGE_TYPES)
    name = s.get("name", str, f"{index}-{kind}")
    stage = StageSpec(type=kind, name=name)
    if kind == "minimize":
        stage.max_iterations = s.number("max_iterations", 1000, integer=True, minimum=0)
        stage.tolerance_kj_per_mol_nm = s.number("tolerance_kj_per_mol_nm", 10.0, positive=True)
    else:
        steps = s.number("steps", None, integer=True, minimum=1)
        time_ps = s.number("time_ps", None, positive=True)
        if (steps is None) == (time_ps is None):
            raise ProtocolError(f"{s.key('steps')}: give exactly one of steps (MD steps) or time_ps")
        stage.steps = steps if steps is not None else -1
        stage.max_iterations = 0
        if kind == "production":
            stage.ensemble = s.choice("ensemble", ("nvt", "npt", "nve"), "nvt")
        if stage.uses_barostat:
            stage.pressure_bar = s.number("pressure_bar", 1.0, positive=True)
            stage.barostat_interval = s.number("barostat_interval", 25, integer=True, minimum=1)
        stage.time_ps = time_ps
    s.finish()
    return stage


def _parse_reporters(data: Any) -> ReporterSpec:
    s = _Section(data, "reporters")
    out = ReporterSpec()
    traj = s.get("trajectory", dict, None)
    if traj is not None:
        t = _Section(traj, "reporters.trajectory")
        out.trajectory_format = t.choice("format", TRAJECTORY_FORMATS, "dcd")
        out.trajectory_interval = t.number("interval", 100, integer=True, minimum=1)
        t.finish()
    state = s.get("state_data", dict, None)
    if state is not None:
        t = _Section(state, "reporters.state_data")
        out.state_data_interval = t.number("interval", 100, integer=True, minimum=1)
        out.max_force_kj_per_mol_nm = t.number("max_force_kj_per_mol_nm", 1.0e6, positive=True)
        t.finish()
    chk = s.get("checkpoint", dict, None)
    if chk is not None:
        t = _Section(chk, "reporters.checkpoint")
        out.checkpoint_interval = t.number("interval", 1000, integer=True, minimum=1)
        t.finish()
    s.finish()
    if out.checkpoint_interval % out.trajectory_interval:
        raise ProtocolError(
            f"reporters.checkpoint.interval: expected a multiple of reporters.trajectory.interval "
            f"({out.trajectory_interval}), got {out.checkpoint_interval}"
        )
    return out


def parse_protocol(data: Any, base: Path, check_files: bool = True,
                   source: Path | None = None) -> Protocol:
    """Validate a protocol mapping; relative paths are resolved against ``base``."""
    top = _Section(data, "")
    name = top.get("name", str, source.stem if source else "protocol")
    system = _parse_system(top.get("system", dict), base, check_files)
    model = _parse_model(top.get("model", dict, {}), base, check_files)
    integrator = _parse_integrator(top.get("integrator", dict, {}))
    raw_stages = top.get("stages", list)
    if not raw_stages:
        raise ProtocolError("stages: expected a non-empty list of stages")
    stages = [_parse_stage(item, i) for i, item in enumerate(raw_stages)]
    for stage in stages:  # time_ps -> steps with this protocol's time step
        if stage.time_ps is not None:
            stage.steps = max(1, int(round(stage.time_ps * 1000.0 / integrator.timestep_fs)))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ProtocolError(f"stages: stage names must be unique, got {names}")
    reporters = _parse_reporters(top.get("reporters", dict, {}))
    protocol = Protocol(
        name=name,
        system=system,
        model=model,
        integrator=integrator,
        stages=stages,
        reporters=reporters,
        platform=top.choice("platform", PLATFORMS, "auto"),
        precision=top.choice("precision", PRECISIONS, "mixed"),
        seed=top.number("seed", 0, integer=True, minimum=0),
        source=source,
    )
    top.finish()
    protocol._resolve_times()
    _check_consistency(protocol)
    return protocol


def _check_consistency(p: Protocol) -> None:
    periodic = p.system.solvation is not None or p.system.box_nm is not None
    needs_ff = p.system.solvation is not None or p.model.ml_region.strip() != "all" or not p.model.uses_ml
    if needs_ff and not p.model.forcefield:
        why = ("solvation" if p.system.solvation is not None else
               "an ML region smaller than 'all'" if p.model.uses_ml else "model.path: none (pure MM)")
        raise ProtocolError(f"model.forcefield: required with {why}; expected a list of OpenMM force "
                            "field XML files, e.g. [amber14-all.xml, amber14/tip3p.xml]")
    if any(s.uses_barostat for s in p.stages) and not periodic:
        raise ProtocolError("stages: an npt stage needs a periodic box (system.solvation or system.box_nm)")
    if p.model.nonbonded_method in ("PME", "CutoffPeriodic") and not periodic:
        raise ProtocolError(f"model.nonbonded_method: {p.model.nonbonded_method} needs a periodic box")
    if p.integrator.type == "Verlet" and any(s.type in ("nvt", "npt") for s in p.stages):
        raise ProtocolError("integrator.type: Verlet has no thermostat; use nve/production stages "
                            "or a Langevin-type integrator")
    if p.integrator.constraints != "none" and not p.model.forcefield:
        raise ProtocolError("integrator.constraints: constraints come from the MM force field; with "
                            "an all-ML system without model.forcefield use 'none'")
    if p.integrator.hydrogen_mass_amu is not None and p.integrator.hydrogen_mass_amu > 5:
        raise ProtocolError(f"integrator.hydrogen_mass_amu: expected at most 5 amu, got "
                            f"{p.integrator.hydrogen_mass_amu}")


def load_protocol(path: str | Path, check_files: bool = True) -> Protocol:
    """Read and validate a protocol YAML file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ProtocolError(f"protocol file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not valid YAML ({exc})") from exc
    return parse_protocol(data, path.parent, check_files=check_files, source=path)


def bundled_protocols_dir() -> Path:
    """Folder of the protocols shipped with the package."""
    return Path(__file__).resolve().parent / "protocols"
