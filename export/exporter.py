"""Checkpoint -> one self-contained TorchScript file for OpenMM.

The file holds the scripted :class:`~transip_openmm.export.wrapper.OpenMMTransIP` module
(weights included) and a JSON metadata entry (:data:`~transip_openmm.artifacts.METADATA_ENTRY`)
describing format, elements, units, the baked system (or none: "generic"), the training
configuration, data hash, validation metrics and code version.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from transip_openmm.export.wrapper import OpenMMTransIP

from transip_openmm.artifacts import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    METADATA_ENTRY,
    code_version,
    load_checkpoint,
    model_from_checkpoint,
)
from transip_openmm.atomic_io import atomic_binary_file
from transip_openmm.model import TransIPModel, select_level
from transip_openmm.system_spec import SystemSpec

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_wrapper(model: TransIPModel, spec: Optional[SystemSpec], dtype: str = "float32",
                  frame_average: bool = False) -> OpenMMTransIP:
    """Eager wrapper around a copy-free ``model`` cast to ``dtype`` (in place), in eval mode.

    ``frame_average``: average the energy over the 24 octahedral rotations
    (:class:`~transip_openmm.frames.FrameAveragedModel`; 24 model evaluations).
    """
    model = model.to(DTYPES[dtype]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if frame_average:
        from transip_openmm.frames import FrameAveragedModel

        model = FrameAveragedModel(model)
    if spec is None:
        return OpenMMTransIP(model)
    return OpenMMTransIP(
        model,
        atomic_numbers=spec.atomic_numbers,
        ml_indices=spec.ml_indices,
        n_particles=spec.n_particles,
        charge=spec.charge,
        multiplicity=spec.multiplicity,
    )


def build_metadata(checkpoint: Dict[str, Any], spec: Optional[SystemSpec], dtype: str,
                   source: str = "", frame_average: bool = False) -> Dict[str, Any]:
    """Metadata dict stored in the exported file (JSON-serialisable)."""
    config = checkpoint["model_config"]
    periodic_images = (config.get("position_encoding") == "relative" and bool(config.get("attention_cutoff"))
                       and not frame_average)
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "elements": sorted(int(z) for z in checkpoint["elements"]),
        "system": None if spec is None else spec.to_dict(),
        "baked": spec is not None,
        "charge_multiplicity": {
            "handling": "baked" if spec is not None else "set at run time (TransIPForce charge=, multiplicity=)",
            "charge": None if spec is None else spec.charge,
            "multiplicity": None if spec is None else spec.multiplicity,
            "model_inputs": "total charge (e) and spin multiplicity 2S+1 of the ML region, embedded per token",
            # [[charge, multiplicity], ...] of the training structures, when the checkpoint
            # records them; None: unknown
            "trained_on": _trained_charge_multiplicity(checkpoint),
        },
        "interface": {
            "forward": "forward(positions (n_particles, 3) nm[, box (3, 3) nm]) -> (energy kJ/mol, forces kJ/mol/nm)",
            "outputs_forces": True,
            "periodic": ("optional box; the model sees the periodic images (minimum image within its cutoff; "
                         "the box must be at least twice the cutoff wide)" if periodic_images else
                         "optional box; ML region made whole by minimum image relative to its first atom"),
        },
        "units": {
            "training": {"energy": "eV", "length": "angstrom", "forces": "eV/angstrom"},
            "interface": {"energy": "kJ/mol", "length": "nm", "forces": "kJ/mol/nm"},
        },
        "cutoff": checkpoint["model_config"].get("attention_cutoff"),
        "attention": ("all pairs within the ML region" if not checkpoint["model_config"].get("attention_cutoff")
                      else "local: smooth cosine envelope to zero at the cutoff (angstrom)"),
        "dtype": dtype,
        "frame_averaging": "octahedral group, 24 rotations" if frame_average else None,
        "model_config": checkpoint["model_config"],
        "train_config": _portable_config(checkpoint.get("config")),
        "symmetry": checkpoint.get("symmetry"),
        "data_hash": checkpoint.get("data_hash"),
        "validation_metrics": _jsonable(checkpoint.get("val_metrics") or checkpoint.get("metrics")),
        "training_step": checkpoint.get("step"),
        "checkpoint_code_version": checkpoint.get("code_version"),
        "code_version": code_version(),
        "source_checkpoint": source,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _trained_charge_multiplicity(checkpoint: Dict[str, Any]) -> Optional[list]:
    """Sorted distinct (charge, multiplicity) pairs of the training data, from the checkpoint's
    ``training_charge_multiplicity``; None when the checkpoint does not record them."""
    pairs = checkpoint.get("training_charge_multiplicity")
    if pairs is None:
        return None
    return sorted([int(q), int(m)] for q, m in {(int(q), int(m)) for q, m in pairs})


def _portable_config(config: Any) -> Any:
    """The training config without ``config_dir`` (where the YAML file happened to live on the
    training machine: meaningless elsewhere, and the shipped file must not carry it)."""
    config = _jsonable(config)
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "config_dir"}
    return config


def _jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def export_model(
    model: TransIPModel,
    checkpoint: Dict[str, Any],
    output: PathLike,
    spec: Optional[SystemSpec] = None,
    dtype: str = "float32",
    source: str = "",
    frame_average: bool = False,
    level: Optional[str] = None,
) -> Dict[str, Any]:
    """Script ``model`` (with ``spec`` baked in, or generic) and write it to ``output``.

    ``checkpoint`` supplies ``elements``, ``model_config`` and the training metadata.
    ``level``: the level of theory whose energy head (and element references) a multi-level
    model exports (None: its default, the first); ``model`` is not changed.
    Returns the metadata written.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    trained_levels = list(model.energy_levels)
    if model.n_levels > 1 or level is not None:
        model = select_level(model, level)
        checkpoint = dict(checkpoint, model_config=dict(model.config_dict))
    if spec is not None:
        from transip_openmm.artifacts import check_elements_supported

        check_elements_supported(spec.atomic_numbers, checkpoint["elements"], source or "the checkpoint")
    wrapper = build_wrapper(model, spec, dtype, frame_average)
    scripted = torch.jit.script(wrapper)
    meta = build_metadata(checkpoint, spec, dtype, source, frame_average)
    meta["level_of_theory"] = model.energy_levels[0] if model.energy_levels else None
    meta["energy_levels_trained"] = trained_levels
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_binary_file(output) as f:  # a killed export leaves no partial model file
        torch.jit.save(scripted, f, _extra_files={METADATA_ENTRY: json.dumps(meta, indent=1)})
    logger.info("exported %s model (%s) to %s", "baked" if spec else "generic", dtype, output)
    return meta


def export_checkpoint(
    checkpoint_path: PathLike,
    output: PathLike,
    spec: Optional[SystemSpec] = None,
    dtype: str = "float32",
    use_ema: bool = True,
    frame_average: bool = False,
    level: Optional[str] = None,
) -> Dict[str, Any]:
    """Read a training checkpoint and export it (see :func:`export_model`)."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint, use_ema=use_ema)
    return export_model(model, checkpoint, output, spec, dtype, source=Path(checkpoint_path).name,
                        frame_average=frame_average, level=level)
