"""Bring your own embeddings: vectors computed elsewhere, matched to anchors and docs by id.

Contract: the vectors file (``embed.anchor_vectors`` / ``embed.doc_vectors``) is one of

- Parquet with an ``id`` column and an ``embedding`` column (list or fixed-size list of
  numbers), or a folder of such Parquet files (read in name order, as ``pq.read_table`` reads
  a folder);
- ``.npz`` with arrays ``ids`` (n,) and ``vectors`` (n, dim), from ``np.savez`` or
  ``np.savez_compressed``;
- a folder holding ``vectors.npy`` (n, dim) and its ids: ``ids.npy`` (n,) (an ``.npz``
  unzipped) or ``ids.parquet`` with an ``id`` column of n rows. The ids sit beside the vectors
  in one folder, not in a sibling file, because the run's work folder is keyed by the hash of
  the path named in the config (every file of a folder): new ids mean a new run.

Ids are compared as strings (numbers are converted). Every wanted anchor (by ``anchor_id``) or
doc (by ``doc_id``) must have a vector; an id that occurs several times in the file takes its
first vector. The vectors are L2-normalised float32, so scores are cosines.

Memory: :func:`write_vectors_for` reads the file in batches of :data:`BATCH_ROWS` rows (Parquet
through ``iter_batches``, ``.npy`` memory-mapped and released block by block, ``.npz`` members
decompressed as a stream, stored or deflated) and writes each batch's rows into the output
``.npy`` in place, so the file's vectors are never held: peak memory is a few copies of one
batch plus about 200 bytes per wanted id (the id list, which the caller reads once, and a dict
over it; measured 2M × 384: 0.6 GB peak, where loading the whole file took 12-13.6 GB). The
one exception is an ``.npz`` whose ``vectors`` were saved in Fortran order (``np.savez`` of a
transposed array): its rows are not contiguous, so that array is read whole, as before.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from negminer.errors import InputError
from negminer.mining.vectors import read_rows, release
from negminer.storage.atomic import atomic_path, open_npy_for_writing

logger = logging.getLogger(__name__)

# Rows of the vectors file read, matched and written at once: 16,384 × 384 float32 is 24 MiB a
# copy, and a batch holds a few (the file's batch, the picked rows, the normalised rows),
# whatever the number of vectors. Measured on 2M × 384: 0.66 GB peak RSS with 16,384 (0.35 GB
# of it the 2M wanted ids), 1.09 GB with 65,536; the time is the same.
BATCH_ROWS = 16_384

# Bytes the Parquet reader reads ahead in a column chunk. pyarrow's defaults (pre_buffer=True,
# buffer_size=0) read a whole row group first: pq.write_table's 1M-row groups of 384 float32
# embeddings are 1.5 GB each (measured: 3.6 GB peak to iterate a 2M-row file, 0.85 GB so).
PARQUET_BUFFER_BYTES = 1 << 23

# The file names of the .npy folder format.
NPY_VECTORS, NPY_IDS, PARQUET_IDS = "vectors.npy", "ids.npy", "ids.parquet"

_Batch = tuple[list, np.ndarray]  # ids as str (or None), float32 vectors (rows, dim)


def write_vectors_for(
    ids: Sequence[str], source: str | Path, out_path: str | Path, *, what: Literal["anchor", "doc"]
) -> int:
    """Write the normalised vectors of `ids`, in their order, from `source` to the ``.npy`` `out_path`.

    The file at `source` is read once, in batches of :data:`BATCH_ROWS`; `out_path` is a
    float32 (len(ids), dim) ``.npy``, written to a temp file beside it and moved into place,
    or not written at all when an error is raised.

    Args:
        ids: the wanted ids (anchor_id or doc_id values), in output order; may repeat.
        source: the vectors file or folder (formats in the module docstring).
        out_path: the ``.npy`` to write.
        what: ``"anchor"`` or ``"doc"``, for messages.

    Returns:
        The vectors' dimension.

    Raises:
        InputError: the file is missing or malformed, a null or ragged Parquet embedding (its
            row, 1-based in the file), ids without a vector, vectors with NaN or infinite
            values, or zero vectors (each naming the first such id in `ids` order).

    Example:
        >>> write_vectors_for(["q1", "q2"], "query_vectors.parquet", "anchors.npy", what="anchor")  # doctest: +SKIP
        384
    """
    if what not in ("anchor", "doc"):
        raise ValueError(f"what must be 'anchor' or 'doc', not {what!r}")
    source, out_path = Path(source), Path(out_path)
    started = time.perf_counter()
    batches = _batches(source)  # validates the file before the output is created
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        dim = _write(ids, batches, tmp, source=source, what=what)
    logger.info("%d %s vectors (dim %d) from %s in %.1fs", len(ids), what, dim, source, time.perf_counter() - started)
    return dim


def _write(ids: Sequence[str], batches: Iterator[_Batch], tmp: Path, *, source: Path, what: str) -> int:
    n = len(ids)
    first = dict(zip(reversed(ids), range(n - 1, -1, -1), strict=True))  # id -> its first position in `ids`
    found = np.zeros(n, bool)
    nonfinite = np.zeros(n, bool)
    zero = np.zeros(n, bool)
    out = None
    try:
        for batch_ids, vectors in batches:
            if out is None:
                out = _NpyRows(tmp, n, vectors.shape[1])
            codes = np.fromiter((first.get(x, -1) for x in batch_ids), np.int64, count=len(batch_ids))
            rows = np.flatnonzero(codes >= 0)
            rows = rows[~found[codes[rows]]]  # ids matched in an earlier batch keep that vector
            positions, keep = np.unique(codes[rows], return_index=True)  # and the first row of this batch
            if not len(positions):
                continue
            picked = vectors[rows[keep]]
            norms = np.linalg.norm(picked, axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):  # zero / NaN rows raise below
                out.write(positions, picked / norms)
            found[positions] = True
            nonfinite[positions] = ~np.isfinite(picked).all(axis=1)
            zero[positions] = norms[:, 0] == 0
        if out is None:
            raise InputError("holds no vectors", path=str(source))
        target, origin = _repeats(ids, first)
        found[target], nonfinite[target], zero[target] = found[origin], nonfinite[origin], zero[origin]
        if not found.all():
            raise InputError(
                f"{int((~found).sum())} {what} id(s) have no vector, first {ids[int(np.argmin(found))]!r}",
                path=str(source),
            )
        if nonfinite.any():
            raise InputError(
                f"{int(nonfinite.sum())} {what} vector(s) hold NaN, null or infinite values, "
                f"first {ids[int(np.argmax(nonfinite))]!r}",
                path=str(source),
            )
        if zero.any():
            raise InputError(f"a zero vector for {what} {ids[int(np.argmax(zero))]!r}", path=str(source))
        out.copy(target, origin)
        out.sync()
        return out.dim
    finally:
        if out is not None:
            out.close()


def _repeats(ids: Sequence[str], first: dict) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `ids` that repeat an earlier id, and the first position of their id."""
    if len(first) == len(ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    origin = np.fromiter((first[x] for x in ids), np.int64, count=len(ids))
    target = np.flatnonzero(origin != np.arange(len(ids)))
    return target, origin[target]


class _NpyRows:
    """A float32 (n, dim) ``.npy`` file whose rows are written in place, in any order.

    ``open_npy_for_writing`` writes the header (the bytes ``np.save`` writes) and claims the file's
    space (a full disk fails here, not halfway); the
    rows go in with ``pwrite``, not through the memory map: on Linux 6.18 / ext4 (large page
    cache folios) a write fault maps a whole folio, and 65,536 rows scattered over a 3 GB
    output made 2.6 GB of it resident (measured), where ``pwrite`` leaves it in the page cache.
    """

    def __init__(self, path: Path, n: int, dim: int) -> None:
        header = open_npy_for_writing(path, (n, dim))
        self.offset, self.dim, self.row_bytes = header.offset, dim, dim * np.dtype(np.float32).itemsize
        del header
        self.fd = os.open(path, os.O_RDWR)

    def write(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows[i]`` (float32, C order) at row ``positions[i]``; `positions` ascending."""
        rows = np.ascontiguousarray(rows, np.float32)
        starts = np.flatnonzero(np.diff(positions, prepend=-2) != 1)  # one call a run of consecutive rows
        for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(positions)], strict=True):
            self._pwrite(memoryview(rows[start:stop]).cast("B"), int(positions[start]))

    def copy(self, target: np.ndarray, origin: np.ndarray) -> None:
        """Row ``target[i]`` := row ``origin[i]`` (repeated ids)."""
        for to, of in zip(target.tolist(), origin.tolist(), strict=True):
            self._pwrite(memoryview(os.pread(self.fd, self.row_bytes, self.offset + of * self.row_bytes)), to)

    def _pwrite(self, data: memoryview, row: int) -> None:
        at = self.offset + row * self.row_bytes
        while data:
            written = os.pwrite(self.fd, data, at)
            data, at = data[written:], at + written

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _batches(path: Path) -> Iterator[_Batch]:
    """The file's (ids, vectors) in batches; the file's shape is checked before this returns."""
    if not path.exists():
        raise InputError("vectors file not found", path=str(path))
    if path.is_dir() and (path / NPY_VECTORS).exists():
        return _npy_folder_batches(path)
    if path.suffix == ".npz":
        return _npz_batches(path)
    if path.suffix == ".npy":
        raise InputError(
            f"a .npy vectors file needs its ids: put it in a folder as {NPY_VECTORS} with {NPY_IDS} "
            f"or {PARQUET_IDS} (column 'id') and name the folder",
            path=str(path),
        )
    return _parquet_batches(path)


# --- Parquet -------------------------------------------------------------------------------


def _parquet_files(path: Path) -> list[pq.ParquetFile]:
    try:
        files = ds.dataset(path, format="parquet").files if path.is_dir() else [str(path)]
        opened = [pq.ParquetFile(file, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False) for file in files]
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"not a Parquet file with columns 'id' and 'embedding' ({err})", path=str(path)) from err
    for file in opened:
        schema = file.schema_arrow
        absent = [name for name in ("id", "embedding") if name not in schema.names]
        if absent:
            raise InputError(
                f"not a Parquet file with columns 'id' and 'embedding' (no column {absent[0]!r})", path=str(path)
            )
        kind = schema.field("embedding").type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
            raise InputError(f"embedding must be a list of numbers, is {kind}", path=str(path), column="embedding")
    return opened


def _parquet_batches(path: Path) -> Iterator[_Batch]:
    return _parquet_rows(path, _parquet_files(path))


def _parquet_rows(path: Path, files: list[pq.ParquetFile]) -> Iterator[_Batch]:
    """Rows of every file in order; a null embedding anywhere in the file is the error reported
    first (row order), then the first embedding whose length differs from row 1's."""
    offset, dim, ragged = 0, None, None
    for file in files:
        for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=["id", "embedding"]):
            column = batch.column("embedding")
            if column.null_count:
                row = offset + pc.index(pc.is_null(column), True).as_py() + 1
                raise InputError("embedding is null", path=str(path), row=row, column="embedding")
            if ragged is None and len(column):
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                dim = int(lengths[0]) if dim is None else dim
                if (lengths != dim).any():
                    at = int(np.argmax(lengths != dim))
                    ragged = InputError(
                        f"embedding has {lengths[at]} values, row 1 has {dim}",
                        path=str(path),
                        row=offset + at + 1,
                        column="embedding",
                    )
                elif dim == 0:
                    raise InputError("embedding is empty", path=str(path), row=offset + 1, column="embedding")
                else:
                    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
                    vectors = np.asarray(flat, np.float32).reshape(len(column), dim)
                    yield batch.column("id").cast(pa.string()).to_pylist(), vectors
            offset += len(column)
    if ragged is not None:
        raise ragged


# --- .npz ------------------------------------------------------------------------------------


def _npz_batches(path: Path) -> Iterator[_Batch]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"not an .npz file ({err})", path=str(path)) from err
    members = {name.removesuffix(".npy"): name for name in archive.namelist()}
    if "ids" not in members or "vectors" not in members:
        archive.close()
        raise InputError(f".npz must hold arrays 'ids' and 'vectors', has {list(members)}", path=str(path))
    try:
        ids = _NpyStream(archive.open(members["ids"]), path, "ids")
        vectors = _NpyStream(archive.open(members["vectors"]), path, "vectors")
        _check_shapes(path, ids.shape, vectors.shape)
    except BaseException:
        archive.close()
        raise
    return _npz_rows(path, archive, ids, vectors)


def _npz_rows(path: Path, archive: zipfile.ZipFile, ids: _NpyStream, vectors: _NpyStream) -> Iterator[_Batch]:
    with archive:
        if vectors.fortran_order:
            logger.warning("%s: 'vectors' is saved in Fortran order, so it is read whole", path)
            whole = np.asarray(vectors.read_all(), np.float32)
        n = vectors.shape[0]
        for first in range(0, n, BATCH_ROWS):
            stop = min(first + BATCH_ROWS, n)
            block = whole[first:stop] if vectors.fortran_order else np.asarray(vectors.read(stop - first), np.float32)
            yield ids.read(stop - first).astype(str).tolist(), np.ascontiguousarray(block)
        if n == 0:
            yield [], np.zeros(vectors.shape, np.float32)


class _NpyStream:
    """An ``.npy`` array read from a stream (an ``.npz`` member) a block of rows at a time."""

    def __init__(self, stream: IO[bytes], path: Path, name: str) -> None:
        self.stream, self.path, self.name = stream, path, name
        try:
            version = np.lib.format.read_magic(stream)
            header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in header:
                raise ValueError(f"unsupported .npy format version {version}")
            self.shape, self.fortran_order, self.dtype = header[version](stream)
        except (ValueError, zipfile.BadZipFile, OSError) as err:
            raise InputError(f"'{name}' is not a readable .npy array ({err})", path=str(path)) from err
        if self.dtype.hasobject:
            raise InputError(f"'{name}' holds Python objects; save strings or numbers", path=str(path))

    def read(self, rows: int) -> np.ndarray:
        """The next `rows` rows (C order only)."""
        row_shape = self.shape[1:]
        return np.frombuffer(self._bytes(rows * math.prod(row_shape)), self.dtype).reshape(rows, *row_shape)

    def read_all(self) -> np.ndarray:
        """The whole array, in either order."""
        order = "F" if self.fortran_order else "C"
        return np.frombuffer(self._bytes(math.prod(self.shape)), self.dtype).reshape(self.shape, order=order)

    def _bytes(self, items: int) -> bytes:
        size = items * self.dtype.itemsize
        try:
            data = self.stream.read(size)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise InputError(f"'{self.name}' cannot be read ({err})", path=str(self.path)) from err
        if len(data) != size:
            raise InputError(f"'{self.name}' is truncated", path=str(self.path))
        return data


def _check_shapes(path: Path, ids_shape: tuple, vectors_shape: tuple) -> None:
    if len(vectors_shape) != 2:
        raise InputError(f"'vectors' must have shape (n, dim), has {vectors_shape}", path=str(path))
    if len(ids_shape) != 1 or ids_shape[0] != vectors_shape[0]:
        raise InputError(f"'ids' has shape {ids_shape}, 'vectors' {vectors_shape}: one id a row", path=str(path))


# --- folder: vectors.npy + ids ---------------------------------------------------------------


def _npy_folder_batches(path: Path) -> Iterator[_Batch]:
    try:
        vectors = np.load(path / NPY_VECTORS, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{NPY_VECTORS} is not a readable .npy array ({err})", path=str(path)) from err
    has_npy, has_parquet = (path / NPY_IDS).exists(), (path / PARQUET_IDS).exists()
    if has_npy == has_parquet:
        raise InputError(f"needs its ids beside {NPY_VECTORS}: one of {NPY_IDS} or {PARQUET_IDS}", path=str(path))
    if has_npy:
        try:
            ids = np.load(path / NPY_IDS, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{NPY_IDS} is not a readable .npy array ({err})", path=str(path)) from err
        _check_shapes(path, ids.shape, vectors.shape)
        return _npy_rows(vectors, _npy_id_blocks(ids))
    try:
        ids_file = pq.ParquetFile(path / PARQUET_IDS)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{PARQUET_IDS} is not a Parquet file ({err})", path=str(path)) from err
    if "id" not in ids_file.schema_arrow.names:
        raise InputError(f"{PARQUET_IDS} has no column 'id'", path=str(path))
    _check_shapes(path, (ids_file.metadata.num_rows,), vectors.shape)
    batches = ids_file.iter_batches(batch_size=BATCH_ROWS, columns=["id"])
    blocks = (batch.column(0).cast(pa.string()).to_pylist() for batch in batches)
    return _npy_rows(vectors, blocks)


def _npy_id_blocks(ids: np.ndarray) -> Iterator[list]:
    for first in range(0, len(ids), BATCH_ROWS):
        block = ids[first : first + BATCH_ROWS].astype(str).tolist()
        release(ids)
        yield block


def _npy_rows(vectors: np.ndarray, id_blocks: Iterator[list]) -> Iterator[_Batch]:
    first = 0
    for block in id_blocks:
        yield block, read_rows(vectors, first, first + len(block))
        first += len(block)
    if len(vectors) == 0:
        yield [], np.zeros(vectors.shape, np.float32)
