"""Evaluation metrics, defined once. Inputs in eV and eV/Å; outputs in meV, meV/Å.

All functions take per-structure lists (structures may differ in size) or arrays and
return plain floats, so they serve the trainer's validation and ``transip evaluate``.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from transip_openmm.units import MEV_PER_EV


def energy_mae_meV(pred: Sequence[float], ref: Sequence[float]) -> float:
    """Mean |E_pred − E_ref| over structures (meV)."""
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(ref))) * MEV_PER_EV)


def energy_mae_meV_per_atom(pred: Sequence[float], ref: Sequence[float], n_atoms: Sequence[int]) -> float:
    """Mean |E_pred − E_ref| / n_atoms over structures (meV/atom)."""
    err = np.abs(np.asarray(pred) - np.asarray(ref)) / np.asarray(n_atoms, dtype=np.float64)
    return float(np.mean(err) * MEV_PER_EV)


def _stack(forces: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1, 3) for f in forces], axis=0)


def force_mae_meV_per_A(pred: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Mean absolute force-component error over all atoms (meV/Å)."""
    return float(np.mean(np.abs(_stack(pred) - _stack(ref))) * MEV_PER_EV)


def force_rmse_meV_per_A(pred: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Root-mean-square force-component error over all atoms (meV/Å)."""
    return float(np.sqrt(np.mean((_stack(pred) - _stack(ref)) ** 2)) * MEV_PER_EV)


def force_cos_mean(pred: Sequence[np.ndarray], ref: Sequence[np.ndarray], eps: float = 1e-12) -> float:
    """Mean cosine similarity between predicted and reference force vectors per atom."""
    p, r = _stack(pred), _stack(ref)
    cos = (p * r).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1) + eps)
    return float(np.mean(cos))


def rotation_energy_std_meV(energies: np.ndarray) -> float:
    """Rotation error of energies: ``energies`` (S, K) for S structures under K rotations;
    mean over structures of the std over rotations (meV)."""
    return float(np.mean(np.std(np.asarray(energies, dtype=np.float64), axis=1)) * MEV_PER_EV)


def rotation_force_err_rel(rotated_forces: Sequence[np.ndarray], forces: Sequence[np.ndarray],
                           rotations: Sequence[np.ndarray], eps: float = 1e-12) -> float:
    """Mean over structures and rotations of ‖F(Rx) − R·F(x)‖ / ‖F(x)‖ (Frobenius norms).

    rotated_forces[s]: (K, n, 3) forces at R_k x; forces[s]: (n, 3) at x;
    rotations[s]: (K, 3, 3).
    """
    errs = []
    for fr, f, rots in zip(rotated_forces, forces, rotations):
        expected = np.einsum("kij,nj->kni", np.asarray(rots), np.asarray(f))
        num = np.linalg.norm((np.asarray(fr) - expected).reshape(len(rots), -1), axis=1)
        errs.extend(num / (np.linalg.norm(f) + eps))
    return float(np.mean(errs))


def accuracy_metrics(pred_e: Sequence[float], ref_e: Sequence[float], n_atoms: Sequence[int],
                     pred_f: Sequence[np.ndarray], ref_f: Sequence[np.ndarray]) -> Dict[str, float]:
    """The accuracy metrics of the evaluation JSON (no rotation terms)."""
    return {
        "n_structures": int(len(ref_e)),
        "energy_mae_meV": energy_mae_meV(pred_e, ref_e),
        "energy_mae_meV_per_atom": energy_mae_meV_per_atom(pred_e, ref_e, n_atoms),
        "force_mae_meV_per_A": force_mae_meV_per_A(pred_f, ref_f),
        "force_rmse_meV_per_A": force_rmse_meV_per_A(pred_f, ref_f),
        "force_cos_mean": force_cos_mean(pred_f, ref_f),
    }


def latent_equivariance_err_rel(pred: np.ndarray, target: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over tokens of ‖T_ψ(h, R) − h_R‖ / ‖h_R‖: pred, target (M, d)."""
    pred, target = np.asarray(pred), np.asarray(target)
    return float(np.mean(np.linalg.norm(pred - target, axis=1) / (np.linalg.norm(target, axis=1) + eps)))
