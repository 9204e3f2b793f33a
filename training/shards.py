"""Lazy dataset over OMol25-layout ``.aselmdb`` shards: an index in memory, records decoded on demand.

A shard is an ASE database in LMDB (the format of the OMol25 release and of the project's
generated data; ``ase.db.connect(path, type="aselmdb")`` reads the same files). Each
record is a zlib-compressed JSON row with ``numbers``, ``positions`` (Å), ``energy`` (eV),
``forces`` (eV/Å) and ``data`` holding ``charge``, ``spin`` (the multiplicity), ``source``
(the family key is derived from it) and, in generated shards, ``level_of_theory``.

The index of a shard (record id, atom count, family, charge, multiplicity, level of theory,
the set of elements and the formula of every record; 30 bytes a record) is built by one pass over the
shard and cached beside it in ``.transip-index/<shard>.npz``; a cache whose shard changed
(size and mtime, or, when only the mtime differs, a digest of the first and last MiB) is
rebuilt. Where the data directory is read-only the cache goes to the user cache directory
(``$TRANSIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/transip-openmm``, else
``~/.cache/transip-openmm``). Records are decoded from the shard on every access; LMDB
environments are opened lazily in each process, so DataLoader workers open their own.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from transip_openmm.training.dataset import DataError, Molecule, MoleculeDataset, validate_molecule

from transip_openmm.model import MAX_ATOMIC_NUMBER

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SHARD_SUFFIX = ".aselmdb"
#: Version of the cached index layout; a cache of another version is rebuilt.
INDEX_VERSION = 3
INDEX_DIR = ".transip-index"
_DIGEST_BYTES = 1 << 20
_CHARGE_SPIN_SUFFIX = re.compile(r"_(-?\d+)_(\d+)$")
_CHEMBL = re.compile(r"CHEMBL\d+")


def omol25_family(source: str) -> str:
    """Family key of an OMol25 record from its ``source`` path.

    The key is the source folder name without its trailing ``_<charge>_<spin>``; for
    ``orbnet_*`` entries the CHEMBL id when present. Prefixed with the sub-set name.
    """
    parts = [p for p in source.split("/") if p]
    subset = parts[0] if parts else ""
    folder = parts[1] if len(parts) > 1 else subset
    if subset.startswith("orbnet"):
        match = _CHEMBL.search(folder)
        if match:
            return f"{subset}/{match.group(0)}"
    return f"{subset}/{_CHARGE_SPIN_SUFFIX.sub('', folder)}"


def find_shards(spec: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """The ``.aselmdb`` files named by ``spec``: files, directories (their ``*.aselmdb``,
    sorted) or glob patterns, in the order given. Raises :class:`DataError` if one matches
    nothing."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    shards: List[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(path.glob(f"*{SHARD_SUFFIX}"))
        elif path.is_file():
            found = [path]
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        else:
            found = []
        if not found:
            raise DataError(f"{item}: no {SHARD_SUFFIX} shard found (expected a file, a directory or a glob)")
        shards.extend(found)
    return shards


def is_shard_spec(item: PathLike) -> bool:
    """True for an ``.aselmdb`` file, a directory, or a glob pattern (a sharded-data path)."""
    path = Path(item).expanduser()
    return path.suffix.lower() == SHARD_SUFFIX or path.is_dir() or glob.has_magic(str(item))


# ---------------------------------------------------------------------------- records

#: LMDB environments open in this process, by resolved shard path (LMDB allows one per file
#: and process); a forked process starts afresh.
_ENVS: Dict[str, Any] = {}
_ENVS_PID = [os.getpid()]
#: Records read through the open environments since they were last closed, and the paths in a
#: long read (:func:`iter_shard`) that must stay open.
_READS = [0]
_PINNED: set = set()
#: Random reads after which the environments are closed (and reopened on the next read). A
#: read maps the pages around its record (the kernel faults in up to 64 KiB at a time), and
#: mapped pages count in the process's RSS until the map goes: without this, RSS grows with
#: the records a run has touched, up to the size of the data. 512 reads bound it to ~32 MiB.
RECYCLE_READS = 512


def _env_for(path: Path, random_read: bool = False):
    """The read-only LMDB environment of a shard, opened once per process; ``random_read``
    counts towards :data:`RECYCLE_READS`."""
    return _env_at(str(Path(path).resolve()), random_read)


def _env_at(key: str, random_read: bool = False):
    """:func:`_env_for` of the shard whose resolved path is ``key`` (callers that read many
    records resolve once: resolving costs a system call per path component, a third of a
    record read)."""
    import lmdb

    if _ENVS_PID[0] != os.getpid():  # inherited handles must not be used after a fork
        _ENVS.clear()
        _PINNED.clear()
        _ENVS_PID[0] = os.getpid()
    if random_read:
        _READS[0] += 1
        if _READS[0] > RECYCLE_READS:
            close_shards()
            _READS[0] = 1
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False,
                                     meminit=False, max_readers=1024)
    return env


def _close_env(path: Path) -> None:
    """Close this process's environment of a shard (before re-reading a changed file)."""
    env = _ENVS.pop(str(Path(path).resolve()), None) if _ENVS_PID[0] == os.getpid() else None
    if env is not None:
        env.close()


class _NeedsAseDecoder(Exception):
    """A record holds an object :func:`_array_hook` does not rebuild."""


def _array_hook(dct: Dict[str, Any]) -> Any:
    """JSON object hook for the rows ASE writes: rebuilds real ``__ndarray__`` objects and
    hands anything else ASE encodes (complex numbers, dates, ASE objects) back to ASE."""
    array = dct.get("__ndarray__")
    if array is not None:
        shape, dtype, flat = array
        if np.dtype(dtype).kind == "c":
            raise _NeedsAseDecoder
        return np.asarray(flat, dtype=dtype).reshape(shape)
    if any(key.startswith("__") for key in dct):
        raise _NeedsAseDecoder
    return dct


def _decode_row(raw: bytes) -> Dict[str, Any]:
    """A shard record (zlib-compressed ASE JSON) as a dict of its fields.

    The fields a :class:`Molecule` needs are decoded here directly, at half the cost of ASE's
    general decoder (measured: 0.05 vs 0.09 ms a record), which still decodes any record that
    holds an object beyond plain arrays."""
    text = zlib.decompress(raw)
    try:
        return json.loads(text, object_hook=_array_hook)
    except _NeedsAseDecoder:
        from ase_db_backends.aselmdb import decode_bytestream

        return decode_bytestream(raw, decompress=True, json_decode=True)


def record_to_molecule(row: Dict[str, Any], shard: Path, index: int) -> Molecule:
    """A decoded row as a :class:`Molecule` (not yet validated); ``index`` is its position in the shard."""
    where = f"{shard}, record {index}"
    data = row.get("data") or {}
    if "energy" not in row or "forces" not in row:
        raise DataError(f"{where}: no energy or forces")
    if "charge" not in data or "spin" not in data:
        raise DataError(f"{where}: row.data lacks 'charge' or 'spin'")
    source = str(data.get("source", f"{shard.name}:{index}"))
    return Molecule(
        numbers=np.asarray(row["numbers"], dtype=np.int64),
        positions=np.asarray(row["positions"], dtype=np.float64),
        energy=float(row["energy"]),
        forces=np.asarray(row["forces"], dtype=np.float64),
        charge=int(data["charge"]),
        multiplicity=int(data["spin"]),
        family=omol25_family(source),
        source=str(shard),
        index=index,
        level_of_theory=str(data.get("level_of_theory", "")),
    )


def _record_ids(txn) -> np.ndarray:
    """Sorted integer ids of the records of an open shard (reserved keys skipped)."""
    ids = [int(k) for k in txn.cursor().iternext(keys=True, values=False) if k.isdigit()]
    return np.array(sorted(ids), dtype=np.int64)


# ---------------------------------------------------------------------------- index

@dataclass
class ShardIndex:
    """Per-record facts of one shard, known without decoding records.

    record_ids (n,) int64 LMDB keys in read order; n_atoms (n,) int32; charge, multiplicity
    (n,) int16; family (n,) int32 codes into ``families``; level (n,) int16 codes into
    ``levels``; element_set (n,) int32 codes into ``element_masks`` (u, 2) uint64, the distinct
    element sets as 128-bit masks (bit Z-1 set if element Z occurs); formula (n,) int32 codes
    into ``formulas`` (Hill formulas, what the molecule keys of the splits need).
    """

    path: Path
    record_ids: np.ndarray
    n_atoms: np.ndarray
    charge: np.ndarray
    multiplicity: np.ndarray
    family: np.ndarray
    families: List[str]
    level: np.ndarray
    levels: List[str]
    element_set: np.ndarray
    element_masks: np.ndarray
    formula: np.ndarray
    formulas: List[str]

    def __len__(self) -> int:
        return int(self.record_ids.shape[0])

    def masks_of(self, positions: np.ndarray) -> np.ndarray:
        """(u', 2) the distinct element masks of the records at ``positions``."""
        return self.element_masks[np.unique(self.element_set[positions])]


def element_mask(numbers: np.ndarray) -> Tuple[int, int]:
    """The two 64-bit words of the element set of ``numbers`` (bit Z-1 for element Z)."""
    lo = hi = 0
    for z in np.unique(numbers).tolist():
        if z <= 64:
            lo |= 1 << (z - 1)
        else:
            hi |= 1 << (z - 65)
    return lo, hi


def mask_elements(mask: np.ndarray) -> List[int]:
    """Atomic numbers of the union of (k, 2) uint64 element masks."""
    if mask.size == 0:
        return []
    lo, hi = (int(w) for w in np.bitwise_or.reduce(mask.reshape(-1, 2), axis=0))
    bits = [(lo >> (z - 1)) & 1 if z <= 64 else (hi >> (z - 65)) & 1 for z in range(1, MAX_ATOMIC_NUMBER + 1)]
    return [z for z, bit in zip(range(1, MAX_ATOMIC_NUMBER + 1), bits) if bit]


def hill_formula(numbers: np.ndarray) -> str:
    """Hill formula of atomic numbers (the splits' :func:`~transip_openmm.training.splits.formula`)."""
    from transip_openmm.training.splits import formula

    return formula(numbers)


def formula_numbers(hill: str) -> np.ndarray:
    """Atomic numbers (one per atom, Hill order) of a formula such as ``C2H6O``."""
    from ase.data import atomic_numbers
    from ase.formula import Formula

    return np.array([atomic_numbers[sym] for sym, n in Formula(hill).count().items() for _ in range(n)],
                    dtype=np.int64)


def _fingerprint(path: Path) -> Dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def shard_digest(path: Path) -> str:
    """SHA-256 of a shard's size, first MiB and last MiB (cheap; detects rewritten shards)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_DIGEST_BYTES))
        if size > _DIGEST_BYTES:
            f.seek(max(_DIGEST_BYTES, size - _DIGEST_BYTES))
            h.update(f.read(_DIGEST_BYTES))
    return h.hexdigest()


def user_cache_dir() -> Path:
    """Where indexes of shards in read-only directories go."""
    if os.environ.get("TRANSIP_CACHE_DIR"):
        return Path(os.environ["TRANSIP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "transip-openmm"


def _marked_read_only(folder: Path) -> bool:
    """Whether ``folder``'s permission bits let nobody write (a process running as root could,
    but should not, write there)."""
    try:
        return stat.S_IMODE(folder.stat().st_mode) & 0o222 == 0
    except OSError:
        return True


def index_locations(shard: Path) -> List[Path]:
    """Candidate cache files of a shard's index: beside the data, then the user cache directory."""
    shard = shard.resolve()
    key = hashlib.sha256(str(shard).encode()).hexdigest()[:16]
    return [shard.parent / INDEX_DIR / f"{shard.name}.npz",
            user_cache_dir() / "shard-index" / f"{key}-{shard.name}.npz"]


def iter_shard(shard: Path) -> Iterator[Molecule]:
    """Every record of a shard in read order, decoded and validated (one pass, one transaction)."""
    key = str(Path(shard).resolve())
    opened_here = key not in _ENVS or _ENVS_PID[0] != os.getpid()
    _PINNED.add(key)
    try:
        with _env_for(shard).begin() as txn:
            for i, rid in enumerate(_record_ids(txn).tolist()):
                mol = record_to_molecule(_decode_row(txn.get(str(rid).encode("ascii"))), shard, i)
                validate_molecule(mol)
                yield mol
    finally:
        _PINNED.discard(key)
        if opened_here:  # a whole-file read leaves no environment open (ase.db.connect may follow)
            _close_env(shard)


def close_shards() -> None:
    """Close every shard environment this process holds (a lazy dataset reopens on its next
    read); LMDB refuses a second open of a file in one process, e.g. ``ase.db.connect``."""
    if _ENVS_PID[0] == os.getpid():
        for name in [k for k in _ENVS if k not in _PINNED]:
            _ENVS.pop(name).close()


def build_index(shard: Path) -> ShardIndex:
    """Index a shard by decoding each of its records once (validating them as it goes)."""
    _close_env(shard)  # the file changed (or was never read): no stale mapping
    with _env_for(shard).begin() as txn:
        ids = _record_ids(txn)
    n = len(ids)
    n_atoms = np.zeros(n, np.int32)
    charge = np.zeros(n, np.int16)
    mult = np.zeros(n, np.int16)
    family = np.zeros(n, np.int32)
    level = np.zeros(n, np.int16)
    element_set = np.zeros(n, np.int32)
    formula = np.zeros(n, np.int32)
    formula_codes: Dict[str, int] = {}
    fam_codes: Dict[str, int] = {}
    lot_codes: Dict[str, int] = {}
    set_codes: Dict[Tuple[int, int], int] = {}
    for i, mol in enumerate(iter_shard(shard)):
        n_atoms[i] = mol.n_atoms
        charge[i] = mol.charge
        mult[i] = mol.multiplicity
        family[i] = fam_codes.setdefault(mol.family, len(fam_codes))
        level[i] = lot_codes.setdefault(mol.level_of_theory, len(lot_codes))
        element_set[i] = set_codes.setdefault(element_mask(mol.numbers), len(set_codes))
        formula[i] = formula_codes.setdefault(hill_formula(mol.numbers), len(formula_codes))
    logger.info("indexed %d records of %s", n, shard)
    masks = np.array(list(set_codes), dtype=np.uint64).reshape(-1, 2)
    return ShardIndex(shard, ids, n_atoms, charge, mult, family, list(fam_codes), level, list(lot_codes),
                      element_set, masks, formula, list(formula_codes))


def _save_index(index: ShardIndex, target: Path, fingerprint: Dict[str, int], digest: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, version=np.int64(INDEX_VERSION), size=np.int64(fingerprint["size"]),
             mtime_ns=np.int64(fingerprint["mtime_ns"]), digest=np.str_(digest),
             record_ids=index.record_ids, n_atoms=index.n_atoms, charge=index.charge,
             multiplicity=index.multiplicity, family=index.family, families=np.array(index.families, dtype=str),
             level=index.level, levels=np.array(index.levels, dtype=str), element_set=index.element_set,
             element_masks=index.element_masks, formula=index.formula,
             formulas=np.array(index.formulas, dtype=str))
    os.replace(tmp, target)


def _load_cached(shard: Path, cached: Path, fingerprint: Dict[str, int]) -> Optional[ShardIndex]:
    try:
        with np.load(cached, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION or int(z["size"]) != fingerprint["size"]:
                return None
            if int(z["mtime_ns"]) != fingerprint["mtime_ns"] and str(z["digest"]) != shard_digest(shard):
                return None
            return ShardIndex(shard, z["record_ids"], z["n_atoms"], z["charge"], z["multiplicity"], z["family"],
                              [str(s) for s in z["families"]], z["level"], [str(s) for s in z["levels"]],
                              z["element_set"], z["element_masks"], z["formula"], [str(f) for f in z["formulas"]])
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("ignoring unreadable index cache %s (%s)", cached, exc)
        return None


def load_index(shard: PathLike) -> ShardIndex:
    """The index of ``shard``: from its cache when still valid, else built and cached."""
    shard = Path(shard)
    if not shard.is_file():
        raise DataError(f"data file {shard} does not exist")
    fingerprint = _fingerprint(shard)
    locations = index_locations(shard)
    for cached in locations:
        if cached.is_file():
            index = _load_cached(shard, cached, fingerprint)
            if index is not None:
                return index
    index = build_index(shard)
    digest = shard_digest(shard)
    if _marked_read_only(shard.resolve().parent):  # its owner's intent, even where root could write
        locations = locations[1:]
    for target in locations:
        try:
            _save_index(index, target, fingerprint, digest)
            logger.info("index of %s cached in %s", shard, target)
            break
        except OSError as exc:  # read-only data directory: try the next place
            logger.info("cannot cache the index of %s in %s (%s)", shard, target, exc)
    else:
        logger.warning("the index of %s could not be cached anywhere; it is rebuilt on every run", shard)
    return index


def load_indexes(shards: Sequence[Path], workers: int = 0) -> List[ShardIndex]:
    """:func:`load_index` of every shard; ``workers`` > 1 processes build missing indexes in parallel."""
    if workers > 1 and len(shards) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(shards))) as pool:
            return list(pool.map(load_index, shards))
    return [load_index(p) for p in shards]


# ---------------------------------------------------------------------------- dataset

class ShardedDataset:
    """Records of ``.aselmdb`` shards, decoded on demand (the :class:`LabelledDataset` interface).

    Held in memory: each shard's index (30 bytes a record) and the selected rows
    ``rows`` (k, 2) int32 (shard number, position in the shard) with a ``has_energy`` (k,)
    bool flag; nothing else. ``subset`` and ``with_energies`` return views on the same shards.
    """

    def __init__(self, shards: Union[PathLike, Sequence[PathLike], Sequence[ShardIndex]],
                 rows: Optional[np.ndarray] = None, has_energy: Optional[np.ndarray] = None,
                 index_workers: int = 0) -> None:
        if isinstance(shards, (list, tuple)) and shards and isinstance(shards[0], ShardIndex):
            self.indexes: List[ShardIndex] = list(shards)  # type: ignore[arg-type]
        else:
            self.indexes = load_indexes(find_shards(shards), index_workers)  # type: ignore[arg-type]
        if rows is None:
            rows = np.concatenate([np.stack([np.full(len(ix), k, np.int32), np.arange(len(ix), dtype=np.int32)], 1)
                                   for k, ix in enumerate(self.indexes)] or [np.zeros((0, 2), np.int32)])
        self.rows = np.asarray(rows, dtype=np.int32).reshape(-1, 2)
        self.has_energy = (np.ones(len(self.rows), bool) if has_energy is None
                           else np.asarray(has_energy, dtype=bool))
        self._env_keys = [str(Path(ix.path).resolve()) for ix in self.indexes]

    # -- per-record facts from the index
    def _column(self, name: str) -> np.ndarray:
        out = np.zeros(len(self.rows), dtype=getattr(self.indexes[0], name).dtype if self.indexes else np.int64)
        for k, ix in enumerate(self.indexes):
            sel = self.rows[:, 0] == k
            if sel.any():
                out[sel] = getattr(ix, name)[self.rows[sel, 1]]
        return out

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def shards(self) -> List[Path]:
        return [ix.path for ix in self.indexes]

    @property
    def n_atoms(self) -> np.ndarray:
        """(M,) int64 atoms per structure."""
        return self._column("n_atoms").astype(np.int64)

    @property
    def families(self) -> List[str]:
        codes = self._column("family")
        out: List[str] = [""] * len(self)
        for k, ix in enumerate(self.indexes):
            for j in np.flatnonzero(self.rows[:, 0] == k).tolist():
                out[j] = ix.families[codes[j]]
        return out

    def molecule_keys(self) -> List[str]:
        """:func:`~transip_openmm.training.splits.molecule_key` of every record, from the index
        (family and formula; no record decoded): what the splits of big data sets use."""
        from transip_openmm.training.splits import molecule_key

        out: List[str] = [""] * len(self)
        for k, ix in enumerate(self.indexes):
            where = np.flatnonzero(self.rows[:, 0] == k)
            pos = self.rows[where, 1]
            pairs = np.stack([ix.family[pos], ix.formula[pos]], 1)
            unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
            keys = [molecule_key(Molecule(formula_numbers(ix.formulas[f]), None, 0.0, None, family=ix.families[fam]))
                    for fam, f in unique.tolist()]
            for j, u in zip(where.tolist(), inverse.reshape(-1).tolist()):
                out[j] = keys[u]
        return out

    @property
    def levels_of_theory(self) -> List[str]:
        """Distinct levels of theory of the records ("" where a shard does not say)."""
        found = set()
        for k, ix in enumerate(self.indexes):
            sel = self.rows[:, 0] == k
            found.update(ix.levels[c] for c in np.unique(ix.level[self.rows[sel, 1]]).tolist())
        return sorted(found)

    @property
    def charge_multiplicity_pairs(self) -> List[Tuple[int, int]]:
        """Distinct (total charge, multiplicity) of the records, from the index."""
        found = set()
        for k, ix in enumerate(self.indexes):
            rows = self.rows[self.rows[:, 0] == k, 1]
            found.update(map(tuple, np.unique(np.stack([ix.charge[rows], ix.multiplicity[rows]], 1), axis=0).tolist()))
        return sorted((int(q), int(m)) for q, m in found)

    @property
    def elements(self) -> List[int]:
        masks = [ix.masks_of(self.rows[self.rows[:, 0] == k, 1]) for k, ix in enumerate(self.indexes)]
        return mask_elements(np.concatenate(masks) if masks else np.zeros((0, 2), np.uint64))

    # -- records
    def __getitem__(self, i: int) -> Molecule:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} outside 0..{len(self) - 1}")
        k, pos = (int(v) for v in self.rows[i])
        ix = self.indexes[k]
        with _env_at(self._env_keys[k], random_read=True).begin() as txn:
            raw = txn.get(str(int(ix.record_ids[pos])).encode("ascii"))
        if raw is None:
            raise DataError(f"{ix.path}, record {pos}: missing from the shard (changed since it was indexed?); "
                            f"delete {INDEX_DIR}/ beside it to re-index")
        mol = record_to_molecule(_decode_row(raw), ix.path, pos)
        mol.has_energy = bool(self.has_energy[i])
        return mol

    def __iter__(self) -> Iterator[Molecule]:
        for i in range(len(self)):
            yield self[i]

    # -- views
    def subset(self, indices: Sequence[int]) -> "ShardedDataset":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ShardedDataset(self.indexes, self.rows[idx], self.has_energy[idx])

    def with_energies(self) -> "ShardedDataset":
        return self.subset(np.flatnonzero(self.has_energy))

    def without_energies(self) -> "ShardedDataset":
        return ShardedDataset(self.indexes, self.rows, np.zeros(len(self), bool))

    def in_memory(self) -> MoleculeDataset:
        """Every selected record decoded into a :class:`MoleculeDataset`."""
        return MoleculeDataset(list(self))

    def validate(self, elements: Optional[Sequence[int]] = None) -> None:
        """Check, from the index, that every element is in ``elements`` (records were
        validated in full when the index was built)."""
        if elements is None:
            return
        allowed = set(int(z) for z in elements)
        for k, ix in enumerate(self.indexes):
            pos = self.rows[self.rows[:, 0] == k, 1]
            bad = set(mask_elements(ix.masks_of(pos))) - allowed
            if bad:
                lo, hi = element_mask(np.array(sorted(bad)))
                bad_sets = np.flatnonzero((ix.element_masks[:, 0] & np.uint64(lo))
                                          | (ix.element_masks[:, 1] & np.uint64(hi)))
                first = int(pos[np.isin(ix.element_set[pos], bad_sets)][0])
                from ase.data import chemical_symbols

                names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in sorted(bad))
                raise DataError(f"{ix.path}, record {first}: element(s) {names} not among the model's "
                                f"elements {sorted(allowed)}")

    def content_hash(self) -> str:
        """SHA-256 over the shards' digests and the selected records (not their contents:
        O(index), not O(data)); equal for the same selection of unchanged shards."""
        h = hashlib.sha256(b"transip-sharded-v1")
        for ix in self.indexes:
            h.update(ix.path.name.encode())
            h.update(shard_digest(ix.path).encode())
            h.update(np.ascontiguousarray(ix.record_ids).tobytes())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        h.update(np.ascontiguousarray(self.has_energy).tobytes())
        return h.hexdigest()


def open_shards(spec: Union[PathLike, Sequence[PathLike]], elements: Optional[Sequence[int]] = None,
                index_workers: int = 0) -> ShardedDataset:
    """A :class:`ShardedDataset` over ``spec`` (files, directories, globs), checked against
    ``elements``; ``index_workers`` processes index new shards in parallel."""
    dataset = ShardedDataset(spec, index_workers=index_workers)
    dataset.validate(elements)
    logger.info("%d structures in %d shard(s) (lazy)", len(dataset), len(dataset.indexes))
    return dataset


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m transip_openmm.training.shards PATH... [--workers N]``: build (or check) the
    cached indexes of shards before a run, e.g. once before a multi-node job."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help=".aselmdb files, directories or glob patterns")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="indexing processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    dataset = ShardedDataset(args.paths, index_workers=args.workers)
    n_atoms = dataset.n_atoms
    logger.info("%d structures in %d shards; atoms per structure %d-%d (mean %.1f); elements %s; levels of "
                "theory %s", len(dataset), len(dataset.indexes), n_atoms.min(), n_atoms.max(), n_atoms.mean(),
                dataset.elements, dataset.levels_of_theory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
