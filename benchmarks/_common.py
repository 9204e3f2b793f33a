"""Helpers shared by the benchmark scripts: timing, machine load, tables, JSON, models."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# openmm-ml and e3nn load whole pickled models/constants that we create ourselves;
# torch >= 2.6 refuses those by default.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

logger = logging.getLogger("benchmarks")

#: Candidate TransIP sizes measured by the speed benchmarks (d_model, n_layers, n_heads).
TRANSIP_SIZES: Dict[str, Dict[str, Any]] = {
    "transip-d128-L4": {"d_model": 128, "n_layers": 4, "n_heads": 8},
    "transip-d96-L4": {"d_model": 96, "n_layers": 4, "n_heads": 8},
    "transip-d64-L3": {"d_model": 64, "n_layers": 3, "n_heads": 8},
}


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def load_average() -> Optional[float]:
    """1-minute load average of the machine (None where unavailable)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def machine_info() -> Dict[str, Any]:
    """Facts to store next to timings."""
    import torch

    info = {
        "host_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1min": load_average(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def best_rate(run: Callable[[int], None], target_s: float, blocks: int = 3, first: int = 2) -> float:
    """Best rate (calls of ``run(1)`` per second) over ``blocks`` blocks of about ``target_s``.

    ``run(k)`` performs k units of work. The block size is found from a timed probe;
    the best block is reported because other processes can only slow a block down.
    """
    t0 = time.perf_counter()
    run(first)
    probe = max(time.perf_counter() - t0, 1e-6) / first
    k = max(1, int(target_s / probe))
    best = 0.0
    for _ in range(blocks):
        t0 = time.perf_counter()
        run(k)
        best = max(best, k / (time.perf_counter() - t0))
    return best


def print_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> None:
    """Plain-text table of ``rows`` (dicts) with the given columns."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(path: Optional[str], rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> None:
    """Write ``rows`` (a list) to ``path``; run facts go to ``<path>.meta.json`` beside it."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1))
    logger.info("wrote %s", out)


def random_transip(config: Dict[str, Any], seed: int = 0):
    """An untrained TransIP model with plausible per-element reference energies (eV)."""
    import torch

    from transip_openmm.model import ModelConfig, TransIPModel

    torch.manual_seed(seed)
    model = TransIPModel(ModelConfig(**config))
    refs = {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2042.0}
    with torch.no_grad():
        for z, e in refs.items():
            model.element_energies[z] = e
    return model.eval()
