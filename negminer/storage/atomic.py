"""Atomic file writes: a temp file in the same folder, fsync, then ``os.replace``.

A write that fails (disk full, read-only folder, quota) raises an ``OSError`` that names the
file being written, not its temp file: ``write()``, ``fsync()`` and ``close()`` name no file,
and the temp file's name means nothing to a user. Its ``errno`` and type are kept
(``PermissionError`` stays one), so callers that tell errors apart still can.
"""

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


def naming_target(err: OSError, path: str | Path) -> OSError:
    """`err` as an error about `path` when it names no file or only a temp file of `path`.

    Temp files are those this module's writers (and ``StagedParquetWriter``) put beside
    `path`: hidden, named ``.NAME.*``. Any other file `err` names is left as it is (a source
    that could not be read while writing). Same ``errno``, so the same ``OSError`` subclass.

    Example:
        >>> naming_target(OSError(28, "No space left on device"), "out/x.parquet").filename
        'out/x.parquet'
    """
    if err.errno is None or not _names_no_file_but_temps(err, Path(path)):
        return err
    named = OSError(err.errno, os.strerror(err.errno), str(path))
    named.__cause__ = err
    return named


def _names_no_file_but_temps(err: OSError, path: Path) -> bool:
    for name in (err.filename, err.filename2):
        if name is None or isinstance(name, int):
            continue
        other = Path(os.fsdecode(name))
        if other != path and not (other.parent == path.parent and other.name.startswith(f".{path.name}.")):
            return False
    return True


@contextlib.contextmanager
def naming_failures(path: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` from the block as :func:`naming_target` of `path`.

    For writers that are not this module's (a ``StagedParquetWriter``, a library writing to a
    handle): a failed write then names the file, or the folder, it was writing.

    Example:
        >>> with naming_failures("work/selected.parquet"):  # doctest: +SKIP
        ...     write_everything()
    """
    try:
        yield
    except OSError as err:
        named = naming_target(err, path)
        if named is err:
            raise
        raise named from err


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temp file beside `path`, then move it into place.

    A failed write removes the temp file and raises an ``OSError`` naming `path`
    (:func:`naming_target`); `path` keeps its old content, if any.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_failures(path):
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


def open_npy_for_writing(path: str | Path, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.memmap:
    """``np.lib.format.open_memmap(path, "w+")`` with the file's blocks allocated up front.

    ``open_memmap`` makes a sparse file; a page written through the map on a full disk then
    kills the process with SIGBUS instead of raising. ``posix_fallocate`` claims the space
    first, so a full disk is an ``OSError`` (ENOSPC) before any work is done.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = array.offset + array.nbytes
    descriptor = os.open(path, os.O_RDWR)
    try:
        if size:
            os.posix_fallocate(descriptor, 0, size)
    finally:
        os.close(descriptor)
    return array


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path`, unique to this call, for writers that need a file name
    (FAISS, numpy memory maps): moved into place when the block ends, removed if it raises.
    An ``OSError`` from the block or the move names `path` (:func:`naming_target`).

    Example:
        >>> with atomic_path("index.faiss") as tmp:  # doctest: +SKIP
        ...     faiss.write_index(index, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial{suffix}")
    try:
        with naming_failures(path):
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
