"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

The content goes to a temporary file in the target's directory (same file system), is
flushed and fsync'ed, then ``os.replace``'d over the target; the directory is fsync'ed so
the rename itself survives a crash. A process killed mid-write leaves the target untouched
(and at most a ``.<name>.*.tmp`` file beside it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Union

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_binary_file(path: PathLike) -> Iterator[BinaryIO]:
    """``with atomic_binary_file(p) as f: f.write(...)``: ``p`` is replaced on success only."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    with atomic_binary_file(path) as f:
        f.write(text.encode("utf-8"))


def remove_stale_temporaries(directory: PathLike) -> int:
    """Delete the ``.<name>.*.tmp`` files a killed atomic write left in ``directory``; returns how many.

    Call it only where this process owns every atomic write into ``directory`` (a run folder
    at start-up): a concurrent writer's temporary file would be taken from under it.
    """
    removed = 0
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
