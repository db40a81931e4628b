"""Write a Parquet file table by table, staged beside its target and moved into place at the end.

Contract: the rows handed to :class:`StagedParquetWriter` are written in row groups of exactly
``row_group_rows`` rows (the last one shorter), each from one contiguous array, which is what
``pyarrow.parquet.write_table`` does with a whole table: with the default row-group size the
file has the same bytes as :func:`negminer.storage.atomic.write_parquet_atomic` of the
concatenated table, however the rows were batched. Until :meth:`commit` the rows live in a
hidden temp file in the target's folder; an exception inside the ``with`` block removes it.

Example:
    >>> with StagedParquetWriter("out/selected.parquet") as writer:  # doctest: +SKIP
    ...     for batch in batches:
    ...         writer.write(batch)
    ...     writer.commit()
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from negminer.storage.atomic import file_mode

# pyarrow.parquet.write_table's default maximum row-group size (rows).
ROW_GROUP_ROWS = 1024 * 1024


class StagedParquetWriter:
    """Buffers rows into fixed-size row groups of one Parquet file, published by :meth:`commit`."""

    def __init__(
        self,
        path: str | Path,
        *,
        schema: pa.Schema | None = None,
        row_group_rows: int = ROW_GROUP_ROWS,
        compression: str = "zstd",
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, file_mode())
        self._handle = os.fdopen(fd, "wb")
        self.tmp = Path(tmp)
        self._schema = schema
        self._row_group_rows = row_group_rows
        self._compression = compression
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def __enter__(self) -> StagedParquetWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None or self._handle is not None:
            self.abort()

    def write(self, table: pa.Table) -> None:
        """Append `table`'s rows; full row groups are written as soon as they are complete."""
        if self._schema is None:
            self._schema = table.schema
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= self._row_group_rows:
            rows = pa.concat_tables(self._pending)
            self._write_group(rows.slice(0, self._row_group_rows))
            rest = rows.slice(self._row_group_rows)
            self._pending, self._pending_rows = [rest], rest.num_rows

    def _write_group(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._handle, self._schema, compression=self._compression)
        self._writer.write_table(table.combine_chunks())

    def commit(self) -> Path:
        """Write the last row group, sync, and move the file into place; returns its path."""
        if self._schema is None:
            raise ValueError(f"{self.path}: nothing was written and no schema was given")
        if self._pending_rows or self._writer is None:
            rows = pa.concat_tables(self._pending) if self._pending else self._schema.empty_table()
            self._write_group(rows)
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the staged file (nothing is published)."""
        if self._handle is not None:
            if self._writer is not None:
                self._writer.close()
            self._handle.close()
            self._handle = None
        self.tmp.unlink(missing_ok=True)


@contextmanager
def staged_writers(paths: Mapping[str, str | Path]) -> Iterator[dict[str, StagedParquetWriter]]:
    """One :class:`StagedParquetWriter` per named path: all committed when the block ends, none on an error.

    Example:
        >>> with staged_writers({"triplets": "out/triplets.parquet"}) as writers:  # doctest: +SKIP
        ...     writers["triplets"].write(table)
    """
    writers = {name: StagedParquetWriter(path) for name, path in paths.items()}
    try:
        yield writers
        for writer in writers.values():
            writer.commit()
    finally:
        for writer in writers.values():
            writer.abort()


def read_row_range(path: str | Path, first: int, stop: int, *, columns: list[str] | None = None) -> pa.Table:
    """Rows ``[first, stop)`` of a Parquet file; only the row groups holding them are read."""
    parquet = pq.ParquetFile(path)
    groups, begin, offset = [], None, 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > first:
            groups.append(group)
            begin = offset if begin is None else begin
        offset += rows
    return parquet.read_row_groups(groups, columns=columns).slice(first - (begin or 0), stop - first)
