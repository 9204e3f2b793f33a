"""The data-generation config (YAML): what to build, how to sample it, how to label it.

```yaml
seed: 0                        # default of --seed
root: ../..                    # relative paths resolve against this (itself relative to the file)
teacher: {method: GFN2-xTB}    # drives MD, relaxations, Hessians
labeller: {method: GFN2-xTB}   # or {method: wB97M-V, basis: def2-TZVPD, ...}
structures_per_shard: 1000
jobs:
  - name: water_md
    system: {kind: water_cluster, n_molecules: [2, 20]}
    sampler: {kind: md, temperatures: [300, 600, 1000]}
    structures: 2000           # frames to make (before dropped failures)
    frames_per_task: 20        # one task = one starting structure
```
Unknown keys are errors. System kinds are in ``systems.py``, samplers in ``samplers.py``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Union

import yaml

from transip_openmm.data.errors import DataGenError

_TOP_KEYS = {"seed", "root", "teacher", "labeller", "structures_per_shard", "jobs"}
_JOB_KEYS = {"name", "system", "sampler", "structures", "frames_per_task"}


@dataclass
class JobConfig:
    name: str
    system: Dict[str, Any]
    sampler: Dict[str, Any]
    structures: int
    frames_per_task: int = 20


@dataclass
class GenerateConfig:
    jobs: List[JobConfig]
    seed: int = 0
    root: str = "."
    teacher: Dict[str, Any] = field(default_factory=lambda: {"method": "GFN2-xTB"})
    labeller: Dict[str, Any] = field(default_factory=lambda: {"method": "GFN2-xTB"})
    structures_per_shard: int = 1000
    #: folder of the config file (not part of the config's identity)
    base_dir: str = "."

    @property
    def root_path(self) -> Path:
        return (Path(self.base_dir) / self.root).resolve()

    def identity(self) -> str:
        """SHA-256 of everything that decides the output (all but ``base_dir``)."""
        content = {k: v for k, v in asdict(self).items() if k != "base_dir"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "base_dir"}


def load_config(path: Union[str, Path]) -> GenerateConfig:
    """Read and check a config file; errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise DataGenError(f"config file {path} does not exist; give a YAML file such as data/configs/water.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataGenError(f"{path}: not valid YAML ({exc})") from exc
    return config_from_dict(raw, path)


def config_from_dict(raw: Any, path: Union[str, Path] = "<config>") -> GenerateConfig:
    if not isinstance(raw, dict):
        raise DataGenError(f"{path}: the config must be a mapping with a 'jobs' list")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise DataGenError(f"{path}: unknown keys {unknown}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    jobs_raw = raw.get("jobs")
    if not isinstance(jobs_raw, list) or not jobs_raw:
        raise DataGenError(f"{path}: 'jobs' must be a non-empty list of jobs")
    jobs = []
    for i, job in enumerate(jobs_raw):
        where = f"{path}: jobs[{i}]"
        if not isinstance(job, dict):
            raise DataGenError(f"{where} must be a mapping with name, system, sampler, structures")
        bad = sorted(set(job) - _JOB_KEYS)
        missing = sorted({"system", "sampler", "structures"} - set(job))
        if bad or missing:
            raise DataGenError(f"{where}: unknown keys {bad}, missing keys {missing}; "
                               f"allowed: {', '.join(sorted(_JOB_KEYS))}")
        if not isinstance(job["system"], dict) or not isinstance(job["sampler"], dict):
            raise DataGenError(f"{where}: 'system' and 'sampler' must be mappings with a 'kind'")
        structures, per_task = int(job["structures"]), int(job.get("frames_per_task", 20))
        if structures < 1 or per_task < 1:
            raise DataGenError(f"{where}: structures and frames_per_task must be positive")
        jobs.append(JobConfig(str(job.get("name", f"job{i}")), dict(job["system"]), dict(job["sampler"]),
                              structures, per_task))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise DataGenError(f"{path}: job names must be unique, got {names}")
    shard = int(raw.get("structures_per_shard", 1000))
    if shard < 1:
        raise DataGenError(f"{path}: structures_per_shard must be positive")
    return GenerateConfig(
        jobs=jobs, seed=int(raw.get("seed", 0)), root=str(raw.get("root", ".")),
        teacher=dict(raw.get("teacher") or {"method": "GFN2-xTB"}),
        labeller=dict(raw.get("labeller") or {"method": "GFN2-xTB"}),
        structures_per_shard=shard, base_dir=str(Path(path).resolve().parent) if str(path) != "<config>" else ".",
    )
