"""The lazy sharded dataset: same records as the in-memory reader, a cached index that
follows its shards, level of theory read when present."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from training_helpers import TEST_DATA, write_shards
from transip_openmm.training import shards as shards_mod
from transip_openmm.training.dataset import ConcatDataset, DataError
from transip_openmm.training.readers import read_dataset, read_datasets
from transip_openmm.training.shards import INDEX_DIR, ShardedDataset, find_shards, index_locations


def _same(a, b):
    assert (a.numbers == b.numbers).all() and (a.positions == b.positions).all()
    assert a.energy == b.energy and (a.forces == b.forces).all()
    assert (a.charge, a.multiplicity, a.family, a.source, a.index) == (b.charge, b.multiplicity, b.family,
                                                                       b.source, b.index)


def test_lazy_records_equal_the_in_memory_reader(tmp_path):
    folder = write_shards(tmp_path / "data", n_shards=3, per_shard=5)
    shutil.copy(TEST_DATA / "omol25_mini.aselmdb", folder / "zz_omol25_mini.aselmdb")
    lazy = ShardedDataset(folder)
    memory = read_datasets(find_shards(folder))
    assert len(lazy) == len(memory) == 15 + 8
    np.testing.assert_array_equal(lazy.n_atoms, memory.n_atoms)
    assert lazy.families == memory.families and lazy.elements == memory.elements
    for i in range(len(lazy)):
        _same(lazy[i], memory[i])
    part = lazy.subset([20, 3, 7])
    assert len(part) == 3 and part.elements == memory.subset([20, 3, 7]).elements
    _same(part[0], memory[20])
    assert part.content_hash() == lazy.subset([20, 3, 7]).content_hash() != lazy.subset([3, 7, 20]).content_hash()
    force_only = part.without_energies()
    assert not any(m.has_energy for m in force_only) and len(force_only.with_energies()) == 0
    with pytest.raises(DataError, match=r"zz_omol25_mini\.aselmdb, record 0: element"):
        lazy.validate([1, 6, 8])


def test_paths_globs_and_lists(tmp_path):
    folder = write_shards(tmp_path / "data", n_shards=3, per_shard=2)
    assert len(ShardedDataset(str(folder / "shard00[02].aselmdb"))) == 4
    assert len(ShardedDataset([folder / "shard001.aselmdb", folder / "shard000.aselmdb"])) == 4
    with pytest.raises(DataError, match="no .aselmdb shard"):
        ShardedDataset(tmp_path / "empty*.aselmdb")


def test_index_is_built_once_and_follows_its_shard(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "data", n_shards=2, per_shard=4)
    built = []
    real_build = shards_mod.build_index
    monkeypatch.setattr(shards_mod, "build_index", lambda shard: built.append(shard.name) or real_build(shard))
    ShardedDataset(folder)
    assert sorted(built) == ["shard000.aselmdb", "shard001.aselmdb"]
    assert (folder / INDEX_DIR / "shard000.aselmdb.npz").is_file()
    ShardedDataset(folder)
    assert len(built) == 2  # cached
    write_shards(tmp_path / "other", n_shards=1, per_shard=6, seed=1)
    shutil.copy(tmp_path / "other" / "shard000.aselmdb", folder / "shard000.aselmdb")  # the shard changes
    data = ShardedDataset(folder)
    assert built[2:] == ["shard000.aselmdb"] and len(data) == 10
    assert np.allclose(data[0].positions, read_dataset(tmp_path / "other" / "shard000.aselmdb")[0].positions)


def test_index_goes_to_the_user_cache_when_the_data_folder_is_not_writable(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "data", n_shards=1, per_shard=3)
    (folder / INDEX_DIR).write_text("a file where the cache folder would go: the folder cannot be made")
    monkeypatch.setenv("TRANSIP_CACHE_DIR", str(tmp_path / "cache"))
    assert len(ShardedDataset(folder)) == 3
    beside, user = index_locations(folder / "shard000.aselmdb")
    assert not beside.exists() and user.is_file() and user.is_relative_to(tmp_path / "cache")


def test_index_is_not_written_into_a_folder_marked_read_only(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "data", n_shards=1, per_shard=3)
    monkeypatch.setenv("TRANSIP_CACHE_DIR", str(tmp_path / "cache"))
    folder.chmod(0o555)  # also for a process running as root, which the permission bits do not stop
    try:
        assert len(ShardedDataset(folder)) == 3
        beside, user = index_locations(folder / "shard000.aselmdb")
        assert not beside.parent.exists() and user.is_file()
    finally:
        folder.chmod(0o755)


def test_level_of_theory_is_read_when_present(tmp_path):
    plain = ShardedDataset(write_shards(tmp_path / "a", n_shards=1, per_shard=2))
    xtb = ShardedDataset(write_shards(tmp_path / "b", n_shards=1, per_shard=2, level_of_theory="GFN2-xTB"))
    assert plain.levels_of_theory == [""] and plain[0].level_of_theory == ""
    assert xtb.levels_of_theory == ["GFN2-xTB"] and xtb[1].level_of_theory == "GFN2-xTB"
    both = ConcatDataset([plain, xtb])
    assert len(both) == 4 and both[3].level_of_theory == "GFN2-xTB" and both.elements == [1, 6, 8]


def test_environments_are_recycled_without_changing_records(tmp_path, monkeypatch):
    """Random reads close the shard maps every RECYCLE_READS reads (bounded RSS), also inside
    a long read of a whole shard, and the records stay the same."""
    folder = write_shards(tmp_path / "data", n_shards=2, per_shard=6)
    monkeypatch.setattr(shards_mod, "RECYCLE_READS", 3)
    data = ShardedDataset(folder)
    first = [data[i] for i in range(len(data))]
    for whole, mol in zip(shards_mod.iter_shard(folder / "shard000.aselmdb"), first):
        _same(whole, mol)
        _same(data[11], first[11])  # random reads between the long read's records
    for i in (11, 0, 5, 7, 3, 11):
        _same(data[i], first[i])


def test_molecule_keys_from_the_index_equal_the_splits_keys(tmp_path):
    """The splits of a lazy dataset need no record decoded, and equal those of the records."""
    from transip_openmm.training.splits import molecule_key, molecule_split

    folder = write_shards(tmp_path / "data", n_shards=2, per_shard=9)
    shutil.copy(TEST_DATA / "omol25_mini.aselmdb", folder / "zz_omol25_mini.aselmdb")
    lazy = ShardedDataset(folder)
    memory = read_datasets(find_shards(folder))
    assert lazy.molecule_keys() == [molecule_key(m) for m in memory]
    assert lazy.subset([20, 2]).molecule_keys() == [molecule_key(memory[20]), molecule_key(memory[2])]
    a, b = molecule_split(lazy, 0.3, 0.2, seed=1), molecule_split(memory, 0.3, 0.2, seed=1)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)


def test_reading_a_shard_leaves_it_free_for_ase(tmp_path):
    """After the in-memory reader, or close_shards() after lazy reads, ase.db.connect opens the file."""
    from ase.db import connect

    folder = write_shards(tmp_path / "data", n_shards=1, per_shard=3)
    shard = folder / "shard000.aselmdb"
    assert len(read_dataset(shard)) == 3
    db = connect(str(shard), type="aselmdb", readonly=True)
    assert len(db) == 3
    db.close()
    data = ShardedDataset(folder)
    data[1]
    shards_mod.close_shards()
    db = connect(str(shard), type="aselmdb", readonly=True)
    positions = db.get(id=2).toatoms().positions.tolist()
    db.close()
    assert positions == data[1].positions.tolist()


def _deep_equal(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, list)) or isinstance(b, (np.ndarray, list)):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype.kind == b.dtype.kind and bool((a == b).all())
    return a == b and type(a) is type(b)


def test_record_decoder_equals_ase_on_real_and_generated_records(tmp_path):
    import lmdb
    from ase_db_backends.aselmdb import decode_bytestream, encode_object

    folder = write_shards(tmp_path / "data", n_shards=1, per_shard=4)
    raws = []
    for shard in [TEST_DATA / "omol25_mini.aselmdb", folder / "shard000.aselmdb"]:
        env = lmdb.open(str(shard), subdir=False, readonly=True, lock=False)
        with env.begin() as txn:
            raws += [v for k, v in txn.cursor() if k.isdigit()]
        env.close()
    # objects beyond real arrays take ASE's decoder
    raws.append(encode_object({"numbers": np.array([1, 1]), "data": {"z": np.array([1 + 2j])}},
                              compress=True, json_encode=True))
    raws.append(encode_object({"energy": 1.0, "data": {"z": 3 + 1j}}, compress=True, json_encode=True))
    assert len(raws) == 8 + 4 + 2
    for raw in raws:
        ours, ase_row = shards_mod._decode_row(raw), decode_bytestream(raw, decompress=True, json_decode=True)
        assert _deep_equal(ours, ase_row)
