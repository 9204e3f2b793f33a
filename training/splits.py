"""Family-disjoint train/validation splits."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
from transip_openmm.training.dataset import MoleculeDataset


def family_split(
    dataset: MoleculeDataset, val_fraction: float, seed: int = 0
) -> Tuple[List[int], List[int]]:
    """Split indices so that no family appears in both parts.

    Families are shuffled with ``seed`` and assigned to validation until it holds at
    least ``val_fraction`` of the structures. Returns ``(train_indices, val_indices)``,
    each sorted. Raises if there is only one family (no disjoint split exists).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    families = dataset.families
    unique = sorted(set(families))
    if len(unique) < 2:
        raise ValueError(
            f"cannot make a family-disjoint split: the data has {len(unique)} family; "
            "give a separate validation file instead"
        )
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    target = val_fraction * len(families)
    counts = {f: 0 for f in unique}
    for f in families:
        counts[f] += 1
    val_families = set()
    n_val = 0
    for fam in order[:-1]:  # always keep at least one family for training
        if n_val >= target:
            break
        val_families.add(fam)
        n_val += counts[fam]
    train = [i for i, f in enumerate(families) if f not in val_families]
    val = [i for i, f in enumerate(families) if f in val_families]
    return train, val
