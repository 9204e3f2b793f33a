"""The two ways an exported model runs inside OpenMM.

* ``torch``: openmm-torch's ``TorchForce`` runs the TorchScript module in C++ (the default;
  openmm-torch 1.5 works with torch 2.9.x only).
* ``python``: OpenMM's built-in ``openmm.PythonForce`` (OpenMM >= 8.5) calls the same module
  from Python, for torch versions openmm-torch cannot load. On CUDA it can capture the model
  in a CUDA graph (``use_cuda_graphs=True``).

:func:`make_force` picks one (``"auto"``: torch when openmm-torch works with this torch,
else python) and logs which.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import openmm
import torch
from transip_openmm.errors import TransIPError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "python")


class BackendError(TransIPError, RuntimeError):
    """The requested backend cannot run here."""


class ModelInputError(TransIPError, ValueError):
    """The model refused what OpenMM gave it (NaN positions, a box too small for its cutoff, an ML
    region too wide for its box) or returned a non-finite energy."""


def make_force(
    module: torch.jit.ScriptModule,
    ml_indices: Sequence[int],
    backend: str = "auto",
    periodic: bool = False,
    use_cuda_graphs: bool = False,
    device: Optional[str] = None,
) -> openmm.Force:
    """An OpenMM Force running the specialised exported ``module``.

    ``ml_indices``: the ML atoms (the python backend applies the force to those particles only).
    ``device`` (python backend): torch device of the model, default CUDA when available.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        ok, reason = torch_backend_available()
        backend = "torch" if ok else "python"
        if ok:
            logger.info("TransIP backend: torch (openmm-torch TorchForce)")
        else:
            logger.info("TransIP backend: python (openmm.PythonForce); openmm-torch unusable: %s", reason)
    if use_cuda_graphs:
        check_capturable(module, len(ml_indices))
    if backend == "torch":
        ok, reason = torch_backend_available()
        if not ok:
            raise BackendError(f"backend='torch' is unavailable: {reason}; use backend='python'")
        return make_torch_force(module, periodic, use_cuda_graphs)
    return make_python_force(module, ml_indices, periodic, use_cuda_graphs, device)


def make_torch_force(module: torch.jit.ScriptModule, periodic: bool, use_cuda_graphs: bool) -> openmm.Force:
    """``openmmtorch.TorchForce`` around ``module`` with ``setOutputsForces(True)``."""
    import openmmtorch  # after torch (openmmtorch needs torch's libraries loaded)

    if hasattr(module, "check_region_width"):
        # Raising the too-wide-ML-region error inside TorchForce (openmm-torch 1.5, torch 2.9) crashes the
        # process in TorchScript's error-callstack code (measured: segmentation fault); the python backend
        # and direct calls keep the check.
        module.check_region_width = False
    if use_cuda_graphs:
        module.check_finite = False  # a host sync is not allowed inside a captured graph
        if hasattr(module, "use_capture_safe"):
            # Static shapes; the neighbour capacity is fitted in openmm-torch's warm-up call. An
            # overflow inside the graph cannot be refitted here: energy and forces turn NaN.
            module.use_capture_safe(True)
    force = openmmtorch.TorchForce(module, {"useCUDAGraphs": "true" if use_cuda_graphs else "false"})
    force.setOutputsForces(True)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setName("TransIP")
    return force


def make_python_force(
    module: torch.jit.ScriptModule,
    ml_indices: Sequence[int],
    periodic: bool,
    use_cuda_graphs: bool = False,
    device: Optional[str] = None,
) -> openmm.Force:
    """``openmm.PythonForce`` applied to the ML particles, calling ``module.ml_energy_forces``."""
    if not hasattr(openmm, "PythonForce"):
        raise BackendError(f"openmm {openmm.__version__} has no PythonForce (needs OpenMM >= 8.5)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if use_cuda_graphs and not str(device).startswith("cuda"):
        raise BackendError("use_cuda_graphs=True needs the model on a CUDA device")
    computation = TorchScriptComputation(_module_bytes(module), str(device), bool(periodic), use_cuda_graphs)
    force = openmm.PythonForce(computation)
    force.setParticles([int(i) for i in ml_indices])
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setName("TransIP")
    return force


class TorchScriptComputation:
    """Picklable PythonForce computation: ML positions (nm) -> (energy kJ/mol, forces kJ/mol/nm).

    Holds the serialised module so ``XmlSerializer`` can pickle it; the module is loaded on
    first use. With ``use_cuda_graphs`` the first call warms the model up and captures one
    evaluation in a ``torch.cuda.CUDAGraph``; later calls copy positions in and replay.
    """

    def __init__(self, module_bytes: bytes, device: str, periodic: bool, use_cuda_graphs: bool) -> None:
        self.module_bytes = module_bytes
        self.device = device
        self.periodic = periodic
        self.use_cuda_graphs = use_cuda_graphs
        self._module: Any = None
        self._graph: Any = None

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("module_bytes", "device", "periodic", "use_cuda_graphs")}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def module(self) -> torch.jit.ScriptModule:
        if self._module is None:
            self._module = torch.jit.load(io.BytesIO(self.module_bytes), map_location=self.device)
            if self.use_cuda_graphs:
                self._module.check_finite = False  # checked on the host instead
                if hasattr(self._module, "use_capture_safe"):
                    self._module.use_capture_safe(True)
        return self._module

    def __call__(self, state: openmm.State) -> Tuple[float, np.ndarray]:
        positions = state.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer)
        if not np.isfinite(positions).all():
            bad = np.where(~np.isfinite(positions).all(axis=1))[0]
            raise ModelInputError(f"TransIP: particle positions contain NaN or infinity (ML atoms {bad[:10].tolist()})")
        box = None
        if self.periodic:
            box = torch.as_tensor(
                np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(openmm.unit.nanometer)),
                device=self.device,
            )
        pos = torch.as_tensor(np.asarray(positions), device=self.device)
        try:
            if self.use_cuda_graphs:
                energy, forces = self._replay(pos, box)
            else:
                energy, forces = self.module.ml_energy_forces(pos, box)
        except torch.jit.Error as exc:  # the module's own checks (ValueError inside TorchScript)
            raise ModelInputError(_script_error_message(exc)) from exc
        energy_value = float(energy)
        forces_np = forces.detach().cpu().numpy()
        if not (np.isfinite(energy_value) and np.isfinite(forces_np).all()):
            raise ModelInputError("TransIP: the model returned a non-finite energy or forces (atoms too close, "
                                  "or far outside the training data?)")
        return energy_value, forces_np

    def _replay(self, pos: torch.Tensor, box: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Copy the inputs into the captured graph and replay it. A capture-safe neighbour list
        that overflowed (a denser structure than the one its capacity was fitted on) or met an
        invalid box is found here, after the replay: the capacity is refitted on these positions
        (an invalid box raises) and the graph captured again."""
        for attempt in range(2):
            if self._graph is None or self._graph[1].shape != pos.shape:
                self._graph = _capture(self.module, pos, box)
            graph, static_pos, static_box, static_energy, static_forces = self._graph
            static_pos.copy_(pos)
            if box is not None:
                static_box.copy_(box)
            graph.replay()
            if attempt == 1 or not hasattr(self.module, "neighbor_overflow") or not self.module.neighbor_overflow():
                break
            logger.warning("TransIP: the neighbour list outgrew its capacity (a denser structure); "
                           "refitting it and capturing the CUDA graph again")
            self.module.fit_neighbor_capacity(pos, box)
            self._graph = None
        return static_energy, static_forces


def check_capturable(module: torch.jit.ScriptModule, n_ml: int) -> None:
    """Refuse CUDA graphs for a model file whose neighbour list cannot be captured: a local-attention
    model exported before capture-safe evaluation existed, run on enough atoms for its neighbour list."""
    model = getattr(module, "model", None)
    if hasattr(module, "use_capture_safe") or model is None or not getattr(model, "use_attention_cutoff", False):
        return
    if n_ml >= int(getattr(model, "neighbor_list_min_atoms", n_ml + 1)):
        raise BackendError(
            f"use_cuda_graphs=True: this model file was exported before capture-safe neighbour lists, and its "
            f"local-attention neighbour list for {n_ml} ML atoms has data-dependent shapes that a CUDA graph "
            "cannot hold; re-export the model with this version (transip export CHECKPOINT -o model.pt, or "
            "transip_openmm.export.wrapper.rebuild_exported for an exported file) or use use_cuda_graphs=False")


def _script_error_message(exc: torch.jit.Error) -> str:
    """The message of an error raised inside a TorchScript module: the text after the last
    ``...Error: `` line of its report (the lines before it quote the module's source)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        match = re.match(r"^(?:builtins\.)?(?:ValueError|RuntimeError): (.+)$", line)
        if match:
            return match.group(1)
    return lines[-1] if lines else repr(exc)


def _capture(module: torch.jit.ScriptModule, pos: torch.Tensor, box: Optional[torch.Tensor]):
    """Warm up ``module.ml_energy_forces`` on a side stream, then capture it in a CUDA graph."""
    static_pos = pos.clone()
    static_box = box.clone() if box is not None else None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # let the TorchScript profiling executor settle before capture
            module.ml_energy_forces(static_pos, static_box)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_energy, static_forces = module.ml_energy_forces(static_pos, static_box)
    logger.info("TransIP: captured the model in a CUDA graph (%d atoms)", pos.shape[0])
    return graph, static_pos, static_box, static_energy, static_forces


def _module_bytes(module: torch.jit.ScriptModule) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def torch_backend_available() -> Tuple[bool, str]:
    """(works, reason): does openmm-torch import and evaluate a TorchScript module with this torch?

    Probed once per process with a two-particle harmonic module on the Reference platform,
    because an incompatible torch fails only when the force is evaluated.
    """
    try:
        import openmmtorch
    except Exception as exc:  # ImportError or a missing shared library
        return False, f"openmmtorch does not import ({type(exc).__name__}: {exc})"
    _load_torch_plugins()
    try:
        probe = torch.jit.script(_Probe())
        force = openmmtorch.TorchForce(probe)
        force.setOutputsForces(True)
        system = openmm.System()
        for _ in range(2):
            system.addParticle(1.0)
        system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions([openmm.Vec3(0.0, 0.0, 0.0), openmm.Vec3(0.1, 0.2, 0.3)])
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
        if abs(energy - 0.14) > 1e-6:
            return False, f"openmm-torch returned a wrong probe energy {energy}"
    except Exception as exc:
        return False, f"openmm-torch cannot run a TorchScript module with torch {torch.__version__} ({exc})"
    return True, "ok"


def _load_torch_plugins() -> None:
    """Load openmm-torch's platform plugins that failed when ``openmm`` was imported before torch.

    OpenMM loads its plugins at ``import openmm``; openmm-torch's need libtorch's libraries
    (e.g. libnvrtc), which are found only once ``torch`` is imported. Retry just those.
    """
    for failure in openmm.Platform.getPluginLoadFailures():
        match = re.match(r"Error loading library (.+?\.(?:so|dylib|dll)): ", failure)
        if match and "OpenMMTorch" in os.path.basename(match.group(1)):
            try:
                openmm.Platform.loadPluginLibrary(match.group(1))
                logger.debug("loaded %s after torch", match.group(1))
            except Exception as exc:  # e.g. the OpenCL plugin without libOpenCL
                logger.debug("cannot load %s: %s", match.group(1), exc)


class _Probe(torch.nn.Module):
    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return (positions * positions).sum(), -2.0 * positions


def deserialize_system(xml: str) -> openmm.System:
    """``XmlSerializer.deserialize`` for Systems that may contain openmm-torch ``TorchForce``\\ s.

    openmm-torch 1.5 with torch 2.9 crashes (segmentation fault) in its own XML
    deserializer, for any TorchForce. This rebuilds each TorchForce in Python from the
    serialised module bytes (``encodedFileContents``) and its settings, keeping the force order.
    """
    import copy
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    forces_el = root.find("Forces")
    if forces_el is None or not any(el.get("type") == "TorchForce" for el in forces_el):
        return openmm.XmlSerializer.deserialize(xml)
    order = []  # ("torch", element) or ("other", k-th non-torch force)
    n_other = 0
    for el in list(forces_el):
        if el.get("type") == "TorchForce":
            order.append(("torch", el))
            forces_el.remove(el)
        else:
            order.append(("other", n_other))
            n_other += 1
    system = openmm.XmlSerializer.deserialize(ET.tostring(root, encoding="unicode"))
    others = [copy.deepcopy(system.getForce(i)) for i in range(system.getNumForces())]
    while system.getNumForces():
        system.removeForce(system.getNumForces() - 1)
    for kind, item in order:
        system.addForce(_torch_force_from_xml(item) if kind == "torch" else others[item])
    return system


def _torch_force_from_xml(el) -> openmm.Force:
    import openmmtorch

    torch_backend_available()  # makes sure openmm-torch's plugins are loaded
    module = torch.jit.load(io.BytesIO(bytes.fromhex(el.get("encodedFileContents"))), map_location="cpu")
    props = {p.get("name"): p.get("value") for p in el.iter("Property")}
    force = openmmtorch.TorchForce(module, props)
    force.setOutputsForces(el.get("outputsForces", "0") == "1")
    force.setUsesPeriodicBoundaryConditions(el.get("usesPeriodic", "0") == "1")
    force.setForceGroup(int(el.get("forceGroup", "0")))
    if el.get("name"):
        force.setName(el.get("name"))
    globals_el = el.find("GlobalParameters")
    for p in (globals_el if globals_el is not None else []):
        force.addGlobalParameter(p.get("name"), float(p.get("default")))
    derivs_el = el.find("ParameterDerivatives")
    for p in (derivs_el if derivs_el is not None else []):
        force.addEnergyParameterDerivative(p.get("name"))
    return force
