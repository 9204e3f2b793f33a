"""Samplers: what each one promises about its frames."""

import numpy as np
from ase.data import atomic_masses, covalent_radii

from transip_openmm.data import electrolytes, peptides
from transip_openmm.data.labellers import XTBLabeller
from transip_openmm.data.samplers import BondScanSampler, CloseContactSampler, DisplacementSampler, MDSampler
from transip_openmm.data.structures import bond_graph


def test_md_frames_carry_the_teachers_label_at_their_geometry():
    structure = peptides.build_capped_peptide(["GLY"], seed=0)
    xtb = XTBLabeller()
    sampler = MDSampler(temperatures=[600], relax_steps=2, equilibration_steps=3, stride=2)
    frames = list(sampler.sample(structure, 3, np.random.default_rng(0), xtb, keep_labels=True))
    assert [f.method for f in frames] == ["md_600K"] * 3
    assert not np.allclose(frames[0].atoms.positions, frames[1].atoms.positions)
    for frame in frames:
        fresh = XTBLabeller().label(frame.atoms, 0, 1)
        assert abs(frame.label.energy - fresh.energy) < 1e-5
        assert np.abs(frame.label.forces - fresh.forces).max() < 2e-3  # SCC restart vs fresh guess


def test_normal_mode_displacements_keep_the_centre_of_mass():
    structure = peptides.build_capped_peptide(["ALA"], seed=0)
    sampler = DisplacementSampler(mode="normal_modes", relax_steps=0, temperatures=[300])
    frames = list(sampler.sample(structure, 4, np.random.default_rng(1), XTBLabeller()))
    masses = atomic_masses[structure.atoms.numbers]
    for frame in frames:
        dx = frame.atoms.positions - structure.atoms.positions
        assert np.abs(masses @ dx).max() / masses.sum() < 1e-3  # Å: rigid translations removed (numerical Hessian)
        assert 0.01 < np.sqrt((dx**2).sum(axis=1).mean()) < 0.5  # thermal amplitudes at 300 K, Å


def test_bond_scan_goes_from_compression_to_dissociation():
    structure = peptides.build_capped_peptide(["SER"], seed=0)
    frames = list(BondScanSampler(0.75, 2.5).sample(structure, 6, np.random.default_rng(2), None))
    lengths = np.array([float(f.method.split("_")[-1].rstrip("A")) for f in frames])
    assert np.all(np.diff(lengths) > 0)
    assert lengths[-1] / lengths[0] > 3.2  # 2.5 / 0.75 of the bond length


def test_close_contacts_sit_on_the_repulsive_wall():
    structure = electrolytes.electrolyte_cluster("Na+", ["EC", "DMC"], None, np.random.default_rng(3))
    frames = list(CloseContactSampler(0.65, 0.8).sample(structure, 5, np.random.default_rng(4), None))
    radii = covalent_radii[structure.atoms.numbers]
    for frame in frames:
        d = np.linalg.norm(frame.atoms.positions[:, None] - frame.atoms.positions[None], axis=-1)
        ratio = d / (radii[:, None] + radii[None, :])
        np.fill_diagonal(ratio, np.inf)
        assert 0.6 < ratio.min() < 0.85
    assert bond_graph(frames[0].atoms) != bond_graph(structure.atoms)
