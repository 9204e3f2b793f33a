"""Labellers: energy (eV) and forces (eV/Å) of one structure at one level of theory.

A labeller has a ``level_of_theory`` string (written into every record it labels) and
``label(atoms, charge, multiplicity) -> Label``. It raises :class:`LabelFailure` when it
cannot label a structure (an SCF that does not converge, a non-finite result); the
generator then drops the record and counts it. ``make_labeller(spec)`` builds one from a
config mapping such as ``{method: GFN2-xTB}`` or ``{method: wB97M-V, basis: def2-TZVPD}``.

* :class:`XTBLabeller`: GFN2-xTB through ``tblite`` (``tblite.ase.TBLite``), ~10 ms for
  20 atoms on one core.
* :class:`PySCFLabeller`: ωB97M-V (with its VV10 non-local correlation) through PySCF,
  restricted Kohn–Sham for singlets and unrestricted otherwise, density fitting
  (def2-universal-jkfit), the def2 ECPs for elements past Kr; on the GPU through gpu4pyscf
  when it is installed and CUDA is present. For tiny molecules on a CPU, or a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Protocol

import numpy as np
from ase import Atoms

from transip_openmm.data.errors import DataGenError, LabelFailure
from transip_openmm.units import HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV

logger = logging.getLogger(__name__)


@dataclass
class Label:
    """energy eV; forces (n, 3) eV/Å."""

    energy: float
    forces: np.ndarray


class Labeller(Protocol):
    """Anything that labels a structure at one level of theory."""

    level_of_theory: str

    def label(self, atoms: Atoms, charge: int, multiplicity: int) -> Label:
        """Energy and forces of ``atoms`` (positions Å) with total charge and multiplicity 2S+1."""


def _checked(energy: float, forces: np.ndarray, n_atoms: int, level: str) -> Label:
    forces = np.asarray(forces, dtype=np.float64).reshape(n_atoms, 3)
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise LabelFailure(f"{level}: non-finite energy or forces")
    return Label(float(energy), forces)


class XTBLabeller:
    """GFN2-xTB (or GFN1-xTB) through ``tblite.ase.TBLite``.

    ``accuracy`` and ``max_iterations`` are tblite's SCC settings; ``electronic_temperature``
    in K (tblite's default 300 K Fermi smearing). Non-periodic unless ``atoms.pbc`` is set,
    in which case tblite uses the cell.
    """

    def __init__(self, method: str = "GFN2-xTB", accuracy: float = 1.0, max_iterations: int = 250,
                 electronic_temperature: float = 300.0):
        if method not in ("GFN2-xTB", "GFN1-xTB"):
            raise DataGenError(f"labeller.method {method!r} is not a tblite method; use GFN2-xTB or GFN1-xTB")
        self.method = method
        self.level_of_theory = method
        self.settings = dict(accuracy=accuracy, max_iterations=max_iterations,
                             electronic_temperature=electronic_temperature)
        self._kept: Optional[tuple] = None  # (charge, multiplicity, numbers) and the calculator of the last label

    def calculator(self, charge: int, multiplicity: int):
        """An ASE calculator at this level (for teacher MD and scans)."""
        from tblite.ase import TBLite

        return TBLite(method=self.method, charge=charge, multiplicity=multiplicity, verbosity=0, **self.settings)

    def reset(self) -> None:
        """Forget the kept calculator (the generator calls this at the start of every task)."""
        self._kept = None

    def label(self, atoms: Atoms, charge: int, multiplicity: int) -> Label:
        """Energy and forces; the SCC starts from the last call's solution when the molecule is the same.

        That restart makes consecutive frames of one system faster (20 waters displaced by 0.05 Å:
        55 vs 75 ms; MD steps more) and changes a label only within the SCC tolerance (~1e-4 eV/Å);
        if it does not converge, the label is tried once more from tblite's default guess.
        """
        from ase.calculators.calculator import CalculatorError

        key = (int(charge), int(multiplicity), atoms.numbers.tobytes())
        kept = getattr(self, "_kept", None)
        tries = [kept[1]] if kept is not None and kept[0] == key else []
        tries.append(None)  # None: a fresh calculator
        for calc in tries:
            work = atoms.copy()
            work.calc = calc if calc is not None else self.calculator(charge, multiplicity)
            try:
                energy = work.get_potential_energy()
                forces = work.get_forces()
            except CalculatorError as exc:  # tblite: "SCF not converged in N cycles"
                self._kept = None
                error = exc
                continue
            self._kept = (key, work.calc)
            return _checked(energy, forces, len(work), self.level_of_theory)
        raise LabelFailure(f"{self.method}: {error}") from error


class PySCFLabeller:
    """ωB97M-V (default) with a def2 basis through PySCF; gpu4pyscf when CUDA is present.

    Grids: ``grid_level`` for the exchange-correlation grid (PySCF level 3 by default,
    about (75, 302) radial/angular points for first-row atoms; OMol25 used ORCA's DefGrid3)
    and ``nlc_grid_level`` for the VV10 grid (level 1). Density fitting with
    ``def2-universal-jkfit``. ``conv_tol`` in Hartree; ``max_cycle`` SCF iterations; an SCF
    that does not converge raises :class:`LabelFailure`.
    """

    def __init__(self, method: str = "wB97M-V", basis: str = "def2-TZVPD", grid_level: int = 3,
                 nlc_grid_level: int = 1, conv_tol: float = 1e-9, max_cycle: int = 100,
                 density_fit: bool = True, use_gpu: Optional[bool] = None, max_memory_mb: int = 4000):
        self.method = method
        self.basis = basis
        self.level_of_theory = f"{method}/{basis}"
        self.grid_level = int(grid_level)
        self.nlc_grid_level = int(nlc_grid_level)
        self.conv_tol = float(conv_tol)
        self.max_cycle = int(max_cycle)
        self.density_fit = bool(density_fit)
        self.max_memory_mb = int(max_memory_mb)
        self.use_gpu = _gpu4pyscf_available() if use_gpu is None else bool(use_gpu)

    def _mean_field(self, atoms: Atoms, charge: int, multiplicity: int):
        from pyscf import dft, gto

        symbols = atoms.get_chemical_symbols()
        ecp = {s: self.basis for s, z in zip(symbols, atoms.numbers) if z > 36}  # def2: ECPs past Kr
        mol = gto.M(
            atom=[(s, tuple(p)) for s, p in zip(symbols, atoms.positions)],
            unit="Angstrom", basis=self.basis, ecp=ecp, charge=int(charge), spin=int(multiplicity) - 1,
            verbose=0, max_memory=self.max_memory_mb,
        )
        mf = dft.RKS(mol) if multiplicity == 1 else dft.UKS(mol)
        mf.xc = self.method
        if self.density_fit:
            mf = mf.density_fit(auxbasis="def2-universal-jkfit")
        mf.grids.level = self.grid_level
        mf.nlcgrids.level = self.nlc_grid_level
        mf.conv_tol = self.conv_tol
        mf.max_cycle = self.max_cycle
        if self.use_gpu:
            mf = mf.to_gpu()
        return mf

    def label(self, atoms: Atoms, charge: int, multiplicity: int) -> Label:
        mf = self._mean_field(atoms, charge, multiplicity)
        energy_h = float(mf.kernel())
        if not mf.converged:
            raise LabelFailure(f"{self.level_of_theory}: SCF not converged in {self.max_cycle} cycles")
        gradient = mf.nuc_grad_method().kernel()
        gradient = gradient.get() if hasattr(gradient, "get") else np.asarray(gradient)  # cupy -> numpy
        return _checked(energy_h * HARTREE_TO_EV, -np.asarray(gradient) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM,
                        len(atoms), self.level_of_theory)

    def energy(self, atoms: Atoms, charge: int, multiplicity: int) -> float:
        """Energy only (eV), e.g. for finite-difference checks of the forces."""
        mf = self._mean_field(atoms, charge, multiplicity)
        energy_h = float(mf.kernel())
        if not mf.converged:
            raise LabelFailure(f"{self.level_of_theory}: SCF not converged in {self.max_cycle} cycles")
        return energy_h * HARTREE_TO_EV


def _gpu4pyscf_available() -> bool:
    try:
        import cupy  # noqa: F401
        import gpu4pyscf  # noqa: F401

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # not installed, or no CUDA device/driver
        return False


#: method names (case-insensitive) -> labeller class
_XTB_METHODS = {"gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB"}


def make_labeller(spec: Mapping[str, Any]) -> Labeller:
    """Labeller from a config mapping: ``method`` plus that labeller's keyword settings."""
    options: Dict[str, Any] = dict(spec)
    method = str(options.pop("method", "GFN2-xTB"))
    try:
        if method.lower() in _XTB_METHODS:
            return XTBLabeller(method=_XTB_METHODS[method.lower()], **options)
        return PySCFLabeller(method=method, **options)
    except TypeError as exc:
        raise DataGenError(f"labeller settings {sorted(options)} for {method!r}: {exc}") from exc


__all__ = ["Label", "Labeller", "XTBLabeller", "PySCFLabeller", "make_labeller"]
