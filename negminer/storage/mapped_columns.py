"""A Parquet column as a memory-mapped Arrow array: every process reads it, none holds it.

Contract: :func:`mapped_column` returns column `column` of a Parquet file that is never
rewritten (a work folder's tables) as a :class:`pyarrow.ChunkedArray` whose buffers are pages of
an uncompressed Arrow IPC copy beside the file (``<stem>.<column>.arrow``), written once, in
record batches, by the first caller. Taking rows reads just their pages: the kernel keeps them
in its page cache, shared by every process on the machine and dropped under memory pressure, so
a stage that looks up texts by row costs the rows it touches, not the column's size (a corpus
of 10M passages is gigabytes of text).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from negminer.storage.atomic import atomic_write

BATCH_ROWS = 65536  # rows copied at once into the IPC file


def mapped_column(parquet_path: str | Path, column: str) -> pa.ChunkedArray:
    """`column` of `parquet_path`, memory-mapped from its Arrow IPC copy (made on first use).

    Example:
        >>> texts = mapped_column("work/docs.parquet", "text")  # doctest: +SKIP
        >>> texts.take([3, 1]).to_pylist()  # doctest: +SKIP
    """
    parquet_path = Path(parquet_path)
    copy = parquet_path.with_name(f"{parquet_path.stem}.{column}.arrow")
    if not copy.exists():
        atomic_write(copy, lambda handle: _copy_column(parquet_path, column, handle))
    with pa.memory_map(str(copy)) as source:
        table = pa.ipc.open_file(source).read_all()
    return table.column(column)


def _copy_column(parquet_path: Path, column: str, handle) -> None:
    parquet = pq.ParquetFile(parquet_path)
    schema = pa.schema([parquet.schema_arrow.field(column)])
    with pa.ipc.new_file(handle, schema) as writer:
        for batch in parquet.iter_batches(columns=[column], batch_size=BATCH_ROWS):
            writer.write_batch(batch)
        if parquet.metadata.num_rows == 0:
            writer.write_table(schema.empty_table())
