"""The plan of a run: tasks (one starting structure, some frames) grouped into shards.

Task ``k`` of job ``j`` makes ``frames_per_task`` frames (the last task of a job fewer) with
its own random stream ``SeedSequence([seed, j, k])``, so what a task makes does not depend
on how many workers run or on which tasks ran before. Tasks of all jobs are interleaved in
proportion (a task at fraction x of its job comes at fraction x of the plan), so any prefix
of the plan — ``--max-structures`` — holds the same mix. Consecutive tasks form a shard of
about ``structures_per_shard`` frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from transip_openmm.data.config import GenerateConfig


@dataclass(frozen=True)
class Task:
    """index: position in the plan; job: job index; k: index within the job; n_frames: frames asked for."""

    index: int
    job: int
    k: int
    n_frames: int


@dataclass(frozen=True)
class Shard:
    """Plan tasks ``first`` … ``last`` (inclusive), written to ``name``."""

    name: str
    first: int
    last: int


def make_plan(config: GenerateConfig) -> List[Task]:
    """Every task of the config, interleaved across jobs."""
    keyed = []
    for j, job in enumerate(config.jobs):
        n_tasks = math.ceil(job.structures / job.frames_per_task)
        for k in range(n_tasks):
            n_frames = min(job.frames_per_task, job.structures - k * job.frames_per_task)
            keyed.append(((k + 0.5) / n_tasks, j, k, n_frames))
    keyed.sort()
    return [Task(i, j, k, n) for i, (_, j, k, n) in enumerate(keyed)]


def make_shards(tasks: List[Task], structures_per_shard: int) -> List[Shard]:
    """Consecutive tasks grouped into shards of at least ``structures_per_shard`` planned frames."""
    shards, first, count = [], 0, 0
    for task in tasks:
        count += task.n_frames
        if count >= structures_per_shard or task.index == len(tasks) - 1:
            shards.append(Shard(f"shard_{len(shards):05d}.aselmdb", first, task.index))
            first, count = task.index + 1, 0
    return shards


def truncate(tasks: List[Task], max_structures: Optional[int]) -> List[Task]:
    """The shortest prefix of the plan that asks for at least ``max_structures`` frames."""
    if max_structures is None:
        return tasks
    total = 0
    for task in tasks:
        total += task.n_frames
        if total >= max_structures:
            return tasks[: task.index + 1]
    return tasks


def task_rng(seed: int, task: Task) -> np.random.Generator:
    """The random stream of one task."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), task.job, task.k]))
