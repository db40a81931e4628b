"""Checks :func:`~negminer.storage.readers.read_table` runs on every format's table.

Contract: :func:`as_string` makes a column ``string`` or raises
:class:`~negminer.errors.InputError` for a column of another type; :func:`drop_invalid_utf8`
and :func:`check_texts` take a table with a ``source_row`` column and return the rows kept and
the rows they quarantined (in :data:`~negminer.storage.rejects.REJECT_SCHEMA`), each bad row
once, for its first problem: ``invalid_utf8``, then ``null_value``, then ``empty_text``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.errors import InputError
from negminer.storage.rejects import REJECT_SCHEMA, VALUE_CHARS, empty_rejects, reject_record, source_file


def is_text_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return is_text_type(dtype.value_type)
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_null(dtype)
    )


def as_string(column: pa.ChunkedArray, path: Path, name: str, *, integers: bool = False) -> pa.ChunkedArray:
    """Any kind of string column (or an all-null one) as ``string``; other types raise.

    With `integers`, an integer column (ids) is written in decimal.
    """
    if pa.types.is_string(column.type):
        return column
    if is_text_type(column.type) or (integers and pa.types.is_integer(column.type)):
        return column.cast(pa.string())
    raise InputError(
        f"must hold strings but has type {column.type}; convert the column to strings",
        path=str(path),
        column=name,
    )


def drop_invalid_utf8(table: pa.Table, path: Path, present: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """Quarantine rows whose string values are not valid UTF-8 (Parquet does not check)."""
    first_bad: dict[int, str] = {}
    for canon in present:
        for position in _invalid_utf8_positions(table.column(canon)):
            first_bad.setdefault(position, canon)
    if not first_bad:
        return table, empty_rejects()
    positions = sorted(first_bad)
    rows = table.column("source_row").take(positions).to_pylist()
    rejects = []
    for pos, row in zip(positions, rows, strict=True):
        canon = first_bad[pos]
        value = _binary_text(table.column(canon)[pos])
        rejects.append(reject_record(path, row, present[canon], "invalid_utf8", value))
    keep = np.ones(table.num_rows, dtype=bool)
    keep[positions] = False
    return table.filter(pa.array(keep)), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)


def _invalid_utf8_positions(column: pa.ChunkedArray) -> list[int]:
    positions: list[int] = []
    offset = 0
    for chunk in column.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            values = chunk.view(pa.binary()).to_pylist()
            positions.extend(offset + i for i, value in enumerate(values) if value is not None and not _is_utf8(value))
        offset += len(chunk)
    return positions


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _binary_text(scalar: pa.Scalar) -> str:
    return scalar.cast(pa.binary()).as_py()[: VALUE_CHARS * 4].decode("utf-8", "backslashreplace")


def check_texts(
    table: pa.Table, path: Path, present: dict[str, str], text_columns: tuple[str, ...]
) -> tuple[pa.Table, pa.Table]:
    """Quarantine rows with a null or blank text; each row once, for its first problem."""
    bad = pa.array(np.zeros(table.num_rows, dtype=bool))
    rejects = []
    for canon in (c for c in text_columns if c in present):
        column = table.column(canon)
        is_null = pc.is_null(column)
        is_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), False)
        for mask, reason in ((is_null, "null_value"), (is_blank, "empty_text")):
            hit = pc.and_not(mask, bad)
            if pc.any(hit).as_py():
                rejects.append(_reject_table(table.filter(hit), path, present[canon], reason, canon))
                bad = pc.or_(bad, hit)
    return table.filter(pc.invert(bad)), pa.concat_tables(rejects) if rejects else empty_rejects()


def _reject_table(rows: pa.Table, path: Path, column: str, reason: str, canon: str) -> pa.Table:
    n = rows.num_rows
    return pa.table(
        {
            "source_file": pa.array([source_file(path)] * n, pa.string()),
            "source_row": rows.column("source_row"),
            "column": pa.array([column] * n, pa.string()),
            "reason": pa.array([reason] * n, pa.string()),
            "value": pc.utf8_slice_codeunits(rows.column(canon), 0, VALUE_CHARS),
        },
        schema=REJECT_SCHEMA,
    )
