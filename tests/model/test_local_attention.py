"""Local attention: dense = neighbour-list path, locality, continuity (neighbour lists: test_neighbors)."""

from __future__ import annotations

import torch

from model_helpers import energy_forces, inputs, make_model, random_molecule


def test_neighbor_path_equals_dense_path_with_cutoff():
    dense = make_model(attention_cutoff=3.0, neighbor_list_min_atoms=10**9)
    sparse = make_model(attention_cutoff=3.0, neighbor_list_min_atoms=1)
    sparse.load_state_dict(dense.state_dict())
    z, pos = random_molecule(64, spacing=1.3)  # ~7 Å across: larger than the cutoff
    e_d, f_d = energy_forces(dense, z, pos)
    e_s, f_s = energy_forces(sparse, z, pos)
    torch.testing.assert_close(e_s, e_d, rtol=0, atol=1e-10)
    torch.testing.assert_close(f_s, f_d, rtol=0, atol=1e-10)
    e_j, f_j = energy_forces(torch.jit.script(sparse), z, pos)
    torch.testing.assert_close(e_j, e_s, rtol=0, atol=1e-12)
    torch.testing.assert_close(f_j, f_s, rtol=0, atol=1e-12)


def test_attention_is_local():
    """Fragment a's embeddings ignore how fragment b (beyond the cutoff) is arranged.

    Moving two atoms of b in opposite directions keeps the centroid (the only global
    input, through the coordinate embedding) fixed.
    """
    model = make_model(attention_cutoff=3.0, neighbor_list_min_atoms=1)
    za, pa = random_molecule(6, seed=1)
    zb, pb = random_molecule(6, seed=2)
    far = pb + torch.tensor([30.0, 0.0, 0.0], dtype=torch.float64)
    moved = far.clone()
    moved[0, 0, 1] += 0.4
    moved[0, 1, 1] -= 0.4
    z = torch.cat([za, zb], 1)
    mask, charge, mult = inputs(z)
    with torch.no_grad():
        _, h1 = model(z, torch.cat([pa, far], 1), mask, charge, mult)
        _, h2 = model(z, torch.cat([pa, moved], 1), mask, charge, mult)
    torch.testing.assert_close(h2[-1][0, :6], h1[-1][0, :6], rtol=0, atol=1e-12)
    assert (h2[-1][0, 6:] - h1[-1][0, 6:]).abs().max() > 1e-3


def test_energy_is_continuous_across_the_cutoff():
    model = make_model(attention_cutoff=3.0, neighbor_list_min_atoms=1, zbl_repulsion=False)
    z = torch.tensor([[6, 8, 1]])
    energies = []
    for r in (3.0 - 1e-8, 3.0 + 1e-8):
        pos = torch.tensor([[[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [1.2 + r, 0.0, 0.0]]], dtype=torch.float64)
        # atom 2 at distance r from atom 1 and r + 1.2 from atom 0
        energies.append(float(energy_forces(model, z, pos)[0]))
    assert abs(energies[0] - energies[1]) < 1e-7
    # without the envelope the neighbour's full attention weight would appear at once
