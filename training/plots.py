"""Plots: learning curve from the CSV log, and energy/force parity plots."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

PathLike = Union[str, Path]


def _read_csv(path: PathLike) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: List[Dict[str, str]], key: str):
    xs, ys = [], []
    for r in rows:
        if r.get(key) not in (None, ""):
            xs.append(int(r["step"]))
            ys.append(float(r[key]))
    return np.array(xs), np.array(ys)


def plot_learning_curve(csv_path: PathLike, png_path: PathLike) -> None:
    """Training loss and train/validation energy and force MAE against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_csv(csv_path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key in ("loss", "loss_energy", "loss_force", "loss_equiv"):
        x, y = _column(rows, key)
        if len(x) and np.any(y > 0):
            axes[0].semilogy(x, y, label=key)
    axes[0].set_title("training loss")
    for ax, (train_key, val_key, label) in zip(axes[1:], [
        ("train_energy_mae_meV_per_atom", "val_energy_mae_meV_per_atom", "energy MAE (meV/atom)"),
        ("train_force_mae_meV_per_A", "val_force_mae_meV_per_A", "force MAE (meV/Å)"),
    ]):
        for key, style in ((train_key, "-"), (val_key, "o-")):
            x, y = _column(rows, key)
            if len(x):
                ax.semilogy(x, y, style, label=key.split("_")[0])
        ax.set_title(label)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def plot_parity(pred_e: Sequence[float], ref_e: Sequence[float], n_atoms: Sequence[int],
                pred_f: np.ndarray, ref_f: np.ndarray, png_path: PathLike, title: str = "") -> None:
    """Energy (per atom, relative to the mean) and force-component parity plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.asarray(n_atoms, dtype=float)
    pe, re_ = np.asarray(pred_e) / n, np.asarray(ref_e) / n
    shift = re_.mean()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, x, y, label in ((axes[0], re_ - shift, pe - shift, "E/atom − mean (eV)"),
                            (axes[1], np.ravel(ref_f), np.ravel(pred_f), "force component (eV/Å)")):
        ax.scatter(x, y, s=3, alpha=0.5)
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
