"""File schemas shared by training, export and the runtime.

Two artefacts flow through the project:

* a **training checkpoint** (``torch.save`` of a dict), written by the trainer and read by
  evaluation and export;
* an **exported model** (a TorchScript file with a JSON metadata entry), written by the
  exporter and read by :class:`transip_openmm.TransIPForce`.

Both carry ``format`` and ``format_version``; readers refuse anything else with a message
that says what was found and what was expected.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from transip_openmm.atomic_io import atomic_binary_file
from transip_openmm.errors import TransIPError
from transip_openmm.model import ModelConfig, TransIPModel

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "transip-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
EXPORT_FORMAT = "transip-exported-model"
EXPORT_FORMAT_VERSION = 1
#: Name of the metadata entry inside an exported TorchScript file.
METADATA_ENTRY = "transip_metadata.json"

PathLike = Union[str, Path]


class ArtifactError(TransIPError, ValueError):
    """A checkpoint or exported model is missing, corrupt, or of the wrong kind/version."""


def code_version() -> str:
    """Version of the installed ``transip-openmm`` distribution."""
    from transip_openmm import __version__

    return __version__


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write a training checkpoint atomically (temporary file, fsync, rename).

    ``payload`` must hold at least ``model_config`` (dict), ``model_state`` and
    ``elements`` (list of atomic numbers); format keys are added here. A process killed
    while writing leaves the previous file at ``path`` intact.
    """
    for key in ("model_config", "model_state", "elements"):
        if key not in payload:
            raise KeyError(f"checkpoint payload lacks {key!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    data["format"] = CHECKPOINT_FORMAT
    data["format_version"] = CHECKPOINT_FORMAT_VERSION
    data.setdefault("code_version", code_version())
    with atomic_binary_file(path) as f:
        torch.save(data, f)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read and validate a training checkpoint (tensors mapped to the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist")
    kind = torch_file_kind(path)
    if kind == TORCHSCRIPT:
        raise ArtifactError(f"{path} is an exported model, not a training checkpoint: give the .ckpt file the "
                            "trainer wrote (e.g. runs/NAME/best.ckpt)")
    if kind != PICKLE_ARCHIVE:
        raise ArtifactError(f"checkpoint {path} {_KIND_PROBLEM[kind]}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ArtifactError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                            "it may be corrupt: use another checkpoint of the run") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path} is not a transip checkpoint (format={_format_of(data)!r})")
    version = data.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ArtifactError(
            f"checkpoint {path} has format version {version}; this code reads version "
            f"{CHECKPOINT_FORMAT_VERSION}"
        )
    return data


#: kinds of file told apart by :func:`torch_file_kind`
PICKLE_ARCHIVE, TORCHSCRIPT, TRUNCATED, TEXT, OTHER = "torch.save archive", "torchscript", "truncated", "text", "other"
_KIND_PROBLEM = {
    TRUNCATED: "is truncated or corrupt (an incomplete zip archive): write or copy it again",
    TEXT: "is a text file, not a file written by PyTorch",
    OTHER: "is not a file written by PyTorch (not a zip archive)",
}


def torch_file_kind(path: Path) -> str:
    """What a file is: a ``torch.save`` archive (checkpoint), a TorchScript file, a truncated
    zip archive, a text file or something else; read from the zip directory only."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.startswith(b"PK"):
        return OTHER if b"\0" in head else TEXT
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return TRUNCATED
    if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        return TORCHSCRIPT
    if any(name.endswith("data.pkl") for name in names):
        return PICKLE_ARCHIVE
    return OTHER


def unreadable_model_error(path: Path, exc: Exception) -> ArtifactError:
    """The error for an exported-model path that ``torch.jit.load`` could not read, saying
    what the file is instead (a checkpoint, a truncated file, a text file ...)."""
    kind = torch_file_kind(path) if path.is_file() else OTHER
    if kind == PICKLE_ARCHIVE:
        return ArtifactError(f"{path} is a training checkpoint, not an exported model: export it first "
                             f"(transip export {path} -o model.pt)")
    if kind in _KIND_PROBLEM:
        return ArtifactError(f"model file {path} {_KIND_PROBLEM[kind]}")
    return ArtifactError(f"model file {path} is not a readable TorchScript file ({type(exc).__name__}: "
                         f"{_first_line(exc)})")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def model_from_checkpoint(data: Dict[str, Any], use_ema: bool = True) -> TransIPModel:
    """Rebuild the model of a checkpoint dict; the EMA weights are used when present."""
    model = TransIPModel(ModelConfig.from_dict(data["model_config"]))
    state = data.get("ema_state") if use_ema and data.get("ema_state") is not None else data["model_state"]
    model.load_state_dict(state)
    model.eval()
    return model


def _format_of(data: Any) -> Optional[str]:
    return data.get("format") if isinstance(data, dict) else type(data).__name__


def read_exported_metadata(path: PathLike) -> Dict[str, Any]:
    """Metadata dict of an exported model file, validated for format and version."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file {path} does not exist")
    extra = {METADATA_ENTRY: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError/... for a file of another kind
        raise unreadable_model_error(path, exc) from exc
    return parse_exported_metadata(extra[METADATA_ENTRY], source=str(path))


def parse_exported_metadata(text: Union[str, bytes], source: str = "<model>") -> Dict[str, Any]:
    """Parse and validate the JSON metadata entry of an exported model."""
    if isinstance(text, bytes):
        text = text.decode()
    if not text:
        raise ArtifactError(f"{source} has no {METADATA_ENTRY} entry: not a transip exported model")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{source}: metadata entry {METADATA_ENTRY} is not valid JSON ({exc})") from exc
    if meta.get("format") != EXPORT_FORMAT:
        raise ArtifactError(f"{source} is not a transip exported model (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if version != EXPORT_FORMAT_VERSION:
        raise ArtifactError(
            f"{source} has format version {version}; this code reads version {EXPORT_FORMAT_VERSION}. "
            "Re-export the checkpoint with this version of transip-openmm."
        )
    return meta


def check_elements_supported(atomic_numbers: List[int], supported: List[int], source: str) -> None:
    """Raise with the offending element symbols if any atom's element is not supported."""
    from ase.data import chemical_symbols

    missing = sorted(set(int(z) for z in atomic_numbers) - set(int(z) for z in supported))
    if missing:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
        known = " ".join(chemical_symbols[z] for z in sorted(supported))
        raise ArtifactError(f"{source} does not support element(s) {names}; it knows: {known}")
