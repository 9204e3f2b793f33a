"""What an exported model needs to know about the system it runs on, and its checks.

An exported model file either has its system *baked in* (the ML atoms' atomic numbers, their
indices in the full system, the particle count, charge and multiplicity) or is *generic*.
A generic file is specialised at run time by setting those buffers on the loaded
ScriptModule (:func:`specialise_module`): no re-scripting, the weights are untouched.

Everything here raises :class:`SystemSpecError` (a ``ValueError``) with a message that says
what is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from transip_openmm.model import MAX_ABS_CHARGE, MAX_MULTIPLICITY
from transip_openmm.errors import TransIPError

AtomSelection = Union[None, str, Sequence[int]]


class SystemSpecError(TransIPError, ValueError):
    """The system (topology, atom selection, charge, multiplicity) does not fit the model."""


@dataclass
class SystemSpec:
    """The ML region of a system: what gets baked into an exported model.

    atomic_numbers: (n_ml,) elements of the ML atoms; ml_indices: (n_ml,) their indices in the
    full system of ``n_particles`` particles; charge (e) and spin multiplicity (2S+1) of the
    ML region.
    """

    atomic_numbers: List[int]
    ml_indices: List[int]
    n_particles: int
    charge: int = 0
    multiplicity: int = 1
    selection: Optional[str] = field(default=None)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "atomic_numbers": list(self.atomic_numbers),
            "ml_indices": list(self.ml_indices),
            "n_particles": int(self.n_particles),
            "charge": int(self.charge),
            "multiplicity": int(self.multiplicity),
            "selection": self.selection,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SystemSpec":
        return cls(
            atomic_numbers=[int(z) for z in data["atomic_numbers"]],
            ml_indices=[int(i) for i in data["ml_indices"]],
            n_particles=int(data["n_particles"]),
            charge=int(data.get("charge", 0)),
            multiplicity=int(data.get("multiplicity", 1)),
            selection=data.get("selection"),
        )


def atomic_numbers_from_topology(topology: Any, indices: Optional[Sequence[int]] = None) -> List[int]:
    """Atomic numbers of the atoms ``indices`` (default: all) of an ``openmm.app.Topology``."""
    atoms = list(topology.atoms())
    chosen = range(len(atoms)) if indices is None else indices
    numbers = []
    for i in chosen:
        element = atoms[i].element
        if element is None:
            raise SystemSpecError(
                f"atom {i} ({atoms[i].name!r} in residue {atoms[i].residue.name!r}) has no element "
                "(a virtual site or extra particle?); leave it out of the ML region with atoms=..."
            )
        numbers.append(int(element.atomic_number))
    return numbers


def resolve_atoms(atoms: AtomSelection, n_particles: int, topology: Any = None) -> List[int]:
    """Indices of the ML atoms: ``None`` -> all, a list of indices, or an mdtraj selection string.

    A selection string needs the topology (``mdtraj.Topology.from_openmm``).
    """
    if atoms is None:
        return list(range(n_particles))
    if isinstance(atoms, str):
        if topology is None:
            raise SystemSpecError(f"the atom selection {atoms!r} needs a topology")
        import mdtraj

        try:
            selected = mdtraj.Topology.from_openmm(topology).select(atoms)
        except Exception as exc:  # mdtraj raises several types for bad selections
            raise SystemSpecError(f"invalid atom selection {atoms!r}: {exc}") from exc
        indices = [int(i) for i in selected]
        if not indices:
            raise SystemSpecError(f"the atom selection {atoms!r} matches no atom of the topology")
        return indices
    try:
        indices = [int(i) for i in atoms]
    except (TypeError, ValueError) as exc:
        raise SystemSpecError(f"atoms must be None, a selection string or integer indices, got {atoms!r}") from exc
    if not indices:
        raise SystemSpecError("atoms is an empty list: the ML region needs at least one atom")
    bad = [i for i in indices if i < 0 or i >= n_particles]
    if bad:
        raise SystemSpecError(
            f"atom indices {bad[:10]} are out of range for a system of {n_particles} particles"
        )
    if len(set(indices)) != len(indices):
        raise SystemSpecError("atoms contains duplicate indices")
    return indices


def check_charge_multiplicity(atomic_numbers: Sequence[int], charge: int, multiplicity: int) -> None:
    """Refuse a charge/multiplicity that the electron count of the ML region cannot have.

    n_electrons = sum(Z) - charge must be >= 0; the number of unpaired electrons
    (multiplicity - 1) must have the parity of n_electrons and be at most n_electrons.
    """
    if int(charge) != charge or int(multiplicity) != multiplicity:
        raise SystemSpecError(f"charge and multiplicity must be integers, got {charge!r}, {multiplicity!r}")
    charge, multiplicity = int(charge), int(multiplicity)
    if abs(charge) > MAX_ABS_CHARGE:
        raise SystemSpecError(f"charge {charge} is outside the range the model represents (|q| <= {MAX_ABS_CHARGE})")
    if not 1 <= multiplicity <= MAX_MULTIPLICITY:
        raise SystemSpecError(f"multiplicity {multiplicity} is outside 1..{MAX_MULTIPLICITY}")
    n_electrons = int(sum(int(z) for z in atomic_numbers)) - charge
    if n_electrons < 0:
        raise SystemSpecError(f"charge {charge} leaves {n_electrons} electrons in the ML region")
    unpaired = multiplicity - 1
    if unpaired % 2 != n_electrons % 2:
        hint = "an even" if n_electrons % 2 else "an odd"
        raise SystemSpecError(
            f"multiplicity {multiplicity} is impossible with {n_electrons} electrons "
            f"(charge {charge}): {n_electrons} electrons need {hint} multiplicity"
        )
    if unpaired > n_electrons:
        raise SystemSpecError(
            f"multiplicity {multiplicity} needs {unpaired} unpaired electrons but the ML region "
            f"has only {n_electrons} (charge {charge})"
        )


def build_spec(
    topology: Any,
    atoms: AtomSelection = None,
    charge: int = 0,
    multiplicity: int = 1,
    supported_elements: Optional[Sequence[int]] = None,
    source: str = "the model",
) -> SystemSpec:
    """Validated :class:`SystemSpec` of ``topology`` (an ``openmm.app.Topology``)."""
    n_particles = topology.getNumAtoms()
    indices = resolve_atoms(atoms, n_particles, topology)
    numbers = atomic_numbers_from_topology(topology, indices)
    if supported_elements is not None:
        from transip_openmm.artifacts import check_elements_supported

        check_elements_supported(numbers, list(supported_elements), source)
    check_charge_multiplicity(numbers, charge, multiplicity)
    return SystemSpec(
        atomic_numbers=numbers,
        ml_indices=indices,
        n_particles=n_particles,
        charge=int(charge),
        multiplicity=int(multiplicity),
        selection=atoms if isinstance(atoms, str) else None,
    )


def specialise_module(module: torch.jit.ScriptModule, spec: SystemSpec) -> torch.jit.ScriptModule:
    """Set the system buffers of a loaded exported module in place; returns it."""
    device = module.ml_indices.device
    module.atomic_numbers = torch.tensor(spec.atomic_numbers, dtype=torch.int64, device=device)
    module.ml_indices = torch.tensor(spec.ml_indices, dtype=torch.int64, device=device)
    module.charge = torch.tensor([spec.charge], dtype=torch.int64, device=device)
    module.multiplicity = torch.tensor([spec.multiplicity], dtype=torch.int64, device=device)
    module.n_particles = int(spec.n_particles)
    return module
