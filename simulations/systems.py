"""Build the OpenMM System a protocol describes: structure, solvent, ML region, forces.

* PDB/mmCIF files are read with ``openmm.app``; XYZ/SDF small molecules with ASE (one
  residue per bonded fragment, bonds from covalent radii).
* Solvent and ions are added with OpenMM's ``Modeller``.
* The ML region is an mdtraj selection, optionally grown by whole residues within
  ``ml_shell_nm`` of it (at the start structure).
* ML/MM uses mechanical embedding: the MM system of the whole topology is built with the
  force field, every MM term acting only inside the ML region is removed
  (:func:`remove_ml_interactions`) and the ML force is added for the ML atoms
  (:func:`create_ml_force`, the one place the ML force is made). ML-MM interactions stay MM.

Internal units are OpenMM's: nm, kJ/mol, ps, amu.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit
from transip_openmm.simulations.protocol import (
    ASE_STRUCTURE_SUFFIXES,
    ModelSpec,
    Protocol,
    ProtocolError,
    Solvation,
)

from transip_openmm.units import ANGSTROM_TO_NM

logger = logging.getLogger(__name__)

#: Terms of these forces are removed inside the ML region; any other force with particles
#: in the ML region is refused rather than silently double counted.
_WATER_RESIDUES = {"HOH", "WAT", "TIP3", "SOL"}


@dataclass
class BuiltSystem:
    """A ready System. ``positions``: (N, 3) nm; ``ml_atoms``: indices of the ML region."""

    topology: app.Topology
    positions: np.ndarray
    system: openmm.System
    ml_atoms: list[int]
    periodic: bool
    ml_force: openmm.Force | None = None


# --------------------------------------------------------------------------- structures
def load_structure(path: Path) -> tuple[app.Topology, np.ndarray]:
    """Topology and (N, 3) positions in nm of a PDB/mmCIF/XYZ/SDF file."""
    path = Path(path)
    topology, positions = _read_structure(path)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        raise ProtocolError(f"system.structure: {path}: atom(s) {bad[:10].tolist()} have non-finite (NaN or inf) "
                            "coordinates")
    return topology, positions


def _read_structure(path: Path) -> tuple[app.Topology, np.ndarray]:
    suffix = path.suffix.lower()
    try:
        if suffix in ASE_STRUCTURE_SUFFIXES:
            import ase.io

            atoms = ase.io.read(str(path))
            return topology_from_ase(atoms), np.asarray(atoms.get_positions()) * ANGSTROM_TO_NM
        reader = app.PDBFile if suffix == ".pdb" else app.PDBxFile
        structure = reader(str(path))
    except Exception as exc:  # openmm and ase raise many types for a malformed file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtocolError(f"system.structure: cannot read {path} ({detail})") from exc
    positions = np.asarray(structure.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return structure.topology, positions


def topology_from_ase(atoms) -> app.Topology:
    """OpenMM Topology for ASE atoms: one residue per bonded fragment.

    Bonds come from ASE's covalent-radius neighbour list (ions stay single-atom residues,
    named after their element; water is ``HOH`` so mdtraj recognises it; other molecules
    ``MOL``). A cell with non-zero volume becomes the periodic box.
    """
    from ase.neighborlist import natural_cutoffs, neighbor_list

    numbers = atoms.get_atomic_numbers()
    ions = {3, 11, 19, 37, 55, 9, 17, 35, 53, 12, 20}
    cutoffs = [0.0 if z in ions else c for z, c in zip(numbers, natural_cutoffs(atoms, mult=1.2))]
    i_idx, j_idx = neighbor_list("ij", atoms, cutoffs, self_interaction=False)
    bonds = sorted({(int(min(i, j)), int(max(i, j))) for i, j in zip(i_idx, j_idx)})
    parent = list(range(len(atoms)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in bonds:
        parent[find(i)] = find(j)
    groups: dict = {}
    for i in range(len(atoms)):
        groups.setdefault(find(i), []).append(i)
    top = app.Topology()
    chain = top.addChain()
    omm_atoms = [None] * len(atoms)
    symbols = atoms.get_chemical_symbols()
    for members in sorted(groups.values(), key=min):
        formula = sorted(symbols[i] for i in members)
        if len(members) == 1:
            name = symbols[members[0]].upper()
        elif formula == ["H", "H", "O"]:
            name = "HOH"
        else:
            name = "MOL"
        res = top.addResidue(name, chain)
        counts: dict = {}
        for i in members:
            counts[symbols[i]] = counts.get(symbols[i], 0) + 1
            atom_name = symbols[i] if len(members) == 1 else f"{symbols[i]}{counts[symbols[i]]}"
            omm_atoms[i] = top.addAtom(atom_name, app.Element.getByAtomicNumber(int(numbers[i])), res)
    for i, j in bonds:
        top.addBond(omm_atoms[i], omm_atoms[j])
    if atoms.cell.volume > 1e-6:
        top.setPeriodicBoxVectors(np.asarray(atoms.cell[:]) * ANGSTROM_TO_NM * unit.nanometer)
    if [a.index for a in top.atoms()] != [omm_atoms[i].index for i in range(len(atoms))]:
        raise ProtocolError("system.structure: fragments are not contiguous in the file; order the "
                            "atoms molecule by molecule")
    return top


def solvate(topology: app.Topology, positions: np.ndarray, spec: Solvation,
            forcefield: app.ForceField) -> tuple[app.Topology, np.ndarray]:
    """Add water and ions with OpenMM's Modeller. Positions in nm."""
    modeller = app.Modeller(topology, positions * unit.nanometer)
    kwargs = dict(
        model=spec.water_model,
        ionicStrength=spec.ionic_strength_molar * unit.molar,
        positiveIon=spec.positive_ion,
        negativeIon=spec.negative_ion,
        neutralize=spec.neutralize,
    )
    if spec.padding_nm is not None:
        kwargs["padding"] = spec.padding_nm * unit.nanometer
    else:
        kwargs["boxSize"] = openmm.Vec3(*spec.box_nm) * unit.nanometer
    n_before = topology.getNumAtoms()
    modeller.addSolvent(forcefield, **kwargs)
    new_pos = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer))
    logger.info("solvated: %d -> %d atoms, box %s nm", n_before, modeller.topology.getNumAtoms(),
                np.round(np.diag(modeller.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer)), 3))
    return modeller.topology, new_pos


# --------------------------------------------------------------------------- ML region
def select_ml_atoms(topology: app.Topology, positions: np.ndarray, selection: str,
                    shell_nm: float = 0.0) -> list[int]:
    """Atom indices of the mdtraj ``selection``, grown by whole residues within ``shell_nm``.

    Distances for the shell use the minimum image when the topology is periodic.
    """
    import mdtraj

    md_top = mdtraj.Topology.from_openmm(topology)
    try:
        core = md_top.select(selection)
    except Exception as exc:
        raise ProtocolError(f"model.ml_region: {selection!r} is not a valid mdtraj selection ({exc})") from exc
    if len(core) == 0:
        raise ProtocolError(f"model.ml_region: {selection!r} selects no atoms")
    chosen = set(int(i) for i in core)
    if shell_nm > 0:
        box = topology.getPeriodicBoxVectors()
        traj = mdtraj.Trajectory(positions[None], md_top)
        if box is not None:
            vecs = np.asarray(box.value_in_unit(unit.nanometer))
            traj.unitcell_vectors = vecs[None]
        near = mdtraj.compute_neighbors(traj, shell_nm, np.array(sorted(chosen)))[0]
        for residue in {md_top.atom(int(i)).residue.index for i in near}:
            chosen.update(a.index for a in md_top.residue(residue).atoms)
    return sorted(chosen)


# --------------------------------------------------------------------------- ML/MM
def remove_ml_interactions(system: openmm.System, ml_atoms: Sequence[int]) -> None:
    """Mechanical embedding: drop every MM interaction acting only between ML atoms.

    Bonded terms with all atoms in the ML region get zero force constants (CMAP terms an
    all-zero map); nonbonded ML-ML pairs become zero exceptions (NonbondedForce, which also
    removes their reciprocal-space part under PME) or exclusions (CustomNonbondedForce);
    constraints between ML atoms are removed. ML-MM interactions are kept. Every force is
    changed in place, so the force order is kept. For an ML region of whole molecules this
    equals openmm-ml's mechanical embedding (``createMixedSystem``; tested for amber14 and
    amber19); a region that cuts bonds gets no link atoms here. Raises for a force type it
    does not know how to split.
    """
    ml = set(int(i) for i in ml_atoms)

    def inside(*atoms: int) -> bool:
        return all(a in ml for a in atoms)

    for force in system.getForces():  # every force is changed in place: the order stays
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(k)
                if inside(i, j):
                    force.setBondParameters(k, i, j, r0, 0.0)
        elif isinstance(force, openmm.HarmonicAngleForce):
            for k in range(force.getNumAngles()):
                i, j, m, theta0, _ = force.getAngleParameters(k)
                if inside(i, j, m):
                    force.setAngleParameters(k, i, j, m, theta0, 0.0)
        elif isinstance(force, openmm.PeriodicTorsionForce):
            for k in range(force.getNumTorsions()):
                i, j, m, n, period, phase, _ = force.getTorsionParameters(k)
                if inside(i, j, m, n):
                    force.setTorsionParameters(k, i, j, m, n, period, phase, 0.0)
        elif isinstance(force, openmm.RBTorsionForce):
            for k in range(force.getNumTorsions()):
                i, j, m, n, *_ = force.getTorsionParameters(k)
                if inside(i, j, m, n):
                    force.setTorsionParameters(k, i, j, m, n, 0, 0, 0, 0, 0, 0)
        elif isinstance(force, openmm.CMAPTorsionForce):
            _zero_cmap_terms(force, ml)
        elif isinstance(force, openmm.NonbondedForce):
            for i, j in combinations(sorted(ml), 2):
                force.addException(i, j, 0.0, 1.0, 0.0, True)
        elif isinstance(force, openmm.CustomNonbondedForce):
            existing = {tuple(sorted(force.getExclusionParticles(k))) for k in range(force.getNumExclusions())}
            for pair in combinations(sorted(ml), 2):
                if pair not in existing:
                    force.addExclusion(*pair)
        elif isinstance(force, (openmm.CMMotionRemover, openmm.MonteCarloBarostat)):
            continue
        else:
            raise ProtocolError(f"model.forcefield: cannot split force {type(force).__name__} "
                                "into ML and MM parts; use a force field without it")
    for k in reversed(range(system.getNumConstraints())):
        i, j, _ = system.getConstraintParameters(k)
        if inside(i, j):
            system.removeConstraint(k)


def _zero_cmap_terms(force: openmm.CMAPTorsionForce, ml: set) -> None:
    """Point every CMAP term with all eight atoms in ``ml`` at an added all-zero map.

    In place, so the System's force order and indices do not change (removing and re-adding
    the force while iterating over the forces would skip the force after it).
    """
    inside = [k for k in range(force.getNumTorsions())
              if all(a in ml for a in force.getTorsionParameters(k)[1:])]
    if not inside:
        return
    zero_map = force.addMap(2, [0.0] * 4)
    for k in inside:
        force.setTorsionParameters(k, zero_map, *force.getTorsionParameters(k)[1:])


def create_ml_force(model: ModelSpec, topology: app.Topology, atoms: list[int] | None,
                    charge: int, multiplicity: int, periodic: bool,
                    positions: np.ndarray | None = None) -> openmm.Force:
    """The ML force for ``atoms`` (None = all atoms). The single place the ML force is built.

    ``positions`` (N, 3) nm: the start structure, against which a periodic ML region is checked
    to fit the box when the model sees it as one cluster (``TransIPForce``).
    """
    from transip_openmm.force import TransIPForce

    return TransIPForce(model.path, topology, charge=charge, multiplicity=multiplicity, atoms=atoms,
                        backend=model.backend, periodic=periodic, positions=positions)


def warn_about_cut_bonds(topology: app.Topology, ml_atoms: Sequence[int]) -> None:
    """``logging.warning`` (once) when the ML region cuts covalent bonds: mechanical embedding
    here adds no link atoms, so the model sees the cut ends as radicals."""
    ml = set(int(i) for i in ml_atoms)
    cut = [(a, b) for a, b in topology.bonds() if (a.index in ml) != (b.index in ml)]
    if cut:
        a, b = cut[0]
        logger.warning(
            "the ML region cuts %d covalent bond(s) (e.g. %s%s:%s-%s%s:%s); no link atoms are added, so the "
            "model sees dangling bonds: select whole residues/molecules (model.ml_shell_nm grows by whole "
            "residues), or use openmm-ml's createMixedSystem, which caps cut bonds with link atoms",
            len(cut), a.residue.name, a.residue.id, a.name, b.residue.name, b.residue.id, b.name)


def ml_region_mm_charge(system: openmm.System, ml_atoms: Sequence[int]) -> float | None:
    """Sum of the MM partial charges (e) of the ML atoms, or None without a NonbondedForce."""
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            return float(sum(force.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                             for i in ml_atoms))
    return None


def _nonbonded_method(model: ModelSpec, periodic: bool):
    name = model.nonbonded_method
    if name == "auto":
        name = "PME" if periodic else "NoCutoff"
    return getattr(app, name)


def _repartition_hydrogen_mass(system: openmm.System, topology: app.Topology, mass_amu: float) -> None:
    """Move mass from heavy atoms to bonded hydrogens so each H weighs ``mass_amu``."""
    for a, b in topology.bonds():
        for h, heavy in ((a, b), (b, a)):
            if h.element is app.element.hydrogen and heavy.element not in (None, app.element.hydrogen):
                old = system.getParticleMass(h.index).value_in_unit(unit.dalton)
                delta = mass_amu - old
                system.setParticleMass(h.index, mass_amu)
                heavy_mass = system.getParticleMass(heavy.index).value_in_unit(unit.dalton)
                system.setParticleMass(heavy.index, heavy_mass - delta)


def build_system(protocol: Protocol, add_ml_force: bool = True) -> BuiltSystem:
    """Structure → (solvent) → System with the ML region's MM terms replaced by the ML force."""
    spec, model, integ = protocol.system, protocol.model, protocol.integrator
    topology, positions = load_structure(spec.structure)
    forcefield = app.ForceField(*model.forcefield) if model.forcefield else None
    if spec.solvation is not None:
        topology, positions = solvate(topology, positions, spec.solvation, forcefield)
    elif spec.box_nm is not None:
        topology.setPeriodicBoxVectors(np.diag(spec.box_nm) * unit.nanometer)
    periodic = topology.getPeriodicBoxVectors() is not None
    n_atoms = topology.getNumAtoms()
    ml_atoms = (select_ml_atoms(topology, positions, model.ml_region, model.ml_shell_nm)
                if model.uses_ml else [])

    all_ml = len(ml_atoms) == n_atoms
    if all_ml and forcefield is not None:
        logger.info("every atom is in the ML region: the force field only builds the solvent, no MM terms")
    if forcefield is not None and not all_ml:
        if periodic:
            box = np.asarray(topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
            if model.cutoff_nm > 0.5 * min(np.diag(box)):
                raise ProtocolError(
                    f"model.cutoff_nm: {model.cutoff_nm} nm is more than half the smallest box length "
                    f"({min(np.diag(box)):.3f} nm); expected a smaller cutoff or a larger box/padding")
        try:
            system = forcefield.createSystem(
                topology,
                nonbondedMethod=_nonbonded_method(model, periodic),
                nonbondedCutoff=model.cutoff_nm * unit.nanometer,
                constraints=None if integ.constraints == "none" else getattr(app, integ.constraints),
                rigidWater=integ.rigid_water,
                hydrogenMass=None if integ.hydrogen_mass_amu is None else integ.hydrogen_mass_amu * unit.amu,
            )
        except ValueError as exc:
            raise ProtocolError(f"model.forcefield: {exc}") from exc
        if ml_atoms:
            mm_charge = ml_region_mm_charge(system, ml_atoms)
            if mm_charge is not None and round(mm_charge) != spec.charge:
                raise ProtocolError(
                    f"system.charge: the ML region ({len(ml_atoms)} atoms) carries a total MM charge "
                    f"of {mm_charge:+.3f} e but system.charge is {spec.charge}; expected {round(mm_charge)}"
                )
            remove_ml_interactions(system, ml_atoms)
            warn_about_cut_bonds(topology, ml_atoms)
    else:
        system = openmm.System()
        for atom in topology.atoms():
            system.addParticle(atom.element.mass)
        system.addForce(openmm.CMMotionRemover())
        if periodic:
            system.setDefaultPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
        if integ.hydrogen_mass_amu is not None:
            _repartition_hydrogen_mass(system, topology, integ.hydrogen_mass_amu)
    _check_electron_parity(topology, ml_atoms, spec.charge, spec.multiplicity)

    ml_force = None
    if ml_atoms and add_ml_force:
        atoms_arg = None if len(ml_atoms) == n_atoms else ml_atoms
        ml_force = create_ml_force(model, topology, atoms_arg, spec.charge, spec.multiplicity, periodic,
                                   positions if periodic else None)
        system.addForce(ml_force)
    logger.info("system: %d atoms (%d ML, %d MM), periodic=%s, %d constraints", n_atoms,
                len(ml_atoms), n_atoms - len(ml_atoms), periodic, system.getNumConstraints())
    return BuiltSystem(topology, positions, system, ml_atoms, periodic, ml_force)


def _check_electron_parity(topology: app.Topology, ml_atoms: Sequence[int], charge: int,
                           multiplicity: int) -> None:
    """Multiplicity must be odd for an even electron count and even for an odd one."""
    if not ml_atoms:
        return
    atoms = list(topology.atoms())
    electrons = sum(atoms[i].element.atomic_number for i in ml_atoms) - charge
    if electrons < 0 or (electrons + multiplicity) % 2 == 0:
        raise ProtocolError(
            f"system.multiplicity: {multiplicity} is impossible for the ML region's {electrons} electrons "
            f"(charge {charge}); expected an {'odd' if electrons % 2 == 0 else 'even'} multiplicity"
        )
