"""Training configuration: dataclasses read from YAML; unknown keys are an error.

Relative data paths are resolved against ``data.root``, which is itself relative to the
directory of the config file (default ``.``: the config file's directory). The example
configs in ``training/configs/`` set ``root: ../..`` (the repository root), so their
paths read like ``../shared/data/...`` from the repository and work from any CWD.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

import yaml
from transip_openmm.training.symmetry_modes import SYMMETRY_MODES, TRANSIP_PRESETS, transip_settings

from transip_openmm.model import ModelConfig
from transip_openmm.errors import TransIPError

T = TypeVar("T")


#: run.precision values: float32 throughout, or the Transformer blocks under bfloat16 autocast
PRECISIONS = ("float32", "bf16")


class ConfigError(TransIPError, ValueError):
    """The training configuration is invalid."""


@dataclass
class DataConfig:
    """Data files and batching.

    ``train``: files to train on. ``val``: validation files (they pick the best checkpoint);
    if empty, a split of ``train`` with ``val_fraction``. ``test``: files for reported
    metrics only (the trainer never reads them); if empty and ``test_fraction`` > 0, a test
    part is held out of ``train`` (never trained on, never used for selection; see
    ``splits.held_out_test``). ``split``: ``family`` (by molecule, ``splits.molecule_key``) or
    ``block`` (contiguous blocks of one trajectory). ``max_train`` / ``max_val``: optional caps
    (first structures after the split, for quick runs). ``elements``: atomic numbers the
    model supports (default: those in the training data). ``force_only``: extra training
    files at *other* levels of theory: their forces train the model, their energies are
    never used (energies of different levels cannot share one set of element references);
    they take no part in the split, the reference fit or validation.
    ``extra_train``: training files added after the split (never in validation or test), at
    any stated level of theory: each level other than ``train``'s gets its own element
    references and energy head on the shared trunk (multi-fidelity; forces of every level
    train the trunk); ``level_of_theory``: the level of records that state none (the OMol25
    files: ``wB97M-V/def2-TZVPD``). The level of ``train`` is the default head (export).
    ``train_repeats``: the training part of ``train`` counts this many times per epoch (it
    balances a small set at the default level against large ``extra_train`` data).
    ``max_force``: drop ``extra_train`` records whose largest atomic force exceeds this many
    eV/Å (generated close contacts deep in the repulsive wall); null keeps every record.

    Paths in ``train``, ``val``, ``extra_train`` and ``force_only`` may be files, directories or glob patterns
    of ``.aselmdb`` shards. ``lazy``: open ``.aselmdb`` data as a lazy sharded dataset (an
    index in memory, records decoded on demand by the loader's workers; the index is cached
    beside the shards) instead of reading every record into memory; default (null): lazy
    for directories, globs and ``.aselmdb`` files, in memory for everything else.
    ``stats_sample``: the number of training structures (a seeded random sample) the
    element references, the energy scale and the force RMS are computed from, by a
    streaming pass; null: all of them.
    """

    train: List[str] = field(default_factory=list)
    val: List[str] = field(default_factory=list)
    force_only: List[str] = field(default_factory=list)
    extra_train: List[str] = field(default_factory=list)
    level_of_theory: str = ""
    train_repeats: int = 1
    max_force: Optional[float] = None
    root: str = "."
    test: List[str] = field(default_factory=list)
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    split: str = "family"
    split_seed: int = 0
    max_atoms_per_batch: int = 512
    max_train: Optional[int] = None
    max_val: Optional[int] = None
    elements: Optional[List[int]] = None
    lazy: Optional[bool] = None
    stats_sample: Optional[int] = None


@dataclass
class ObjectiveConfig:
    """Loss weights and the symmetry mode (``none | augment | transip`` or a named TransIP
    variant, ``symmetry_modes.TRANSIP_PRESETS``).

    TransIP settings (``symmetry_modes.TransIPSettings``; None: the variant's preset):
    ``equiv_weight`` λ; ``layers`` index the hidden states (0 = input tokens, i = output of
    block i, negative from the end); ``temperature`` the InfoNCE τ; ``supervise_rotated``
    (supervised loss on R·x); ``transform`` (T_ψ: ``group | mlp | legacy``);
    ``vector_channels`` (k of the group T_ψ); ``transform_hidden`` (width of an MLP T_ψ);
    ``negatives`` (``exclude_equivalent | other_molecules | all``); ``align`` (``mse |
    cosine``); ``consistency_weight`` (weight of (E(Rx) − E(x))²).
    ``energy_scale``: ``residual`` (per-atom std of the least-squares residual),
    ``force_rms`` or a number in eV. ``force_loss``: ``mse`` or ``huber`` (on forces divided
    by the training force RMS, quadratic below ``huber_delta``): robust to the few very large
    forces of OMol25's high-energy samples. ``energy_loss_norm``: the per-atom energy error
    that counts 1 in the energy loss: ``energy_scale`` (the model's, default) or
    ``references`` (the per-atom error of the fitted references alone, a few meV/atom: use
    it with a small ``energy_weight`` such as 0.01, as the example configs do; with weight
    1 the energy term swamped the force term in short runs here). ``zero_init_readout``: start
    from E = Σ references (zero last readout layer).
    """

    symmetry: str = "none"
    energy_weight: float = 1.0
    force_weight: float = 10.0
    equiv_weight: Optional[float] = None
    layers: Optional[List[int]] = None
    temperature: Optional[float] = None
    transform_hidden: Optional[int] = None
    supervise_rotated: Optional[bool] = None
    transform: Optional[str] = None
    vector_channels: Optional[int] = None
    negatives: Optional[str] = None
    align: Optional[str] = None
    consistency_weight: Optional[float] = None
    energy_scale: Union[str, float] = "residual"
    force_loss: str = "mse"
    energy_loss_norm: str = "energy_scale"
    zero_init_readout: bool = False
    huber_delta: float = 1.0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio · lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    max_steps: int = 2000
    min_lr_ratio: float = 0.05
    grad_clip: float = 10.0
    ema_decay: Optional[float] = None
    accumulate: int = 1


@dataclass
class RunConfig:
    """Logging, validation and checkpoint cadence (in optimiser steps), and how to execute.

    ``num_workers``: DataLoader worker processes that decode and collate batches (0: the
    main process); ``prefetch_factor``: messages each worker prepares ahead, a message being
    ``batching.BATCHES_PER_MESSAGE`` (4) batches. ``precision``:
    ``float32`` or ``bf16`` (the Transformer blocks under bfloat16 autocast; geometry
    features, energies, forces, losses and the master weights stay float32; meant for
    CUDA, allowed on the CPU; see ``precision.py``). These may change between a run and
    its resumption (``precision`` changes the numbers slightly).
    """

    log_every: int = 10
    val_every: int = 200
    checkpoint_every: int = 200
    val_rotation_structures: int = 0
    best_metric: str = "force_mae_meV_per_A"
    device: str = "cpu"
    threads: Optional[int] = None
    progress: bool = True
    num_workers: int = 0
    prefetch_factor: int = 2
    precision: str = "float32"


@dataclass
class TrainConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: Dict[str, Any] = field(default_factory=dict)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    #: directory of the config file (set on load; data.root is relative to it)
    config_dir: str = "."

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def model_config(self) -> ModelConfig:
        hints = typing.get_type_hints(ModelConfig)
        for key, value in (self.model or {}).items():
            if key in hints:
                _check_type(value, hints[key], f"model.{key}")
        try:
            config = ModelConfig.from_dict(self.model)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model: {exc}") from exc
        for key in ("d_model", "n_layers", "n_heads", "n_rbf"):
            if getattr(config, key) < 1:
                raise ConfigError(f"model.{key} must be at least 1, got {getattr(config, key)}")
        if config.d_model % config.n_heads:
            raise ConfigError(f"model.d_model ({config.d_model}) must be a multiple of model.n_heads "
                              f"({config.n_heads})")
        return config

    def _validate_numbers(self) -> None:
        """Ranges of the optimiser, cadence and batching numbers (checked before any work)."""
        o, r = self.optim, self.run
        checks = [
            ("optim.lr", o.lr, o.lr > 0), ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0),
            ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0),
            ("optim.min_lr_ratio", o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1),
            ("optim.grad_clip", o.grad_clip, o.grad_clip >= 0),
            ("optim.betas", o.betas, len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas)),
            ("optim.ema_decay", o.ema_decay, o.ema_decay is None or 0 < o.ema_decay < 1),
            ("run.log_every", r.log_every, r.log_every >= 1), ("run.val_every", r.val_every, r.val_every >= 1),
            ("run.checkpoint_every", r.checkpoint_every, r.checkpoint_every >= 1),
            ("data.max_atoms_per_batch", self.data.max_atoms_per_batch, self.data.max_atoms_per_batch >= 1),
        ]
        for key, value, ok in checks:
            if not ok:
                raise ConfigError(f"config key {key!r} is out of range: {value!r}")

    def resolve(self, path: str) -> Path:
        """Absolute path of a data file named in the config."""
        p = Path(path).expanduser()
        if p.is_absolute():
            return p
        root = Path(self.data.root).expanduser()
        if not root.is_absolute():
            root = Path(self.config_dir) / root
        return (root / p).resolve()

    def validate(self) -> None:
        self._validate_numbers()
        if self.objective.symmetry not in SYMMETRY_MODES:
            raise ConfigError(f"objective.symmetry must be one of {SYMMETRY_MODES}, got {self.objective.symmetry!r}")
        if self.objective.symmetry in TRANSIP_PRESETS:
            try:
                transip_settings(self.objective.symmetry, asdict(self.objective)).check()
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from exc
        if not self.data.train:
            raise ConfigError("data.train lists no files")
        if self.data.split not in ("family", "block"):
            raise ConfigError(f"data.split must be 'family' or 'block', got {self.data.split!r}")
        if not 0.0 <= self.data.test_fraction < 1.0 or not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError("data.val_fraction and data.test_fraction must be in [0, 1)")
        if self.optim.max_steps < 1:
            raise ConfigError("optim.max_steps must be ≥ 1")
        if self.optim.accumulate < 1:
            raise ConfigError(f"optim.accumulate must be ≥ 1 (micro-batches per step), got {self.optim.accumulate}")
        if self.run.precision not in PRECISIONS:
            raise ConfigError(f"run.precision must be one of {PRECISIONS}, got {self.run.precision!r}")
        if self.run.num_workers < 0 or self.run.prefetch_factor < 1:
            raise ConfigError("run.num_workers must be ≥ 0 and run.prefetch_factor ≥ 1, got "
                              f"{self.run.num_workers} and {self.run.prefetch_factor}")
        if self.data.train_repeats < 1:
            raise ConfigError(f"data.train_repeats must be at least 1, got {self.data.train_repeats}")
        if self.data.max_force is not None and not self.data.max_force > 0:
            raise ConfigError(f"data.max_force must be a positive force in eV/Å or null, got {self.data.max_force}")
        if self.data.stats_sample is not None and self.data.stats_sample < 1:
            raise ConfigError(f"data.stats_sample must be a positive number of structures or null, "
                              f"got {self.data.stats_sample}")
        es = self.objective.energy_scale
        if isinstance(es, str) and es not in ("residual", "force_rms"):
            raise ConfigError(f"objective.energy_scale must be 'residual', 'force_rms' or a number, got {es!r}")
        if self.objective.energy_loss_norm not in ("energy_scale", "references"):
            raise ConfigError("objective.energy_loss_norm must be 'energy_scale' or 'references', "
                              f"got {self.objective.energy_loss_norm!r}")
        if self.objective.force_loss not in ("mse", "huber"):
            raise ConfigError(f"objective.force_loss must be 'mse' or 'huber', got {self.objective.force_loss!r}")
        self.model_config()


def _build(cls: Type[T], data: Any, where: str) -> T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        name = f"{where}.{key}" if where else str(key)
        raise ConfigError(f"unknown config key {name!r}: {hint}allowed here: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get((cls, name))
        key = f"{where}.{name}" if where else name
        if sub:
            kwargs[name] = _build(sub, value, key)
        else:
            _check_type(value, hints[name], key)
            kwargs[name] = value
    return cls(**kwargs)


def _check_type(value: Any, annotation: Any, key: str) -> None:
    """Raise :class:`ConfigError` if ``value`` does not fit the field's type annotation."""
    if not _fits(value, annotation):
        raise ConfigError(f"config key {key!r} must be {_describe(annotation)}, got {value!r}")


def _describe(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if annotation in names:
        return names[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    return "a mapping" if origin is dict else str(annotation)


def _fits(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Union:
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


_SECTIONS = {
    (TrainConfig, "data"): DataConfig,
    (TrainConfig, "objective"): ObjectiveConfig,
    (TrainConfig, "optim"): OptimConfig,
    (TrainConfig, "run"): RunConfig,
}


def config_from_dict(data: Dict[str, Any], config_dir: Union[str, Path] = ".") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` (unknown keys raise :class:`ConfigError`)."""
    data = dict(data or {})
    data.setdefault("config_dir", str(Path(config_dir).resolve()))
    cfg = _build(TrainConfig, data, "")
    cfg.validate()
    return cfg


def load_config(path: Union[str, Path]) -> TrainConfig:
    """Read a YAML training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"config file {path} is not valid YAML ({detail})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, model, ...), "
                          f"not a {type(data).__name__}")
    try:
        return config_from_dict(data, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def save_config(cfg: TrainConfig, path: Union[str, Path]) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
