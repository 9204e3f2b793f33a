"""Run a validated protocol stage by stage, with checkpoints, resume and blow-up detection.

Run directory layout::

    run_identity.json        what the run is: protocol hash, atom count, model and structure
                             file hashes (checked by --resume before any file is touched)
    protocol.resolved.yaml   the protocol as run (after --max-steps)
    topology.pdb             the start structure (with solvent), topology for the trajectory
    state_data.csv           one row per state-data interval (all MD stages)
    chunks/                  production trajectory pieces, one per checkpoint interval
    checkpoints/             OpenMM checkpoints (binary, with RNG state) + portable state XML
    progress.json            the commit record: stage, step, checkpoint, committed chunks
    trajectory.dcd|xtc       the stitched production trajectory (written at the end)
    final.pdb                the last structure;   last_good.pdb  written on a blow-up
    run.json                 timing, platform, frame times

A trajectory chunk is committed in ``progress.json`` in the same atomic write that records
the checkpoint at its last frame, so after ``kill -9`` a resume deletes uncommitted chunks,
truncates ``state_data.csv`` to the checkpoint step and continues from the checkpoint: the
stitched trajectory has neither gaps nor duplicated frames. Every other output is written
to a temporary file and renamed over the target, so a killed run never leaves a partial file.
A resume first checks that the run directory holds the same run (:class:`ResumeMismatch`).
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import yaml
from openmm import app, unit
from transip_openmm.simulations.protocol import IntegratorSpec, Protocol, StageSpec
from transip_openmm.simulations.systems import BuiltSystem, build_system
from transip_openmm.atomic_io import atomic_binary_file, atomic_write_text, remove_stale_temporaries
from transip_openmm.errors import TransIPError

logger = logging.getLogger(__name__)

CSV_COLUMNS = [
    "stage", "step", "time_ps", "potential_kj_per_mol", "kinetic_kj_per_mol", "total_kj_per_mol",
    "temperature_k", "volume_nm3", "density_g_per_ml", "max_force_kj_per_mol_nm", "speed_ns_per_day",
]
PROGRESS_FILE = "progress.json"
IDENTITY_FILE = "run_identity.json"


class SimulationError(TransIPError, RuntimeError):
    """The simulation blew up (NaN or exploding forces) or cannot continue."""


class ResumeMismatch(SimulationError):
    """``--resume`` was asked for a run directory that holds another run."""


@dataclass
class _Check:
    ok: bool
    potential: float
    max_force: float
    reason: str = ""


# --------------------------------------------------------------------------- small helpers
@contextlib.contextmanager
def _atomic_path(path: Path):
    """Yield a temporary path beside ``path`` (same suffix, for writers that choose the format
    by it); on success it replaces ``path``, on failure it is removed."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_pdb(path: Path, topology: app.Topology, positions) -> None:
    """``PDBFile.writeFile`` into ``path`` atomically (positions: a Quantity)."""
    text = io.StringIO()
    app.PDBFile.writeFile(topology, positions, text)
    atomic_write_text(path, text.getvalue())


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(protocol: Protocol, n_atoms: int) -> dict[str, Any]:
    """What makes a run the same run: the resolved protocol with its files replaced by their
    SHA-256 (so a moved checkout still matches and an edited file does not), its hash, and the
    atom count of the built system."""
    from transip_openmm.force import resolve_model_path

    data = protocol.to_dict()
    data.pop("source", None)
    data["system"]["structure"] = {"file": protocol.system.structure.name,
                                   "sha256": file_sha256(protocol.system.structure)}
    if protocol.model.uses_ml:
        model_file = resolve_model_path(protocol.model.path)
        data["model"]["path"] = {"file": model_file.name, "sha256": file_sha256(model_file)}
    blob = json.dumps(data, sort_keys=True).encode()
    return {"protocol_sha256": hashlib.sha256(blob).hexdigest(), "n_atoms": int(n_atoms), "protocol": data}


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted keys where two plain-data trees differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def check_resume_identity(out: Path, stored: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Raise :class:`ResumeMismatch` (one line) unless ``current`` is the run in ``out``."""
    fix = "resume with the protocol and model the run was started with, or choose another --output"
    if stored is None:
        raise ResumeMismatch(f"cannot resume {out}: it has no {IDENTITY_FILE} (made by an older version), so "
                             "it cannot be checked to be the same run; start the run again in another --output")
    if stored["n_atoms"] != current["n_atoms"]:
        raise ResumeMismatch(f"cannot resume {out}: the run has {stored['n_atoms']} atoms but this protocol "
                             f"builds {current['n_atoms']}; {fix}")
    if stored["protocol_sha256"] != current["protocol_sha256"]:
        diffs = _differences(stored["protocol"], current["protocol"])
        shown = "; ".join(d.replace("sha256", "file hash") for d in diffs[:3]) + (" ..." if len(diffs) > 3 else "")
        what = ("another model file" if any(d.startswith("model.path") for d in diffs) else
                "another structure file" if any(d.startswith("system.structure") for d in diffs) else
                "another protocol")
        raise ResumeMismatch(f"cannot resume {out}: it was started with {what} (differs in {shown}); {fix} "
                             f"({out / 'protocol.resolved.yaml'} records the run's)")


def choose_platform(name: str) -> openmm.Platform:
    """The named OpenMM platform, or for ``auto`` the fastest available."""
    available = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if name == "auto":
        for candidate in ("CUDA", "OpenCL", "CPU", "Reference"):
            if candidate in available:
                return openmm.Platform.getPlatformByName(candidate)
    if name not in available:
        raise SimulationError(f"platform {name!r} is not available here; available: {available}")
    return openmm.Platform.getPlatformByName(name)


def platform_properties(platform: openmm.Platform, precision: str) -> dict[str, str]:
    if platform.getName() in ("CUDA", "OpenCL", "HIP"):
        return {"Precision": precision}
    return {}


def make_integrator(spec: IntegratorSpec, stage: StageSpec, seed: int) -> openmm.Integrator:
    """The protocol's integrator for one stage (``nve`` stages and ensemble use Verlet)."""
    dt = spec.timestep_fs * unit.femtosecond
    temperature = spec.temperature_k * unit.kelvin
    friction = spec.friction_per_ps / unit.picosecond
    nve = stage.type == "nve" or (stage.type == "production" and stage.ensemble == "nve")
    if nve or spec.type == "Verlet":
        return openmm.VerletIntegrator(dt)
    if spec.type == "LangevinMiddle":
        integrator = openmm.LangevinMiddleIntegrator(temperature, friction, dt)
    elif spec.type == "Langevin":
        integrator = openmm.LangevinIntegrator(temperature, friction, dt)
    else:
        from openmmtools import integrators

        cls = {"BAOAB": integrators.BAOABIntegrator, "VVVR": integrators.VVVRIntegrator,
               "GeodesicBAOAB": integrators.GeodesicBAOABIntegrator}[spec.type]
        integrator = cls(temperature=temperature, collision_rate=friction, timestep=dt)
    integrator.setRandomNumberSeed(seed)
    return integrator


def rms_free_force(context: openmm.Context, system: openmm.System) -> float:
    """Root mean square (kJ/mol/nm) of the force components the constraints leave free:
    OpenMM's minimiser convergence measure (RMS of all components; without constraints the
    raw forces). Constraint directions are projected out by applying the velocity
    constraints to v = F / m (so the context's velocities are overwritten). Massless
    particles are left out."""
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
        unit.kilojoule_per_mole / unit.nanometer)
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
    massive = masses > 0
    if system.getNumConstraints():
        velocities = np.zeros_like(forces)
        velocities[massive] = forces[massive] / masses[massive, None]
        context.setVelocities(velocities)
        context.applyVelocityConstraints(1e-10)
        free = context.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(
            unit.nanometer / unit.picosecond)
        forces = free * masses[:, None]
    return float(np.sqrt(np.mean(forces[massive] ** 2))) if massive.any() else 0.0


def degrees_of_freedom(system: openmm.System) -> int:
    """3 N (massive particles) - constraints - 3 if the centre-of-mass motion is removed."""
    n = sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i).value_in_unit(unit.dalton) > 0)
    dof = 3 * n - system.getNumConstraints()
    if any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()):
        dof -= 3
    return max(dof, 1)


# --------------------------------------------------------------------------- the runner
class Runner:
    """Runs ``protocol`` into ``output``; ``resume`` continues from ``progress.json``."""

    def __init__(self, protocol: Protocol, output: Path, resume: bool = False,
                 platform: str | None = None, show_progress: bool = True) -> None:
        self.protocol = protocol
        self.out = Path(output)
        self.resume = resume
        self.platform_name = platform or protocol.platform
        self.show_progress = show_progress
        self.built: BuiltSystem | None = None
        self.progress: dict[str, Any] = {}
        self.last_good: tuple | None = None  # (global step, positions (N,3) nm, box)

    # ---- setup
    def _check_directory(self) -> dict[str, Any] | None:
        """Read-only checks of the run directory; returns the stored identity on a resume."""
        progress_path = self.out / PROGRESS_FILE
        if progress_path.exists() and not self.resume:
            raise SimulationError(f"{self.out} already holds a run; use --resume to continue it or "
                                  "choose another --output")
        if self.resume and not progress_path.exists():
            logger.warning("nothing to resume in %s: starting a new run", self.out)
            self.resume = False
        if not self.resume:
            return None
        identity = self.out / IDENTITY_FILE
        return json.loads(identity.read_text()) if identity.exists() else None

    def _prepare_directory(self, identity: dict[str, Any]) -> None:
        (self.out / "chunks").mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        for stale in list(self.out.glob(".*.tmp")) + list(self.out.glob("*/.*.tmp")) + \
                list(self.out.glob(".*.partial.*")) + list(self.out.glob("*/.*.partial.*")):
            stale.unlink()  # left by a killed write; the file it was to replace is intact
        if self.resume:
            self.progress = json.loads((self.out / PROGRESS_FILE).read_text())
            self._discard_uncommitted()
        else:
            atomic_write_text(self.out / IDENTITY_FILE, json.dumps(identity, indent=1))
            self.progress = {"stage_index": 0, "step_in_stage": 0, "global_step": 0, "time_ps": 0.0,
                             "checkpoint": None, "state_xml": None, "chunks": [], "done": False}
            text = io.StringIO()
            csv.writer(text).writerow(CSV_COLUMNS)
            atomic_write_text(self.out / "state_data.csv", text.getvalue())
            _write_pdb(self.out / "topology.pdb", self.built.topology, self.built.positions * unit.nanometer)
            atomic_write_text(self.out / "protocol.resolved.yaml",
                          yaml.safe_dump(self.protocol.to_dict(), sort_keys=False))

    def _discard_uncommitted(self) -> None:
        committed = {c["file"] for c in self.progress["chunks"]}
        for path in (self.out / "chunks").iterdir():
            if path.name not in committed:
                logger.info("resume: discarding uncommitted trajectory chunk %s", path.name)
                path.unlink()
        csv_path = self.out / "state_data.csv"
        with open(csv_path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == len(CSV_COLUMNS) and
                            int(r[1]) <= self.progress["global_step"]]
        text = io.StringIO()
        csv.writer(text).writerows(keep)
        atomic_write_text(csv_path, text.getvalue())
        logger.info("resume: stage %d step %d (global MD step %d, t = %.3f ps); %d state rows kept, "
                    "%d trajectory chunks kept", self.progress["stage_index"], self.progress["step_in_stage"],
                    self.progress["global_step"], self.progress["time_ps"], len(keep) - 1, len(committed))

    def _commit(self) -> None:
        atomic_write_text(self.out / PROGRESS_FILE, json.dumps(self.progress, indent=1))

    # ---- main entry
    def run(self) -> dict[str, Any]:
        p = self.protocol
        stored = self._check_directory()
        logger.info("resolved protocol:\n%s", yaml.safe_dump(p.to_dict(), sort_keys=False).rstrip())
        self.built = build_system(p)
        identity = run_identity(p, self.built.topology.getNumAtoms())
        if self.resume:  # before any file in the run directory is touched
            check_resume_identity(self.out, stored, identity)
            remove_stale_temporaries(self.out)  # left by a write the killed run did not finish
        self._prepare_directory(identity)
        self.platform = choose_platform(self.platform_name)
        self.properties = platform_properties(self.platform, p.precision)
        logger.info("platform: %s %s; ML force: %s", self.platform.getName(), self.properties or "",
                    _describe_ml_force(self.built))
        self.dof = degrees_of_freedom(self.built.system)
        self.total_mass = sum(self.built.system.getParticleMass(i).value_in_unit(unit.dalton)
                              for i in range(self.built.system.getNumParticles()))
        total_md = sum(s.steps for s in p.stages if s.is_md)
        start = time.perf_counter()
        steps_before = self.progress["global_step"]
        self._bar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_md, initial=steps_before, unit="step", desc=p.name,
                             dynamic_ncols=True)
        self._t0, self._steps0 = start, steps_before
        self._md_wall = 0.0
        state = None
        if self.resume and not self.progress["checkpoint"] and self.progress.get("stage_start_xml"):
            state = openmm.XmlSerializer.deserialize(
                (self.out / "checkpoints" / self.progress["stage_start_xml"]).read_text())
        try:
            for index in range(self.progress["stage_index"], len(p.stages)):
                state = self._run_stage(index, p.stages[index], state)
                gc.collect()  # the stage's Context must be gone before the System is changed
        finally:
            if self._bar is not None:
                self._bar.close()
        wall = time.perf_counter() - start
        return self._finish(state, wall, self.progress["global_step"] - steps_before)

    # ---- stages
    def _stage_system(self, stage: StageSpec) -> openmm.System:
        """The System for one stage: the barostat (added once, shared) is on only in NPT stages.

        The System is modified only between stages, when no Context uses it (cloning a System
        that holds an ML force is avoided: it reloads the model and is not safe everywhere).
        """
        system = self.built.system
        barostat = next((f for f in system.getForces() if isinstance(f, openmm.MonteCarloBarostat)), None)
        if barostat is None and any(s.uses_barostat for s in self.protocol.stages):
            barostat = openmm.MonteCarloBarostat(1.0 * unit.bar, self.protocol.integrator.temperature_k * unit.kelvin)
            barostat.setRandomNumberSeed(self.protocol.seed + 17)
            system.addForce(barostat)
        if barostat is not None:
            barostat.setFrequency(stage.barostat_interval if stage.uses_barostat else 0)
            barostat.setDefaultPressure(stage.pressure_bar * unit.bar)
        return system

    def _run_stage(self, index: int, stage: StageSpec, previous: openmm.State | None) -> openmm.State:
        p = self.protocol
        integrator = make_integrator(p.integrator, stage, p.seed + index)
        try:
            sim = app.Simulation(self.built.topology, self._stage_system(stage), integrator,
                                 self.platform, self.properties)
        except openmm.OpenMMException as exc:
            raise SimulationError(f"cannot create the OpenMM context for stage {stage.name!r} on "
                                  f"{self.platform.getName()}: {exc}") from exc
        resumed_mid_stage = self.resume and self.progress["stage_index"] == index and self.progress["checkpoint"]
        if resumed_mid_stage:
            self._load_checkpoint(sim)
        elif previous is not None:
            _carry_state(sim, previous)
        else:
            sim.context.setPositions(self.built.positions * unit.nanometer)
            if self.built.periodic:
                sim.context.setPeriodicBoxVectors(*self.built.topology.getPeriodicBoxVectors())
            sim.context.setVelocitiesToTemperature(p.integrator.temperature_k * unit.kelvin, p.seed)
        self.resume = False
        logger.info("stage %d/%d %r (%s): %s", index + 1, len(p.stages), stage.name, stage.type,
                    f"{stage.max_iterations} iterations max" if not stage.is_md else
                    f"{stage.steps} steps = {stage.steps * p.integrator.timestep_fs / 1000:.3f} ps")
        if stage.is_md:
            self._md(sim, index, stage)
        else:
            self._minimize(sim, index, stage)
        state = sim.context.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=False)
        self.progress.update(stage_index=index + 1, step_in_stage=0, checkpoint=None, state_xml=None)
        self._save_stage_end(state)
        return state

    def _minimize(self, sim: app.Simulation, index: int, stage: StageSpec) -> None:
        before = self._check(sim)
        if not before.ok:
            self._blow_up(sim, index, stage, 0, before)
        sim.minimizeEnergy(tolerance=stage.tolerance_kj_per_mol_nm * unit.kilojoule_per_mole / unit.nanometer,
                           maxIterations=stage.max_iterations)
        after = self._check(sim)
        if not after.ok:
            self._blow_up(sim, index, stage, 0, after)
        rms = rms_free_force(sim.context, self.built.system)
        logger.info("minimised: %.2f -> %.2f kJ/mol, RMS force %.2f, max force %.1f kJ/mol/nm", before.potential,
                    after.potential, rms, after.max_force)
        # OpenMM converges with constraints as stiff restraints, then applies them exactly, which
        # raises the RMS force a little (measured 10.6 after converging to 10 kJ/mol/nm on
        # solvated alanine dipeptide, HBonds + rigid water): allow twice the tolerance there.
        limit = stage.tolerance_kj_per_mol_nm * (2.0 if self.built.system.getNumConstraints() else 1.0)
        if rms > limit:
            logger.warning(
                "stage %d %r: the minimiser stopped before converging: RMS force %.3g kJ/mol/nm is above the "
                "tolerance %g (max force %.3g) after at most %s iterations; MD starts from an unconverged "
                "structure: raise stages[%d].max_iterations (0: no limit)", index + 1, stage.name, rms,
                stage.tolerance_kj_per_mol_nm, after.max_force, stage.max_iterations or "unlimited", index)
        # velocities for the first MD stage after minimisation
        sim.context.setVelocitiesToTemperature(self.protocol.integrator.temperature_k * unit.kelvin,
                                               self.protocol.seed + index)

    def _md(self, sim: app.Simulation, index: int, stage: StageSpec) -> None:
        rep = self.protocol.reporters
        step = self.progress["step_in_stage"]
        base_global = self.progress["global_step"] - step
        self.last_good = None
        check = self._check(sim)
        if not check.ok:
            self._blow_up(sim, index, stage, step, check)
        self._remember_good(sim, base_global + step)
        writer = None
        intervals = [rep.state_data_interval, rep.checkpoint_interval]
        if stage.records_trajectory:
            intervals.append(rep.trajectory_interval)
        while step < stage.steps:
            nxt = min(min((step // k + 1) * k for k in intervals), stage.steps)
            try:
                t_step = time.perf_counter()
                sim.step(nxt - step)
                self._md_wall += time.perf_counter() - t_step
            except openmm.OpenMMException as exc:
                self._blow_up(sim, index, stage, nxt, _Check(False, math.nan, math.nan, str(exc)))
            step = nxt
            g = base_global + step
            if self._bar is not None:
                self._bar.n = g
                self._bar.set_postfix_str(f"{self._ns_per_day(g):.2f} ns/day", refresh=True)
            if step % rep.state_data_interval == 0 or step == stage.steps:
                check = self._check(sim)
                if not check.ok:
                    self._blow_up(sim, index, stage, step, check)
                self._remember_good(sim, g)
                self._write_row(sim, stage, g, check)
            if stage.records_trajectory and step % rep.trajectory_interval == 0:
                writer = writer or self._open_chunk(stage, step, g)
                self._write_frame(writer, sim)
            if step % rep.checkpoint_interval == 0 or step == stage.steps:
                if writer is not None:
                    writer["fh"].close()
                    self.progress["chunks"].append({"file": writer["name"], "stage": stage.name,
                                                    "first_step": writer["first_step"],
                                                    "first_global_step": writer["first_global_step"],
                                                    "n_frames": writer["n_frames"]})
                    writer = None
                self.progress.update(stage_index=index, step_in_stage=step, global_step=g,
                                     time_ps=sim.context.getState().getTime().value_in_unit(unit.picosecond))
                self._save_checkpoint(sim)

    # ---- output pieces
    def _ns_per_day(self, global_step: int) -> float:
        elapsed = time.perf_counter() - self._t0
        done = global_step - self._steps0
        if elapsed <= 0 or done <= 0:
            return 0.0
        return done * self.protocol.integrator.timestep_fs * 1e-6 / elapsed * 86400.0

    def _check(self, sim: app.Simulation) -> _Check:
        state = sim.context.getState(getEnergy=True, getForces=True)
        potential = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        max_force = float(np.max(np.linalg.norm(forces, axis=1))) if len(forces) else 0.0
        limit = self.protocol.reporters.max_force_kj_per_mol_nm
        if not math.isfinite(potential):
            return _Check(False, potential, max_force, f"potential energy is {potential}")
        if not math.isfinite(max_force):
            return _Check(False, potential, max_force, "forces contain NaN/inf")
        if max_force > limit:
            return _Check(False, potential, max_force,
                          f"max force {max_force:.3g} kJ/mol/nm exceeds the limit {limit:.3g} "
                          "(reporters.state_data.max_force_kj_per_mol_nm)")
        return _Check(True, potential, max_force)

    def _remember_good(self, sim: app.Simulation, global_step: int) -> None:
        state = sim.context.getState(getPositions=True)
        self.last_good = (global_step, state.getPositions(asNumpy=True), state.getPeriodicBoxVectors())

    def _blow_up(self, sim: app.Simulation, index: int, stage: StageSpec, step: int, check: _Check) -> None:
        path = self.out / "last_good.pdb"
        where = f"stage {index + 1} {stage.name!r} ({stage.type}), step {step} of the stage"
        if self.last_good is not None:
            good_step, positions, box = self.last_good
            topology = self.built.topology
            if box is not None:
                topology.setPeriodicBoxVectors(box)
            _write_pdb(path, topology, positions)
            saved = f"last good structure (global MD step {good_step}) written to {path}"
        else:
            _write_pdb(path, self.built.topology, self.built.positions * unit.nanometer)
            saved = f"start structure written to {path}"
        raise SimulationError(f"simulation blew up at {where}: {check.reason}; {saved}")

    def _write_row(self, sim: app.Simulation, stage: StageSpec, global_step: int, check: _Check) -> None:
        state = sim.context.getState(getEnergy=True)
        kinetic = state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        temperature = 2 * kinetic * unit.kilojoule_per_mole / (self.dof * unit.MOLAR_GAS_CONSTANT_R)
        volume = density = float("nan")
        if self.built.periodic:
            volume = state.getPeriodicBoxVolume().value_in_unit(unit.nanometer ** 3)
            density = (self.total_mass * unit.dalton / (volume * unit.nanometer ** 3)
                       / unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.gram / unit.milliliter)
        row = [stage.name, global_step, f"{state.getTime().value_in_unit(unit.picosecond):.6f}",
               f"{check.potential:.6f}", f"{kinetic:.6f}", f"{check.potential + kinetic:.6f}",
               f"{temperature.value_in_unit(unit.kelvin):.4f}", f"{volume:.6f}", f"{density:.6f}",
               f"{check.max_force:.4f}", f"{self._ns_per_day(global_step):.4f}"]
        with open(self.out / "state_data.csv", "a", newline="") as fh:
            csv.writer(fh).writerow(row)

    def _open_chunk(self, stage: StageSpec, step: int, global_step: int) -> dict[str, Any]:
        fmt = self.protocol.reporters.trajectory_format
        name = f"{stage.name}_{step:010d}.{fmt}"
        path = self.out / "chunks" / name
        dt = self.protocol.integrator.timestep_fs * unit.femtosecond
        interval = self.protocol.reporters.trajectory_interval
        if fmt == "dcd":
            fh = open(path, "wb")
            file = app.DCDFile(fh, self.built.topology, dt, step, interval)
        else:
            file = app.XTCFile(str(path), self.built.topology, dt, step, interval)
            fh = _NullCloser()
        return {"name": name, "fh": fh, "file": file, "first_step": step, "first_global_step": global_step,
                "n_frames": 0}

    def _write_frame(self, writer: dict[str, Any], sim: app.Simulation) -> None:
        state = sim.context.getState(getPositions=True, enforcePeriodicBox=False)
        box = state.getPeriodicBoxVectors() if self.built.periodic else None
        writer["file"].writeModel(state.getPositions(), periodicBoxVectors=box)
        writer["n_frames"] += 1

    def _save_checkpoint(self, sim: app.Simulation) -> None:
        g = self.progress["global_step"]
        chk = self.out / "checkpoints" / f"step_{g:010d}.chk"
        xml = self.out / "checkpoints" / f"step_{g:010d}.xml"
        with atomic_binary_file(chk) as fh:
            sim.saveCheckpoint(fh)
        state = sim.context.getState(getPositions=True, getVelocities=True, getParameters=True,
                                     getIntegratorParameters=True)
        atomic_write_text(xml, openmm.XmlSerializer.serialize(state))
        old = [self.progress.get("checkpoint"), self.progress.get("state_xml")]
        self.progress.update(checkpoint=chk.name, state_xml=xml.name)
        self._commit()
        for name in old:
            if name and name not in (chk.name, xml.name):
                (self.out / "checkpoints" / name).unlink(missing_ok=True)

    def _save_stage_end(self, state: openmm.State) -> None:
        path = self.out / "checkpoints" / f"stage_{self.progress['stage_index']:02d}_start.xml"
        atomic_write_text(path, openmm.XmlSerializer.serialize(state))
        self.progress["stage_start_xml"] = path.name
        self._commit()

    def _load_checkpoint(self, sim: app.Simulation) -> None:
        chk = self.out / "checkpoints" / self.progress["checkpoint"]
        try:
            sim.loadCheckpoint(str(chk))
        except Exception as exc:  # e.g. another platform: fall back to the portable state
            logger.warning("cannot load binary checkpoint %s (%s); loading the portable state "
                           "(random number stream restarts)", chk.name, exc)
            sim.loadState(str(self.out / "checkpoints" / self.progress["state_xml"]))

    def _finish(self, state: openmm.State | None, wall: float, steps_done: int) -> dict[str, Any]:
        p = self.protocol
        if state is None and self.progress.get("stage_start_xml"):
            state = openmm.XmlSerializer.deserialize(
                (self.out / "checkpoints" / self.progress["stage_start_xml"]).read_text())
        if state is not None:
            topology = self.built.topology
            if self.built.periodic:
                topology.setPeriodicBoxVectors(state.getPeriodicBoxVectors())
            _write_pdb(self.out / "final.pdb", topology, state.getPositions())
        traj = stitch_trajectory(self.out, p.reporters.trajectory_format, self.progress["chunks"])
        frame_dt_ps = p.reporters.trajectory_interval * p.integrator.timestep_fs / 1000.0
        simulated_ps = steps_done * p.integrator.timestep_fs / 1000.0
        info = {
            "protocol": p.name,
            "platform": self.platform.getName(),
            "ml_force": _describe_ml_force(self.built),
            "n_atoms": self.built.topology.getNumAtoms(),
            "n_ml_atoms": len(self.built.ml_atoms),
            "ml_atoms": self.built.ml_atoms,
            "md_steps_total": self.progress["global_step"],
            "md_steps_this_run": steps_done,
            "wall_s_this_run": wall,
            "wall_s_per_ps": wall / simulated_ps if simulated_ps > 0 else None,
            "md_wall_s_this_run": self._md_wall,
            "md_wall_s_per_ps": self._md_wall / simulated_ps if simulated_ps > 0 else None,
            "ns_per_day": simulated_ps * 1e-3 / wall * 86400 if wall > 0 and simulated_ps > 0 else None,
            "trajectory": traj.name if traj else None,
            "trajectory_frames": sum(c["n_frames"] for c in self.progress["chunks"]),
            "frame_interval_ps": frame_dt_ps,
            # global MD step of every frame, in trajectory order
            "frame_steps": [c["first_global_step"] + k * p.reporters.trajectory_interval
                            for c in self.progress["chunks"] for k in range(c["n_frames"])],
            "timestep_fs": p.integrator.timestep_fs,
        }
        atomic_write_text(self.out / "run.json", json.dumps(info, indent=1))
        self.progress["done"] = True
        self._commit()
        logger.info("done: %d MD steps in %.1f s (%s); trajectory %s (%d frames)", steps_done, wall,
                    f"{info['ns_per_day']:.3f} ns/day" if info["ns_per_day"] else "no MD",
                    traj, info["trajectory_frames"])
        return info


class _NullCloser:
    def close(self) -> None:  # XTCFile writes and closes per frame
        pass


def _carry_state(sim: app.Simulation, state: openmm.State) -> None:
    """Positions, velocities, box and time of ``state`` into a context of another System."""
    sim.context.setPeriodicBoxVectors(*state.getPeriodicBoxVectors())
    sim.context.setPositions(state.getPositions())
    sim.context.setVelocities(state.getVelocities())
    sim.context.setTime(state.getTime())


def _describe_ml_force(built: BuiltSystem | None) -> str:
    if built is None or built.ml_force is None:
        return "none (pure MM)"
    force = built.ml_force
    parts = [type(force).__name__]
    for attr in ("backend", "transip_backend"):
        if hasattr(force, attr):
            parts.append(f"backend={getattr(force, attr)}")
    return " ".join(parts) + f" on {len(built.ml_atoms)} atoms"


@contextlib.contextmanager
def quiet_stdout():
    """Silence C-level writes to stdout (file descriptor 1) inside the block."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def stitch_trajectory(out: Path, fmt: str, chunks: list[dict[str, Any]]) -> Path | None:
    """Concatenate the committed chunks into ``trajectory.<fmt>`` (None without frames)."""
    files = [out / "chunks" / c["file"] for c in chunks if c["n_frames"] > 0]
    if not files:
        return None
    import mdtraj

    with quiet_stdout():  # mdtraj's DCD plugin prints to the C-level stdout
        traj = mdtraj.load([str(f) for f in files], top=str(out / "topology.pdb"))
    expected = sum(c["n_frames"] for c in chunks)
    if traj.n_frames != expected:
        raise SimulationError(f"trajectory chunks hold {traj.n_frames} frames, progress records {expected}")
    path = out / f"trajectory.{fmt}"
    with _atomic_path(path) as tmp:
        traj.save(str(tmp))
    return path


def run_protocol(protocol: Protocol, output: Path, resume: bool = False, platform: str | None = None,
                 show_progress: bool = True) -> dict[str, Any]:
    """Run ``protocol`` into ``output``; returns the run summary (also in ``run.json``)."""
    return Runner(protocol, output, resume=resume, platform=platform, show_progress=show_progress).run()
