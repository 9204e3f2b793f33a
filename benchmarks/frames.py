"""Frame averaging (24 octahedral rotations): invariance gained and time paid.

    python benchmarks/frames.py [--quick] [--json OUT.json] [--checkpoint CKPT]

For a model (a training checkpoint, or random weights at the default size) and a few
molecules (alanine dipeptide; acac and OMol25 sample structures when ../shared/data exists),
reports the rotation error of the energy (std over Haar-random rotations, meV) and of the
forces (mean ‖F(Rx) − R F(x)‖ / ‖F‖) with and without frame averaging, the largest energy
change under the 24 group rotations (exactly 0 with averaging), and the energy+forces time
of one structure for both (TorchScript, float32, 1 thread).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, print_table, random_transip, setup_logging, write_json  # noqa: E402

import torch  # noqa: E402


def haar_rotations(k: int, seed: int = 0) -> torch.Tensor:
    """(k, 3, 3) float64 rotations from normalised Gaussian quaternions."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(k, 4, generator=g, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], 1).view(k, 3, 3)


def molecules() -> Dict[str, Any]:
    """name -> (atomic numbers (1, n), positions (1, n, 3) Å float64)."""
    import mdtraj

    out = {}
    pdb = mdtraj.load(str(REPO / "tests" / "data" / "alanine_dipeptide.pdb"))
    out["alanine-dipeptide"] = (torch.tensor([[a.element.atomic_number for a in pdb.topology.atoms]]),
                                torch.tensor(pdb.xyz[0] * 10.0, dtype=torch.float64).unsqueeze(0))
    acac = REPO.parent / "shared" / "data" / "botnet" / "dataset_acac_test_MD_300K.xyz"
    if acac.is_file():
        import ase.io

        atoms = ase.io.read(str(acac), index=0)
        out["acac"] = (torch.tensor(atoms.numbers).unsqueeze(0),
                       torch.tensor(atoms.positions, dtype=torch.float64).unsqueeze(0))
    return out


def energy_forces(model, z, pos):
    mask = torch.ones_like(z, dtype=torch.bool)
    c = torch.zeros(z.shape[0], dtype=torch.long)
    m = torch.ones(z.shape[0], dtype=torch.long)
    p = pos.clone().requires_grad_(True)
    e, _ = model(z, p, mask, c, m)
    (g,) = torch.autograd.grad(e.sum(), p)
    return e.detach(), -g


def time_eval(model, z, pos, target_s: float) -> float:
    for _ in range(3):
        energy_forces(model, z, pos)
    best = float("inf")
    for _ in range(3):
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < target_s / 3 or k < 3:
            energy_forces(model, z, pos)
            k += 1
        best = min(best, (time.perf_counter() - t0) / k)
    return best * 1e3


def main(argv: Optional[List[str]] = None) -> int:
    from transip_openmm.artifacts import load_checkpoint, model_from_checkpoint
    from transip_openmm.frames import FrameAveragedModel, octahedral_rotations
    from transip_openmm.model import prepare_for_inference

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint", type=Path, default=None, help="training checkpoint (default: random)")
    parser.add_argument("--rotations", type=int, default=32)
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    if args.checkpoint:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint))
        name = args.checkpoint.name
    else:
        model, name = random_transip({}), "random-d128-L4"
    model = prepare_for_inference(model).double()
    fa = FrameAveragedModel(model)
    rots = haar_rotations(8 if args.quick else args.rotations)
    group = octahedral_rotations()
    rows = []
    for mol, (z, pos) in molecules().items():
        for label, m in (("plain", model), ("frames24", fa)):
            e0, f0 = energy_forces(m, z, pos)
            energies, ferr = [], []
            for r in rots:
                e, f = energy_forces(m, z, pos @ r.T)
                energies.append(float(e))
                ferr.append(float((f - f0 @ r.T).norm() / f0.norm()))
            group_dev = max(abs(float(energy_forces(m, z, pos @ g.T)[0] - e0)) for g in group)
            scripted = torch.jit.script(copy.deepcopy(m).float())
            t = time_eval(scripted, z, pos.float(), 0.5 if args.quick else 2.0)
            rows.append({"model": name, "molecule": mol, "n_atoms": z.shape[1], "variant": label,
                         "rot_energy_std_meV": 1e3 * float(torch.tensor(energies).std()),
                         "rot_force_err_rel": sum(ferr) / len(ferr),
                         "group_max_dE_eV": group_dev, "ms_per_eval_fp32": t})
    print_table(rows, ["model", "molecule", "n_atoms", "variant", "rot_energy_std_meV", "rot_force_err_rel",
                       "group_max_dE_eV", "ms_per_eval_fp32"])
    meta = machine_info()
    meta.update({"benchmark": "frames", "command": " ".join(sys.argv)})
    write_json(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
