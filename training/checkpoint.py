"""The training checkpoint as a typed object.

:class:`TrainingCheckpoint` is what the trainer writes and resumes from. On disk it stays
the dict schema of :mod:`transip_openmm.artifacts` (evaluation and export read those keys):
:meth:`TrainingCheckpoint.to_payload` writes it, :meth:`TrainingCheckpoint.from_payload`
reads it back, including checkpoints written before the typed object existed (keys then
absent get their defaults; their references are taken from the saved model state).

The element reference energies have one owner: ``element_energies``, a float64 (N_Z,)
array in eV, fitted once per run. The live training model never carries them (its
``element_energies`` buffer stays 0: training predicts energies relative to the
references); every model state written for use outside training (``model_state``,
``ema_state``) carries them, so a checkpoint's model gives absolute energies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from transip_openmm.artifacts import load_checkpoint, save_checkpoint

PathLike = Union[str, Path]
REFERENCE_KEY = "element_energies"


@dataclass
class DataPosition:
    """Where the data stream stands: ``epoch`` and the batches of it already consumed
    (``batch_in_epoch``, per rank; with gradient accumulation micro-batches count)."""

    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class TrainingCheckpoint:
    """Everything a run needs to continue exactly, plus what evaluation and export read.

    Model states hold the references (absolute energies); ``element_energies`` is the
    float64 original, (N_Z,) or (n_levels, N_Z) for a multi-level model.
    ``training_charge_multiplicity``: the distinct [charge, multiplicity] of the training data.
    Statistics: ``energy_scale`` eV, ``energy_norm`` eV/atom, ``force_rms`` eV/Å.
    """

    model_config: Dict[str, Any]
    model_state: Dict[str, torch.Tensor]
    elements: List[int]
    element_energies: np.ndarray
    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    ema_state: Optional[Dict[str, torch.Tensor]] = None
    transforms_state: Dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer_state: Optional[Dict[str, Any]] = None
    scheduler_state: Optional[Dict[str, Any]] = None
    rng_state: Optional[Dict[str, Any]] = None
    config: Dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""
    symmetry: str = "none"
    energy_scale: float = 1.0
    energy_norm: float = 0.0
    force_rms: float = 0.0
    training_charge_multiplicity: Optional[List[List[int]]] = None
    val_metrics: Dict[str, float] = field(default_factory=dict)
    best_value: float = math.inf
    throughput: Dict[str, float] = field(default_factory=dict)
    train_time_s: float = 0.0
    structures_seen: int = 0
    atoms_seen: int = 0

    # ------------------------------------------------------------------ schema
    def to_payload(self) -> Dict[str, Any]:
        """The on-disk dict (the keys :mod:`transip_openmm.artifacts` readers expect)."""
        payload = {k: v for k, v in self.__dict__.items() if k != "position"}
        payload["element_energies"] = torch.from_numpy(np.asarray(self.element_energies, dtype=np.float64))
        payload["epoch"] = self.position.epoch
        payload["batch_in_epoch"] = self.position.batch_in_epoch
        return payload

    @classmethod
    def from_payload(cls, data: Dict[str, Any]) -> "TrainingCheckpoint":
        """Read a checkpoint dict, old (untyped, no ``element_energies``) or new."""
        refs = data.get("element_energies")
        if refs is None:  # before the typed checkpoint: the references lived in the model state
            refs = data["model_state"][REFERENCE_KEY]
        known = {f for f in cls.__dataclass_fields__} - {"position", "element_energies"}
        kwargs = {k: data[k] for k in known if k in data and data[k] is not None}
        return cls(
            element_energies=torch.as_tensor(refs).to(torch.float64).numpy().copy(),
            position=DataPosition(int(data.get("epoch", 0)), int(data.get("batch_in_epoch", 0))),
            **kwargs,
        )

    def save(self, path: PathLike) -> None:
        save_checkpoint(path, self.to_payload())

    @classmethod
    def load(cls, path: PathLike) -> "TrainingCheckpoint":
        return cls.from_payload(load_checkpoint(path))

    def summary(self) -> Dict[str, Any]:
        """The scalar fields (for logs and tests)."""
        out = asdict(self.position)
        out.update({k: v for k, v in self.__dict__.items() if isinstance(v, (int, float, str))})
        return out


def with_references(state: Dict[str, torch.Tensor], element_energies: np.ndarray) -> Dict[str, torch.Tensor]:
    """A CPU copy of a model state dict whose ``element_energies`` buffer holds the references
    (in the buffer's dtype); the input is not modified."""
    out = {k: v.detach().clone().cpu() for k, v in state.items()}
    out[REFERENCE_KEY] = torch.from_numpy(np.asarray(element_energies, dtype=np.float64)).to(out[REFERENCE_KEY].dtype)
    return out


def without_references(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy of a saved model state for the live training model (references 0, see module doc)."""
    out = dict(state)
    out[REFERENCE_KEY] = torch.zeros_like(state[REFERENCE_KEY])
    return out
