"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_PROC_STATUS = Path("/proc/self/status")


def _umask_by_setting() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_from_proc() -> int | None:
    """The umask from /proc/self/status (Linux 4.7+), or None where it does not say."""
    try:
        status = _PROC_STATUS.read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return None


# Where /proc does not give the umask it can only be read by setting it, which races with other
# threads: that is done here, at import (usually before any thread starts).
_UMASK_AT_IMPORT = None if _umask_from_proc() is not None else _umask_by_setting()


def _current_umask() -> int:
    """The umask now from /proc; else the one at import; else (/proc stopped answering) set-and-read."""
    mask = _umask_from_proc()
    if mask is not None:
        return mask
    return _UMASK_AT_IMPORT if _UMASK_AT_IMPORT is not None else _umask_by_setting()


def file_mode() -> int:
    """The mode open() would give a new file now; mkstemp's files are 0600 until set to it."""
    return 0o666 & ~_current_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temp file beside `path`, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def write_parquet_atomic(path: str | Path, table: pa.Table) -> Path:
    return atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def write_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path`, unique to this call, for writers that need a file name
    (FAISS, numpy memory maps): moved into place when the block ends, removed if it raises.

    Example:
        >>> with atomic_path("index.faiss") as tmp:  # doctest: +SKIP
        ...     faiss.write_index(index, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
