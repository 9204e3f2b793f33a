"""Frame averaging over the octahedral group: exact invariance, forces, scripting."""

from __future__ import annotations

import torch

from model_helpers import energy_forces, make_model, random_molecule
from transip_openmm.frames import FrameAveragedModel, octahedral_rotations


def test_octahedral_group_is_a_group_of_proper_rotations():
    rot = octahedral_rotations()
    assert rot.shape == (24, 3, 3)
    eye = torch.eye(3, dtype=torch.float64)
    for r in rot:
        torch.testing.assert_close(r @ r.T, eye, rtol=0, atol=0)
        assert float(torch.det(r)) == 1.0
    keys = {tuple(r.flatten().tolist()) for r in rot}
    assert len(keys) == 24
    for a in rot:  # closed under multiplication
        for b in rot[::5]:
            assert tuple((a @ b).flatten().tolist()) in keys


def test_energy_exactly_invariant_and_forces_equivariant_under_the_group():
    model = make_model()
    fa = FrameAveragedModel(model)
    z, pos = random_molecule(9)
    e0, f0 = energy_forces(fa, z, pos)
    for r in octahedral_rotations()[1:]:
        e, f = energy_forces(fa, z, pos @ r.T)
        assert torch.equal(e, e0)
        torch.testing.assert_close(f, f0 @ r.T, rtol=0, atol=1e-12)


def test_frame_averaging_reduces_rotation_error_for_arbitrary_rotations():
    model = make_model(seed=4)
    fa = FrameAveragedModel(model)
    z, pos = random_molecule(9)
    g = torch.Generator().manual_seed(0)
    plain, averaged = [], []
    for _ in range(8):
        q = torch.randn(4, generator=g, dtype=torch.float64)
        w, x, y, zq = (q / q.norm()).tolist()
        r = torch.tensor([
            [1 - 2 * (y * y + zq * zq), 2 * (x * y - zq * w), 2 * (x * zq + y * w)],
            [2 * (x * y + zq * w), 1 - 2 * (x * x + zq * zq), 2 * (y * zq - x * w)],
            [2 * (x * zq - y * w), 2 * (y * zq + x * w), 1 - 2 * (x * x + y * y)],
        ], dtype=torch.float64)
        plain.append(float(energy_forces(model, z, pos @ r.T)[0]))
        averaged.append(float(energy_forces(fa, z, pos @ r.T)[0]))
    assert torch.tensor(averaged).std() < 0.5 * torch.tensor(plain).std()


def test_scripted_frame_average_equals_eager_and_batches():
    model = make_model()
    fa = FrameAveragedModel(model)
    scripted = torch.jit.script(fa)
    z, pos = random_molecule(7)
    for _ in range(3):
        e_s, f_s = energy_forces(scripted, z, pos)
    e_e, f_e = energy_forces(fa, z, pos)
    torch.testing.assert_close(e_s, e_e, rtol=0, atol=1e-12)
    torch.testing.assert_close(f_s, f_e, rtol=0, atol=1e-12)
    assert scripted.element_energies.dtype == torch.float64
    assert set(dict(fa.state_dict())) == {"model." + k for k in model.state_dict()}


def test_frame_average_neighbor_path_equals_dense():
    dense = FrameAveragedModel(make_model(attention_cutoff=3.0, neighbor_list_min_atoms=10**9))
    sparse = FrameAveragedModel(make_model(attention_cutoff=3.0, neighbor_list_min_atoms=1))
    z, pos = random_molecule(20)
    e_d, f_d = energy_forces(dense, z, pos)
    e_s, f_s = energy_forces(sparse, z, pos)
    torch.testing.assert_close(e_s, e_d, rtol=0, atol=1e-10)
    torch.testing.assert_close(f_s, f_d, rtol=0, atol=1e-10)
