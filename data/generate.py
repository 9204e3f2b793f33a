"""``generate``: run a config's plan in worker processes and write finished shards.

Results come back in plan order (``Pool.imap``), so the shards are the same for any number
of workers. Each worker is a fresh (spawned) process with ``threads_per_worker`` OpenMP
threads. ``resume=True`` continues a killed or ``--max-structures``-limited run in the same
folder: shards in the manifest are kept, anything else (a half-written shard) is discarded
and made again — deterministically, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from tqdm import tqdm

from transip_openmm.data.config import GenerateConfig
from transip_openmm.data.errors import DataGenError
from transip_openmm.data.plan import Shard, Task, make_plan, make_shards, truncate
from transip_openmm.data.shards import load_manifest, save_manifest, write_shard
from transip_openmm.data.worker import TaskResult, TaskRunner, init_worker, run_task

logger = logging.getLogger(__name__)

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Summary:
    """Totals of the whole output folder after this call (structures written, frames dropped)."""

    structures: int
    dropped: int
    label_failures: int
    shards: int
    seconds: float
    made_now: int

    @property
    def structures_per_second(self) -> float:
        return self.made_now / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _thread_environment(threads: int) -> Iterator[None]:
    """Set the OpenMP/BLAS thread counts that spawned workers inherit; restore afterwards."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
    os.environ.update({k: str(threads) for k in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_output(output: Path, config: GenerateConfig, resume: bool) -> Dict:
    manifest = load_manifest(output)
    if manifest and not resume:
        raise DataGenError(f"{output} already holds a generation run; add --resume to continue it "
                           "or give a new --output")
    if manifest and manifest.get("config_sha256") != config.identity():
        raise DataGenError(f"{output} was made with another config or --seed; continue it with the same ones "
                           "or give a new --output")
    if not manifest:
        manifest = {"config_sha256": config.identity(), "seed": config.seed, "config": config.to_dict(),
                    "shards": {}}
    return manifest


def _discard_unlisted(output: Path, manifest: Dict) -> None:
    """Delete shard files the manifest does not list (left by a killed run)."""
    for path in output.iterdir():
        if path.name.startswith("shard_") and path.name not in manifest["shards"]:
            logger.info("discarding unfinished %s", path.name)
            path.unlink()


def _pending(shards: List[Shard], tasks: List[Task], manifest: Dict) -> List[tuple]:
    """(shard, its tasks in this plan) for every shard still to write."""
    last_task = tasks[-1].index if tasks else -1
    out = []
    for shard in shards:
        if shard.first > last_task:
            break
        wanted_last = min(shard.last, last_task)
        done = manifest["shards"].get(shard.name)
        if done is not None and done["last"] >= wanted_last:
            continue
        out.append((shard, tasks[shard.first: wanted_last + 1]))
    return out


def generate(config: GenerateConfig, output: Path, workers: int = 1, max_structures: Optional[int] = None,
             resume: bool = False, threads_per_worker: int = 1, stop_after_shards: Optional[int] = None,
             progress: bool = True) -> Summary:
    """Make the structures of ``config`` in ``output`` (see the module docstring).

    ``stop_after_shards`` stops after writing that many shards (an interruption, for tests).
    """
    if workers < 1 or threads_per_worker < 1:
        raise DataGenError("--workers and --threads-per-worker must be at least 1")
    TaskRunner(config)  # checks systems, samplers and labeller before any worker starts
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    manifest = _check_output(output, config, resume)
    _discard_unlisted(output, manifest)
    plan = make_plan(config)
    tasks = truncate(plan, max_structures)
    pending = _pending(make_shards(plan, config.structures_per_shard), tasks, manifest)
    for shard, _ in pending:  # an incomplete shard listed earlier is made again whole
        if shard.name in manifest["shards"]:
            del manifest["shards"][shard.name]
            (output / shard.name).unlink(missing_ok=True)
    todo = [t for _, shard_tasks in pending for t in shard_tasks]
    logger.info("%d tasks (%d structures) to run in %d shards, %d workers; labels at %s",
                len(todo), sum(t.n_frames for t in todo), len(pending), workers,
                config.labeller.get("method", "GFN2-xTB"))
    start = time.perf_counter()
    made_now = written = 0
    if todo:
        bar = tqdm(total=sum(t.n_frames for t in todo), unit="struct", disable=not progress, smoothing=0.05)
        with _thread_environment(threads_per_worker):
            pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=init_worker, initargs=(config.to_dict(), config.base_dir))
        try:
            results = pool.imap(run_task, todo, chunksize=1)
            for shard, shard_tasks in pending:
                collected: List[TaskResult] = []
                for _ in shard_tasks:
                    result = next(results)
                    collected.append(result)
                    bar.update(result.asked)
                    bar.set_postfix(dropped=sum(r.dropped for r in collected), refresh=False)
                n = write_shard(output / shard.name, (rec for r in collected for rec in r.records))
                made_now += n
                manifest["shards"][shard.name] = {
                    "first": shard.first, "last": shard_tasks[-1].index,
                    "complete": shard_tasks[-1].index == shard.last, "records": n,
                    "asked": sum(r.asked for r in collected), "dropped": sum(r.dropped for r in collected),
                    "label_failures": sum(r.label_failures for r in collected),
                    "sampling_failures": sum(r.sampling_failures for r in collected),
                }
                save_manifest(output, manifest)
                written += 1
                logger.info("%s: %d structures (%d dropped); %d made by this call, %.2f structures/s", shard.name, n,
                            manifest["shards"][shard.name]["dropped"], made_now,
                            made_now / (time.perf_counter() - start))
                if stop_after_shards is not None and written >= stop_after_shards:
                    logger.info("stopping after %d shards as asked", written)
                    break
        finally:
            pool.terminate()
            pool.join()
            bar.close()
    else:
        save_manifest(output, manifest)
    seconds = time.perf_counter() - start
    entries = manifest["shards"].values()
    summary = Summary(sum(e["records"] for e in entries), sum(e["dropped"] for e in entries),
                      sum(e["label_failures"] for e in entries), len(manifest["shards"]), seconds, made_now)
    logger.info("%s: %d structures in %d shards; %d frames dropped (%d failed labels, the rest teacher "
                "failures); this call made %d in %.1f s (%.1f structures/s)", output, summary.structures,
                summary.shards, summary.dropped, summary.label_failures, made_now, seconds,
                summary.structures_per_second)
    return summary
