"""Unit constants, derived once from ``openmm.unit``.

The model works internally in eV and Å (the units of OMol25 and of most
quantum-chemistry data sets). OpenMM works in kJ/mol and nm. Every
conversion in the project goes through the constants below.
"""

from __future__ import annotations

import openmm.unit as u

#: 1 eV in kJ/mol (per particle -> per mole), ≈ 96.4853321.
EV_TO_KJ_PER_MOL: float = (1.0 * u.elementary_charge * u.volt * u.AVOGADRO_CONSTANT_NA).value_in_unit(
    u.kilojoule_per_mole
)
#: 1 Hartree in eV, ≈ 27.211386.
HARTREE_TO_EV: float = (1.0 * u.hartree * u.AVOGADRO_CONSTANT_NA).value_in_unit(
    u.kilojoule_per_mole
) / EV_TO_KJ_PER_MOL
#: 1 bohr in Å, ≈ 0.529177.
BOHR_TO_ANGSTROM: float = (1.0 * u.bohr).value_in_unit(u.angstrom)
#: 1 nm in Å.
NM_TO_ANGSTROM: float = (1.0 * u.nanometer).value_in_unit(u.angstrom)
ANGSTROM_TO_NM: float = 1.0 / NM_TO_ANGSTROM
#: Force conversion eV/Å -> kJ/mol/nm, ≈ 964.853321.
EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM: float = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM
#: Hartree/bohr -> eV/Å.
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM: float = HARTREE_TO_EV / BOHR_TO_ANGSTROM
#: Coulomb constant e²/(4πε0) in eV·Å, ≈ 14.399645.
#: OpenMM's own Coulomb constant is 138.935456 kJ/mol·nm/e² (``ONE_4PI_EPS0``).
COULOMB_EV_ANGSTROM: float = 138.935456 * NM_TO_ANGSTROM / EV_TO_KJ_PER_MOL
#: meV per eV, for reporting.
MEV_PER_EV: float = 1000.0
#: Boltzmann constant in eV/K, ≈ 8.617333e-5.
BOLTZMANN_EV_PER_K: float = (u.BOLTZMANN_CONSTANT_kB * u.AVOGADRO_CONSTANT_NA * u.kelvin).value_in_unit(
    u.kilojoule_per_mole
) / EV_TO_KJ_PER_MOL
