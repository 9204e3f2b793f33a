"""Samplers: configurations around a starting structure.

A sampler turns one :class:`Structure` into frames, ``sample(structure, n_frames, rng,
teacher) -> Iterator[Frame]``. The teacher (a :class:`~transip_openmm.data.labellers.XTBLabeller`)
drives the dynamics, relaxations and Hessians; when it is also the labeller, MD frames carry
the label it computed at that very geometry and are not labelled twice. A teacher that fails
(an SCF that does not converge) raises :class:`LabelFailure`: the task keeps the frames made
so far and the failure is counted.

* ``md``: Langevin MD (ASE) at a temperature drawn from ``temperatures`` (K), after a short
  relaxation and equilibration; one frame every ``stride`` steps.
* ``displacements``: Gaussian random displacements (``mode: random``, σ from ``sigmas`` Å) or
  normal-mode sampling (``mode: normal_modes``: harmonic Boltzmann amplitudes at a
  temperature drawn from ``temperatures``, from a finite-difference Hessian of the relaxed
  structure, modes below 100 cm⁻¹ treated as 100 cm⁻¹).
* ``bond_scan``: one covalent bond stretched or compressed from ``scale_min`` to
  ``scale_max`` × its length (out to dissociation), the smaller side moved rigidly.
* ``close_contact``: two molecules (or two atoms three or more bonds apart) pushed to
  ``factor_min``…``factor_max`` × the sum of their covalent radii: the repulsive wall.
* ``none``: the structure itself (relabelling seeds or frames of a trajectory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, covalent_radii

from transip_openmm.data.errors import DataGenError, LabelFailure
from transip_openmm.data.labellers import Label, XTBLabeller
from transip_openmm.data.structures import Structure, bond_graph, fragment_of, molecules
from transip_openmm.units import BOLTZMANN_EV_PER_K

logger = logging.getLogger(__name__)

#: ω² (eV Å⁻² amu⁻¹) of a 100 cm⁻¹ mode: the floor of normal-mode sampling
OMEGA2_FLOOR = 0.0368


@dataclass
class Frame:
    """A configuration to label; ``method`` says how it was made; ``label`` if the teacher labelled it."""

    atoms: Atoms
    method: str
    label: Optional[Label] = None


def _teacher_failure(exc: Exception, what: str) -> LabelFailure:
    return LabelFailure(f"teacher failed during {what}: {exc}")


def relax(atoms: Atoms, structure: Structure, teacher: XTBLabeller, steps: int, fmax: float = 0.05) -> Atoms:
    """FIRE relaxation with the teacher for at most ``steps`` steps (a copy)."""
    from ase.calculators.calculator import CalculatorError
    from ase.optimize import FIRE

    work = atoms.copy()
    if steps <= 0:
        return work
    work.calc = teacher.calculator(structure.charge, structure.multiplicity)
    try:
        FIRE(work, logfile=None).run(fmax=fmax, steps=steps)
    except CalculatorError as exc:
        raise _teacher_failure(exc, "relaxation") from exc
    work.calc = None
    return work


@dataclass
class MDSampler:
    temperatures: List[float] = field(default_factory=lambda: [300.0, 500.0, 800.0, 1000.0])
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.02
    relax_steps: int = 30
    equilibration_steps: int = 40
    stride: int = 10

    def sample(self, structure: Structure, n_frames: int, rng: np.random.Generator, teacher: XTBLabeller,
               keep_labels: bool = False) -> Iterator[Frame]:
        import ase.units
        from ase.calculators.calculator import CalculatorError
        from ase.md.langevin import Langevin
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

        temperature = float(self.temperatures[int(rng.integers(len(self.temperatures)))])
        atoms = relax(structure.atoms, structure, teacher, self.relax_steps)
        atoms.calc = teacher.calculator(structure.charge, structure.multiplicity)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        Stationary(atoms)
        dyn = Langevin(atoms, timestep=self.timestep_fs * ase.units.fs, temperature_K=temperature,
                       friction=self.friction_per_fs / ase.units.fs, fixcm=False, rng=rng)
        method = f"md_{temperature:.0f}K"
        try:
            dyn.run(self.equilibration_steps)
            for _ in range(n_frames):
                dyn.run(self.stride)
                label = None
                if keep_labels:  # the last step computed energy and forces at exactly these positions
                    label = Label(float(atoms.get_potential_energy()), np.array(atoms.get_forces()))
                frame = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
                yield Frame(frame, method, label)
        except CalculatorError as exc:
            raise _teacher_failure(exc, method) from exc


@dataclass
class DisplacementSampler:
    mode: str = "random"
    sigmas: List[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2])
    temperatures: List[float] = field(default_factory=lambda: [300.0, 600.0, 1000.0])
    relax_steps: int = 100
    hessian_step: float = 0.005

    def __post_init__(self) -> None:
        if self.mode not in ("random", "normal_modes"):
            raise DataGenError(f"sampler.mode {self.mode!r}: use random or normal_modes")

    def sample(self, structure: Structure, n_frames: int, rng: np.random.Generator, teacher: XTBLabeller,
               keep_labels: bool = False) -> Iterator[Frame]:
        if self.mode == "random":
            base = structure.atoms
            for _ in range(n_frames):
                sigma = float(self.sigmas[int(rng.integers(len(self.sigmas)))])
                pos = base.positions + rng.normal(0.0, sigma, size=base.positions.shape)
                yield Frame(Atoms(numbers=base.numbers, positions=pos), f"random_{sigma:.2f}A")
            return
        base = relax(structure.atoms, structure, teacher, self.relax_steps)
        omega2, modes = self.normal_modes(base, structure, teacher)
        masses = atomic_masses[base.numbers]
        inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
        for _ in range(n_frames):
            temperature = float(self.temperatures[int(rng.integers(len(self.temperatures)))])
            kt = BOLTZMANN_EV_PER_K * temperature
            q = rng.normal(0.0, 1.0, size=len(omega2)) * np.sqrt(kt / omega2)  # Å amu^½
            dx = inv_sqrt_m * (modes @ q)
            pos = base.positions + dx.reshape(-1, 3)
            yield Frame(Atoms(numbers=base.numbers, positions=pos), f"normal_modes_{temperature:.0f}K")

    def normal_modes(self, atoms: Atoms, structure: Structure, teacher: XTBLabeller):
        """Vibrational ω² (m,) eV Å⁻² amu⁻¹ (floored) and mass-weighted modes (3n, m), rigid motions removed."""
        n = len(atoms)
        hessian = np.zeros((3 * n, 3 * n))
        for k in range(3 * n):
            forces = []
            for sign in (1.0, -1.0):
                disp = atoms.copy()
                disp.positions.reshape(-1)[k] += sign * self.hessian_step
                forces.append(teacher.label(disp, structure.charge, structure.multiplicity).forces.reshape(-1))
            hessian[:, k] = -(forces[0] - forces[1]) / (2 * self.hessian_step)
        hessian = 0.5 * (hessian + hessian.T)
        inv_sqrt_m = np.repeat(1.0 / np.sqrt(atomic_masses[atoms.numbers]), 3)
        values, vectors = np.linalg.eigh(hessian * np.outer(inv_sqrt_m, inv_sqrt_m))
        n_rigid = min(3 * n, 5 if n == 2 else 6) if n > 1 else 3
        keep = np.argsort(np.abs(values))[n_rigid:]
        return np.maximum(np.abs(values[keep]), OMEGA2_FLOOR), vectors[:, keep]


@dataclass
class BondScanSampler:
    scale_min: float = 0.75
    scale_max: float = 2.5

    def sample(self, structure: Structure, n_frames: int, rng: np.random.Generator, teacher: XTBLabeller,
               keep_labels: bool = False) -> Iterator[Frame]:
        base = structure.atoms
        graph = bond_graph(base)
        bonds = [(i, j) for i in range(len(base)) for j in graph[i] if i < j]
        if not bonds:
            raise LabelFailure(f"{structure.family}: no covalent bond to scan")
        i, j = bonds[int(rng.integers(len(bonds)))]
        side_j = fragment_of(graph, j, blocked=i)
        if i in side_j:  # a ring bond: move atom j alone
            moving = [j]
        else:  # move the smaller side
            side_i = fragment_of(graph, i, blocked=j)
            moving, (i, j) = (side_j, (i, j)) if len(side_j) <= len(side_i) else (side_i, (j, i))
        axis = base.positions[j] - base.positions[i]
        length = float(np.linalg.norm(axis))
        for scale in np.linspace(self.scale_min, self.scale_max, n_frames):
            pos = base.positions.copy()
            pos[moving] += (scale - 1.0) * axis
            yield Frame(Atoms(numbers=base.numbers, positions=pos), f"bond_scan_{scale * length:.2f}A")


@dataclass
class CloseContactSampler:
    factor_min: float = 0.65
    factor_max: float = 1.0

    def sample(self, structure: Structure, n_frames: int, rng: np.random.Generator, teacher: XTBLabeller,
               keep_labels: bool = False) -> Iterator[Frame]:
        base = structure.atoms
        parts = molecules(base)
        radii = covalent_radii[base.numbers]
        graph = bond_graph(base)
        for _ in range(n_frames):
            factor = float(rng.uniform(self.factor_min, self.factor_max))
            pos = base.positions.copy()
            if len(parts) >= 2:
                a, b = (parts[k] for k in rng.choice(len(parts), size=2, replace=False))
                direction = pos[a].mean(axis=0) - pos[b].mean(axis=0)
                direction /= np.linalg.norm(direction)
                for _ in range(20):  # move b towards a until its closest pair sits at the target distance
                    d = np.linalg.norm(pos[a][:, None] - pos[b][None], axis=-1)
                    ia, ib = np.unravel_index(np.argmin(d), d.shape)
                    gap = d[ia, ib] - factor * (radii[a[ia]] + radii[b[ib]])
                    if abs(gap) < 0.01:
                        break
                    pos[b] += gap * direction
            else:
                pairs = _nonbonded_pairs(graph)
                if not pairs:
                    raise LabelFailure(f"{structure.family}: no atom pair three bonds apart for a close contact")
                i, j = pairs[int(rng.integers(len(pairs)))]
                vec = pos[j] - pos[i]
                pos[j] = pos[i] + vec / np.linalg.norm(vec) * factor * (radii[i] + radii[j])
            yield Frame(Atoms(numbers=base.numbers, positions=pos), f"close_contact_{factor:.2f}")


def _nonbonded_pairs(graph: List[List[int]]) -> List[tuple]:
    """Atom pairs at least three bonds apart."""
    pairs = []
    for i in range(len(graph)):
        near = {i, *graph[i]}
        for j in graph[i]:
            near.update(graph[j])
        pairs.extend((i, j) for j in range(i + 1, len(graph)) if j not in near)
    return pairs


@dataclass
class AsIsSampler:
    def sample(self, structure: Structure, n_frames: int, rng: np.random.Generator, teacher: XTBLabeller,
               keep_labels: bool = False) -> Iterator[Frame]:
        yield Frame(structure.atoms.copy(), "as_is")


SAMPLERS = {"md": MDSampler, "displacements": DisplacementSampler, "bond_scan": BondScanSampler,
            "close_contact": CloseContactSampler, "none": AsIsSampler}


def make_sampler(spec: Mapping[str, Any], where: str):
    """Sampler from a config mapping ``{kind: ..., <its settings>}``."""
    options: Dict[str, Any] = dict(spec)
    kind = options.pop("kind", None)
    if kind not in SAMPLERS:
        raise DataGenError(f"{where}.kind {kind!r}: use one of {', '.join(SAMPLERS)}")
    try:
        return SAMPLERS[kind](**options)
    except TypeError as exc:
        raise DataGenError(f"{where}: unknown settings for sampler {kind!r} ({exc})") from exc
