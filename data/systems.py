"""System kinds of the config: each builds the ``index``-th starting structure of a job.

``make_system(spec, root, where)`` returns a callable ``build(index, rng) -> Structure``.
Discrete choices (residue, ion) go round-robin over ``index`` so that every one is covered;
sizes and geometry are drawn from ``rng``. Kinds and their keys:

* ``capped_amino_acid``: ``residues`` (``all`` | ``standard`` | list) — ACE-X-NME.
* ``dipeptide``: ``residues`` — ACE-X-Y-NME over all ordered pairs.
* ``water_cluster``: ``n_molecules: [min, max]`` (2…64).
* ``water_cutout``: ``radius: [min, max]`` Å — whole molecules within a sphere of the box.
* ``ion_water``: ``ions`` (default all nine), ``n_waters: [min, max]``.
* ``electrolyte``: ``cations`` (Li+, Na+), ``solvents`` (EC, PC, DMC, EMC),
  ``anions`` (PF6-, BF4-, none), ``n_solvent: [min, max]``.
* ``omol25``: ``paths`` (.aselmdb), ``val_fraction``, ``test_fraction``, ``split_seed``
  (the held-out molecules of that split are never seeds), ``max_atoms`` (default 60).
* ``spice``: ``paths`` (SPICE geometry HDF5, nm), ``max_atoms``.
* ``md_run`` (active learning): ``paths`` (run folders of ``transip simulate`` or the
  stability screen: ``topology.pdb`` plus ``trajectory.dcd``/``.xtc``), ``atoms`` (mdtraj
  selection of the ML region, default all), ``charge``, ``multiplicity``, ``select``
  (``failures``: the ``window`` frames up to the first broken or new bond; ``all``) and
  ``every`` (stride over frames).

Relative paths are resolved against the config's ``root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Mapping, Sequence

import numpy as np

from transip_openmm.data import electrolytes, peptides, seeds, water
from transip_openmm.data.errors import DataGenError
from transip_openmm.data.structures import Structure
from transip_openmm.data.trajectories import run_frames

Builder = Callable[[int, np.random.Generator], Structure]


def _int_range(value: Any, where: str, low: int, high: int) -> List[int]:
    pair = [value, value] if isinstance(value, (int, float)) else list(value)
    if len(pair) != 2 or not low <= int(pair[0]) <= int(pair[1]) <= high:
        raise DataGenError(f"{where}: expected [min, max] within {low}..{high}, got {value!r}")
    return [int(pair[0]), int(pair[1])]


def _float_range(value: Any, where: str) -> List[float]:
    pair = [value, value] if isinstance(value, (int, float)) else list(value)
    if len(pair) != 2 or float(pair[0]) > float(pair[1]):
        raise DataGenError(f"{where}: expected [min, max], got {value!r}")
    return [float(pair[0]), float(pair[1])]


def _choices(options: Mapping[str, Any], key: str, known: Sequence[str], where: str) -> List[str]:
    values = options.get(key, list(known))
    values = [values] if isinstance(values, str) else list(values)
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise DataGenError(f"{where}.{key}: unknown {unknown or 'empty list'}; known: {', '.join(known)}")
    return values


def _paths(options: Mapping[str, Any], root: Path, where: str) -> tuple:
    paths = options.get("paths")
    if not paths:
        raise DataGenError(f"{where}.paths: give at least one file or folder")
    resolved = tuple((root / p).resolve() for p in ([paths] if isinstance(paths, str) else paths))
    missing = [str(p) for p in resolved if not p.exists()]
    if missing:
        raise DataGenError(f"{where}.paths: {missing} do not exist (relative paths start at the config's root); "
                           "fix the paths or remove the job")
    return tuple(str(p) for p in resolved)


def _check_keys(options: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(options) - set(allowed) - {"kind"})
    if unknown:
        raise DataGenError(f"{where}: unknown keys {unknown}; allowed: {', '.join(allowed)}")


def make_system(spec: Mapping[str, Any], root: Path, where: str) -> Builder:
    """The builder of one ``system`` mapping of the config (see the module docstring)."""
    kind = spec.get("kind")
    if kind in ("capped_amino_acid", "dipeptide"):
        _check_keys(spec, ["residues"], where)
        names = peptides.residue_list(spec.get("residues", "all"), f"{where}.residues")
        if kind == "capped_amino_acid":
            return lambda index, rng: peptides.build_capped_peptide([names[index % len(names)]], rng.integers(2**31))
        n = len(names)
        return lambda index, rng: peptides.build_capped_peptide(
            [names[index % n], names[(index // n) % n]], rng.integers(2**31))
    if kind == "water_cluster":
        _check_keys(spec, ["n_molecules"], where)
        low, high = _int_range(spec.get("n_molecules", [2, 20]), f"{where}.n_molecules", 1, 128)
        return lambda index, rng: water.water_cluster(int(rng.integers(low, high + 1)), rng)
    if kind == "water_cutout":
        _check_keys(spec, ["radius"], where)
        r_low, r_high = _float_range(spec.get("radius", [4.0, 6.5]), f"{where}.radius")
        return lambda index, rng: water.water_cutout(float(rng.uniform(r_low, r_high)), rng)
    if kind == "ion_water":
        _check_keys(spec, ["ions", "n_waters"], where)
        ions = _choices(spec, "ions", list(water.IONS), where)
        low, high = _int_range(spec.get("n_waters", [1, 12]), f"{where}.n_waters", 0, 64)
        return lambda index, rng: water.ion_water_cluster(ions[index % len(ions)],
                                                          int(rng.integers(low, high + 1)), rng)
    if kind == "electrolyte":
        _check_keys(spec, ["cations", "solvents", "anions", "n_solvent"], where)
        cations = _choices(spec, "cations", list(electrolytes.CATIONS), where)
        solvents = _choices(spec, "solvents", list(electrolytes.SOLVENTS), where)
        anions = _choices(spec, "anions", [*electrolytes.ANIONS, "none"], where)
        low, high = _int_range(spec.get("n_solvent", [1, 4]), f"{where}.n_solvent", 0, 8)

        def build_electrolyte(index: int, rng: np.random.Generator) -> Structure:
            n = int(rng.integers(low, high + 1))
            chosen = [solvents[int(k)] for k in rng.integers(len(solvents), size=n)]
            anion = anions[(index // len(cations)) % len(anions)]
            return electrolytes.electrolyte_cluster(cations[index % len(cations)], chosen,
                                                    None if anion == "none" else anion, rng)

        return build_electrolyte
    if kind == "omol25":
        _check_keys(spec, ["paths", "val_fraction", "test_fraction", "split_seed", "max_atoms"], where)
        key = (_paths(spec, root, where), float(spec.get("val_fraction", 0.1)),
               float(spec.get("test_fraction", 0.1)), int(spec.get("split_seed", 0)), int(spec.get("max_atoms", 60)))
        return lambda index, rng: seeds.pick(seeds.omol25_seeds(*key), rng, where)
    if kind == "spice":
        _check_keys(spec, ["paths", "max_atoms"], where)
        key = (_paths(spec, root, where), int(spec.get("max_atoms", 60)))
        return lambda index, rng: seeds.pick(seeds.spice_seeds(*key), rng, where)
    if kind == "md_run":
        _check_keys(spec, ["paths", "atoms", "charge", "multiplicity", "select", "window", "every"], where)
        key = (_paths(spec, root, where), str(spec.get("atoms", "all")), int(spec.get("charge", 0)),
               int(spec.get("multiplicity", 1)), str(spec.get("select", "failures")),
               int(spec.get("window", 20)), int(spec.get("every", 1)))
        return lambda index, rng: run_frames(*key)[index % len(run_frames(*key))]
    raise DataGenError(f"{where}.kind {kind!r}: use one of capped_amino_acid, dipeptide, water_cluster, "
                       "water_cutout, ion_water, electrolyte, omol25, spice, md_run")

