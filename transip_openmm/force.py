"""``TransIPForce``: an OpenMM Force computing a TransIP model's energy and forces.

>>> system.addForce(TransIPForce("model.pt"))                      # system baked into the file
>>> system.addForce(TransIPForce("generic.pt", topology, charge=-1))  # generic file
>>> system.addForce(TransIPForce("generic.pt", topology, atoms="resname LIG"))  # ML/MM

A generic exported file is specialised to the topology by setting the system buffers of the
loaded TorchScript module (:func:`transip_openmm.system_spec.specialise_module`); the
weights are not touched and nothing is re-scripted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch  # before openmmtorch, which needs torch's shared libraries
from openmm import unit

from transip_openmm.artifacts import (
    METADATA_ENTRY,
    ArtifactError,
    check_elements_supported,
    parse_exported_metadata,
    unreadable_model_error,
)
from transip_openmm.system_spec import (
    AtomSelection,
    SystemSpec,
    SystemSpecError,
    atomic_numbers_from_topology,
    build_spec,
    check_charge_multiplicity,
    resolve_atoms,
    specialise_module,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


def resolve_model_path(path: PathLike) -> Path:
    """A shipped model's name (``"default"``, ``"local"``) -> its file; anything else ->
    ``Path(path)`` (must exist)."""
    from transip_openmm import SHIPPED_MODELS, shipped_model_path

    if str(path) in SHIPPED_MODELS:
        try:
            return shipped_model_path(str(path))
        except FileNotFoundError as exc:
            raise ArtifactError(
                f"{str(path)!r} asks for a model shipped with transip-openmm, but this "
                f"installation has none ({exc}); pass the path of an exported model instead"
            ) from exc
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file {path} does not exist")
    return path


def load_exported(path: PathLike, map_location: str = "cpu") -> Tuple[torch.jit.ScriptModule, Dict[str, Any]]:
    """(module, metadata) of an exported model file; checks readability, format and version."""
    path = resolve_model_path(path)
    extra = {METADATA_ENTRY: ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError/... for corrupt files
        raise unreadable_model_error(path, exc) from exc
    meta = parse_exported_metadata(extra[METADATA_ENTRY], source=str(path))
    return module, meta


def system_spec_for(
    meta: Dict[str, Any],
    topology: Any,
    charge: Optional[int],
    multiplicity: Optional[int],
    atoms: AtomSelection,
    source: str,
) -> SystemSpec:
    """The system the force runs on: the baked one (checked against ``topology`` and the
    arguments), or one built from ``topology`` for a generic file."""
    supported = meta["elements"]
    baked = SystemSpec.from_dict(meta["system"]) if meta.get("system") else None
    if baked is None:
        if topology is None:
            raise SystemSpecError(
                f"{source} is a generic export (no system baked in): pass the topology, "
                "TransIPForce(path, topology, ...), or export with --topology"
            )
        return build_spec(topology, atoms, 0 if charge is None else charge,
                          1 if multiplicity is None else multiplicity, supported, source)
    if charge is not None and int(charge) != baked.charge:
        raise SystemSpecError(f"{source} was exported with charge {baked.charge}, not {charge}; "
                              "re-export, or export a generic file")
    if multiplicity is not None and int(multiplicity) != baked.multiplicity:
        raise SystemSpecError(f"{source} was exported with multiplicity {baked.multiplicity}, not "
                              f"{multiplicity}; re-export, or export a generic file")
    if topology is not None:
        n = topology.getNumAtoms()
        if n != baked.n_particles:
            raise SystemSpecError(f"{source} was exported for a system of {baked.n_particles} "
                                  f"particles but the topology has {n}")
        if atomic_numbers_from_topology(topology, baked.ml_indices) != baked.atomic_numbers:
            raise SystemSpecError(f"the elements of the topology's ML atoms differ from those baked into {source}")
    if atoms is not None:
        indices = resolve_atoms(atoms, baked.n_particles, topology)
        if indices != baked.ml_indices:
            raise SystemSpecError(f"atoms={atoms!r} selects other atoms than the ML region baked into "
                                  f"{source} ({len(baked.ml_indices)} atoms)")
    check_elements_supported(baked.atomic_numbers, supported, source)
    check_charge_multiplicity(baked.atomic_numbers, baked.charge, baked.multiplicity)
    return baked


def warn_if_untrained_charge_multiplicity(meta: Dict[str, Any], charge: int, multiplicity: int,
                                          source: str) -> None:
    """``logging.warning`` when the ML region's charge/multiplicity is outside what the model's
    metadata says it was trained on (``charge_multiplicity.trained_on``), or, for a charged or
    open-shell region, when the metadata does not say (models exported before it was recorded)."""
    trained = (meta.get("charge_multiplicity") or {}).get("trained_on")
    if trained is None:
        if (charge, multiplicity) != (0, 1):
            logger.warning("the ML region has charge %+d and multiplicity %d, but %s does not record the charges "
                           "and multiplicities of its training data: check that it was trained on such systems "
                           "(a model trained only on neutral singlets gives unreliable results here)",
                           charge, multiplicity, source)
        return
    pairs = {(int(q), int(m)) for q, m in trained}
    if (charge, multiplicity) not in pairs:
        seen = ", ".join(f"({q:+d}, {m})" for q, m in sorted(pairs))
        logger.warning("the ML region has charge %+d and multiplicity %d, but %s was trained only on "
                       "(charge, multiplicity) %s: expect unreliable energies and forces; use a model trained "
                       "on such systems", charge, multiplicity, source, seen)


def model_sees_periodic_images(meta: Dict[str, Any]) -> bool:
    """Whether an exported model takes the box itself (relative positions and local attention,
    no frame averaging), from its metadata; any other model sees the ML region as one cluster."""
    config = meta.get("model_config") or {}
    return (config.get("position_encoding") == "relative" and bool(config.get("attention_cutoff"))
            and not meta.get("frame_averaging"))


def count_molecules(topology: Any, atoms: Sequence[int]) -> int:
    """Number of bonded fragments among ``atoms`` (bonds of ``topology`` between them)."""
    parent = {int(i): int(i) for i in atoms}

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for bond in topology.bonds():
        i, j = bond[0].index, bond[1].index
        if i in parent and j in parent:
            parent[root(i)] = root(j)
    return len({root(a) for a in parent})


def box_widths_nm(box_nm: np.ndarray) -> np.ndarray:
    """(3,) distances between opposite faces of a box (3, 3) nm, rows = box vectors."""
    a, b, c = np.asarray(box_nm, dtype=np.float64)
    volume = abs(np.dot(a, np.cross(b, c)))
    return volume / np.linalg.norm([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=1)


def ml_region_extent_nm(positions_nm: np.ndarray, box_nm: np.ndarray) -> float:
    """Largest extent (nm) of positions (n, 3) nm across a pair of opposite box faces, after
    making them whole by the minimum image of each atom relative to the first (what the model
    sees; the measure the exported model checks at run time). box_nm (3, 3), rows a, b, c."""
    from transip_openmm.neighbors import minimum_image

    box = np.asarray(box_nm, dtype=np.float64)
    x = torch.as_tensor(np.asarray(positions_nm, dtype=np.float64))
    whole = minimum_image(x - x[0:1], torch.as_tensor(box)).numpy()
    normals = np.cross(np.roll(box, -1, axis=0), np.roll(box, -2, axis=0))  # b x c, c x a, a x b
    along = whole @ (normals / np.linalg.norm(normals, axis=1, keepdims=True)).T  # (n, 3)
    return float((along.max(axis=0) - along.min(axis=0)).max())


def check_periodic_ml_region(meta: Dict[str, Any], spec: SystemSpec, topology: Any, box_nm: Optional[np.ndarray],
                             positions_nm: Optional[np.ndarray], source: str) -> None:
    """Refuse a periodic setup that a cluster model (absolute positions) cannot represent.

    Such a model makes the ML region whole around its first atom: right only while the region
    spans less than half the smallest box width. Refused (SystemSpecError, one line naming the
    fix): an all-ML box of more than one molecule, and, given ``positions_nm`` (n_particles, 3),
    an ML region wider than half the smallest box width.
    """
    if model_sees_periodic_images(meta):
        return
    fix = ("use a model with relative positions and local attention, which sees the periodic "
           "images itself (e.g. the shipped 'local'), or a smaller ML region / a larger box")
    n_ml = len(spec.ml_indices)
    if n_ml == spec.n_particles and n_ml > 1 and (topology is None or count_molecules(topology, spec.ml_indices) > 1):
        raise SystemSpecError(
            f"{source} uses absolute positions and sees the ML region as one cluster, but every one of the "
            f"{n_ml} atoms of this periodic box is ML (a bulk box cannot be made whole as one cluster: "
            f"the potential would jump as molecules cross the box); {fix}")
    if positions_nm is None or box_nm is None:
        return
    positions_nm = np.asarray(positions_nm, dtype=np.float64)[spec.ml_indices]
    extent = ml_region_extent_nm(positions_nm, box_nm)
    half_width = 0.5 * float(box_widths_nm(box_nm).min())
    if extent > half_width:
        raise SystemSpecError(
            f"{source} uses absolute positions and sees the ML region as one cluster, but the ML region "
            f"({n_ml} atoms) spans {extent:.2f} nm across the box, more than half the smallest box width "
            f"({half_width:.2f} nm), so it cannot be made whole in the box; {fix}")


def TransIPForce(
    path: PathLike = "default",
    topology: Any = None,
    *,
    charge: Optional[int] = None,
    multiplicity: Optional[int] = None,
    atoms: AtomSelection = None,
    backend: str = "auto",
    use_cuda_graphs: bool = False,
    periodic: Optional[bool] = None,
    device: Optional[str] = None,
    positions: Any = None,
):
    """OpenMM Force (``openmmtorch.TorchForce`` or ``openmm.PythonForce``) for a TransIP model.

    path: exported model file, or ``"default"`` for the shipped demo model.
    topology: ``openmm.app.Topology`` of the full system; needed for a generic file, checked
        against a baked one.
    charge, multiplicity: of the ML region (default: the baked values, else 0 and 1).
    atoms: ML region: atom indices or an mdtraj selection string (default: all atoms).
    backend: ``"torch"`` (openmm-torch), ``"python"`` (``openmm.PythonForce``) or ``"auto"``.
    use_cuda_graphs: capture the model in a CUDA graph (openmm-torch's ``useCUDAGraphs``; the
        python backend captures with ``torch.cuda.CUDAGraph``). Disables the in-model NaN check.
    periodic: use the box (minimum image makes the ML region whole); default: the topology has
        a box.
    device: torch device of the python backend's model (default CUDA if available, else CPU).
    positions: start positions (n_particles, 3) in nm (array or Quantity), optional; with a box
        and a model that sees the ML region as one cluster (absolute positions), used to refuse
        an ML region wider than half the box.

    A periodic all-ML box of several molecules with such a model is refused
    (:func:`check_periodic_ml_region`); models with relative positions and local attention
    (the shipped ``"local"``) see the periodic images themselves.
    """
    from transip_openmm.backends import make_force

    model_path = resolve_model_path(path)
    module, meta = load_exported(model_path)
    spec = system_spec_for(meta, topology, charge, multiplicity, atoms, str(model_path))
    specialise_module(module, spec)
    warn_if_untrained_charge_multiplicity(meta, spec.charge, spec.multiplicity, model_path.name)
    if periodic is None:
        periodic = topology is not None and topology.getPeriodicBoxVectors() is not None
    if periodic:
        box = None
        if topology is not None and topology.getPeriodicBoxVectors() is not None:
            box = np.asarray(topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
        if positions is not None and unit.is_quantity(positions):
            positions = positions.value_in_unit(unit.nanometer)
        check_periodic_ml_region(meta, spec, topology, box, positions, str(model_path))
    logger.info("TransIP model %s: %d ML atoms of %d particles, charge %d, multiplicity %d%s",
                model_path.name, len(spec.ml_indices), spec.n_particles, spec.charge, spec.multiplicity,
                ", periodic" if periodic else "")
    return make_force(module, spec.ml_indices, backend=backend, periodic=bool(periodic),
                      use_cuda_graphs=use_cuda_graphs, device=device)
