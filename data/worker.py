"""Running one task: build the starting structure, sample frames, label them.

Runs in a worker process; the labeller, teacher, builders and samplers are made once per
process from the config and kept. Returns plain records (numpy arrays and a metadata dict),
the number of frames asked for and the number dropped because a labeller or the teacher
failed (an SCF that did not converge): never a crash, never a NaN in a record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from transip_openmm.data.config import GenerateConfig, config_from_dict
from transip_openmm.data.errors import DataGenError, LabelFailure
from transip_openmm.data.labellers import XTBLabeller, make_labeller
from transip_openmm.data.plan import Task, task_rng
from transip_openmm.data.samplers import make_sampler
from transip_openmm.data.systems import make_system

logger = logging.getLogger(__name__)


@dataclass
class Record:
    """numbers (n,); positions (n, 3) Å; energy eV; forces (n, 3) eV/Å; data: the row.data of the shard."""

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    data: Dict[str, Any]


@dataclass
class TaskResult:
    index: int
    records: List[Record] = field(default_factory=list)
    asked: int = 0
    dropped: int = 0
    #: frames whose label failed (e.g. SCF not converged); sampling runs the teacher stopped early
    label_failures: int = 0
    sampling_failures: int = 0


class TaskRunner:
    """Everything a worker needs, built once from the config."""

    def __init__(self, config: GenerateConfig):
        self.config = config
        self.identity = config.identity()
        self.labeller = make_labeller(config.labeller)
        teacher = make_labeller(config.teacher)
        if not isinstance(teacher, XTBLabeller):
            raise DataGenError(f"teacher.method {config.teacher.get('method')!r}: the teacher must be a tblite "
                               "method (GFN2-xTB or GFN1-xTB); put DFT under labeller")
        self.teacher = teacher
        # the teacher's own labels are reused for MD frames when it is the labeller too
        self.reuse_teacher_labels = config.teacher == config.labeller
        if self.reuse_teacher_labels:
            self.teacher = self.labeller
        root = config.root_path
        self.builders = [make_system(job.system, root, f"jobs[{j}].system") for j, job in enumerate(config.jobs)]
        self.samplers = [make_sampler(job.sampler, f"jobs[{j}].sampler") for j, job in enumerate(config.jobs)]

    def run(self, task: Task) -> TaskResult:
        job = self.config.jobs[task.job]
        rng = task_rng(self.config.seed, task)
        for labeller in (self.labeller, self.teacher):  # no state from earlier tasks: same result for any worker
            if hasattr(labeller, "reset"):
                labeller.reset()
        result = TaskResult(task.index, asked=task.n_frames)
        structure = self.builders[task.job](task.k, rng)
        frames = []
        try:
            for frame in self.samplers[task.job].sample(structure, task.n_frames, rng, self.teacher,
                                                        keep_labels=self.reuse_teacher_labels):
                frames.append(frame)
        except LabelFailure as exc:
            result.sampling_failures += 1
            logger.debug("task %d (%s): sampling stopped: %s", task.index, job.name, exc)
        result.asked = max(task.n_frames, len(frames))
        subset, _, name = structure.family.partition("/")
        for i, frame in enumerate(frames):
            label = frame.label
            if label is None:
                try:
                    label = self.labeller.label(frame.atoms, structure.charge, structure.multiplicity)
                except LabelFailure as exc:
                    result.label_failures += 1
                    logger.debug("task %d frame %d dropped: %s", task.index, i, exc)
                    continue
            data = {
                "source": f"{subset}/{name}_{structure.charge}_{structure.multiplicity}/task{task.index:06d}_{i:03d}",
                "data_id": f"transip_gen_{subset.removeprefix('gen_')}",
                "charge": int(structure.charge),
                "spin": int(structure.multiplicity),
                "num_atoms": int(len(frame.atoms)),
                "family": structure.family,
                "sampling": frame.method,
                "job": job.name,
                "level_of_theory": self.labeller.level_of_theory,
                "teacher": self.teacher.level_of_theory,
                "task": int(task.index),
                "config_sha256": self.identity,
            }
            result.records.append(Record(np.asarray(frame.atoms.numbers), np.asarray(frame.atoms.positions),
                                         float(label.energy), np.asarray(label.forces), data))
        result.dropped = result.asked - len(result.records)
        return result


_RUNNER: Optional[TaskRunner] = None


def init_worker(config_dict: Dict[str, Any], base_dir: str) -> None:
    """Pool initializer: build this process's :class:`TaskRunner`."""
    global _RUNNER
    config = config_from_dict(config_dict)
    config.base_dir = base_dir
    _RUNNER = TaskRunner(config)


def run_task(task: Task) -> TaskResult:
    """Pool function: run one task with this process's runner."""
    assert _RUNNER is not None, "init_worker was not called"
    return _RUNNER.run(task)
