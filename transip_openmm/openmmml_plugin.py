"""openmm-ml plugin: ``MLPotential("transip", modelPath="model.pt")``.

Registered through the ``openmmml.potentials`` entry point, so

>>> potential = MLPotential("transip", modelPath="model.pt")
>>> system = potential.createSystem(topology, charge=0, multiplicity=1)
>>> mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)

work for any exported model (generic or baked; a baked one must match the topology). Extra
``createSystem`` keywords: ``charge``, ``multiplicity``, ``backend``, ``useCUDAGraphs``,
``device``. ``modelPath`` defaults to ``"default"`` (the shipped demo model).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import openmm
import openmm.app
from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory


class TransIPPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`TransIPPotentialImpl` objects."""

    def createImpl(self, name: str, modelPath: str = "default", **args: Any) -> MLPotentialImpl:
        return TransIPPotentialImpl(name, modelPath)


class TransIPPotentialImpl(MLPotentialImpl):
    """Adds a :func:`transip_openmm.TransIPForce` for the requested atoms."""

    def __init__(self, name: str, modelPath: str) -> None:
        self.name = name
        self.modelPath = modelPath

    def getMLLongRange(self) -> bool:
        """TransIP's interactions are local (no Ewald/PME term in the model): openmm-ml's
        mechanical embedding of a periodic system then treats the ML atoms' interactions with
        the periodic images of the ML region with the MM charges, and needs no ``mlLongRange``."""
        return False

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Optional[Iterable[int]],
        forceGroup: int,
        charge: int = 0,
        multiplicity: int = 1,
        backend: str = "auto",
        useCUDAGraphs: bool = False,
        device: Optional[str] = None,
        **args: Any,
    ) -> None:
        from transip_openmm.force import TransIPForce, load_exported

        _, meta = load_exported(self.modelPath)
        baked = bool(meta.get("system"))
        periodic = topology.getPeriodicBoxVectors() is not None or system.usesPeriodicBoundaryConditions()
        force = TransIPForce(
            self.modelPath,
            topology,
            charge=None if baked and charge == 0 else charge,
            multiplicity=None if baked and multiplicity == 1 else multiplicity,
            atoms=None if atoms is None else list(atoms),
            backend=backend,
            use_cuda_graphs=useCUDAGraphs,
            periodic=periodic,
            device=device,
        )
        force.setForceGroup(forceGroup)
        system.addForce(force)
