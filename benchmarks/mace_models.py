"""MACE models with MACE-OFF23 hyper-parameters and random weights (speed comparisons only).

MACE-OFF23 (Kovács et al. 2023): 10 elements, 2 interactions, correlation order 3,
max_ell 3, 8 Bessel functions, polynomial cutoff p=5, radial MLP [64, 64, 64];
small = 96x0e channels, r_max 4.5 Å; medium = 128x0e+128x1o, r_max 5.0 Å.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

#: H C N O F P S Cl Br I
MACE_OFF_ELEMENTS = [1, 6, 7, 8, 9, 15, 16, 17, 35, 53]

MACE_OFF: Dict[str, Dict] = {
    "mace-off-small": {"hidden_irreps": "96x0e", "r_max": 4.5},
    "mace-off-medium": {"hidden_irreps": "128x0e+128x1o", "r_max": 5.0},
}


def build_mace(size: str, dtype: torch.dtype = torch.float32, seed: int = 0,
               elements: Optional[Sequence[int]] = None) -> torch.nn.Module:
    """A randomly initialised ``ScaleShiftMACE`` with MACE-OFF23 ``size`` hyper-parameters, for
    ``elements`` (atomic numbers; default MACE-OFF23's ten)."""
    elements = list(elements) if elements is not None else MACE_OFF_ELEMENTS
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    hp = MACE_OFF[size]
    model = modules.ScaleShiftMACE(
        r_max=hp["r_max"],
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2,
        num_elements=len(elements),
        hidden_irreps=o3.Irreps(hp["hidden_irreps"]),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(elements)),
        avg_num_neighbors=10.0,
        atomic_numbers=elements,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    return model.to(dtype).eval()


def save_mace(size: str, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a whole-model pickle, the format ``MLPotential('mace', modelPath=...)`` loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_mace(size, dtype), path)
    return path
