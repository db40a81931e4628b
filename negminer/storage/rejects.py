"""Reject bookkeeping shared by the readers: the rejects table, its records and their order.

Contract: every quarantined input row is one row of :data:`REJECT_SCHEMA` (``source_file``,
``source_row``, ``column``, ``reason``, ``value``); ``value`` holds at most :data:`VALUE_CHARS`
characters and is always storable text (undecodable bytes and lone surrogates are written as
backslash escapes). :func:`order_rejects` puts rejects in file order and :func:`name_part_files`
makes a folder's rejects name the part file and its own row. Reason codes are listed in
:mod:`negminer.storage.readers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.errors import InputError

REJECT_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("column", pa.string()),
        ("reason", pa.string()),
        ("value", pa.string()),
    ]
)
VALUE_CHARS = 200  # characters of a bad value kept in rejects


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def reject_record(path: Path, row: int, column: str | None, reason: str, value: object) -> dict:
    """One row of :data:`REJECT_SCHEMA`; the value is shortened and made safe to store."""
    text = None if value is None else _printable(value if isinstance(value, str) else str(value))
    return {
        "source_file": source_file(path),
        "source_row": row,
        "column": column,
        "reason": reason,
        "value": None if text is None else text[:VALUE_CHARS],
    }


def _printable(text: str) -> str:
    """Text safe to store: lone surrogates are written as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def undecoded(text: str) -> str:
    """Text decoded with ``surrogateescape``, with each undecodable byte shown as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return _printable(text)


def source_file(path: Path) -> str:
    """The path as stored in rejects (a file name with undecodable bytes shows them as escapes)."""
    return undecoded(str(path))


def bad_row_error(reject: dict) -> InputError:
    """The error for a reject record in ``on_bad_rows='fail'`` mode: names file, row and column."""
    value = reject["value"]
    shown = "" if value is None else f" (value {value[:80]!r})"
    return InputError(
        f"{reject['reason'].replace('_', ' ')}{shown}; fix the row, or set on_bad_rows to 'quarantine' to set it aside",
        path=reject["source_file"],
        row=reject["source_row"],
        column=reject["column"],
    )


def name_part_files(rejects: pa.Table, parts: tuple[tuple[int, Path], ...]) -> pa.Table:
    """Rejects of a folder name the part file and the row within it, not the folder's row.

    Args:
        rejects: rows in :data:`REJECT_SCHEMA` whose ``source_row`` counts across the folder.
        parts: :attr:`~negminer.storage.readers.PartedRead.parts` of the read; empty (a single
            file) changes nothing.
    """
    if not parts or not rejects.num_rows:
        return rejects
    starts = np.array([start for start, _ in parts])
    rows = rejects.column("source_row").to_numpy()
    which = np.searchsorted(starts, rows, side="right") - 1
    names = [source_file(parts[i][1]) for i in which.tolist()]
    rejects = rejects.set_column(0, "source_file", pa.array(names, pa.string()))
    return rejects.set_column(1, "source_row", pa.array(rows - starts[which] + 1, pa.int64()))


def order_rejects(tables: list[pa.Table], parts: tuple[tuple[int, Path], ...] = ()) -> pa.Table:
    """All rejects in file order (the sort is stable: parse problems first within a row).

    With the `parts` of a folder (rejects already naming the part file), the order is by part
    file in the folder's order, then by row within it.
    """
    rejects = pa.concat_tables(tables)
    if rejects.num_rows < 2:
        return rejects
    keys = {"row": rejects.column("source_row")}
    if parts:
        names = pa.array([source_file(path) for _, path in parts], pa.string())
        keys = {"file": pc.index_in(rejects.column("source_file"), value_set=names)} | keys
    order = pa.table(keys)
    return rejects.take(pc.sort_indices(order, sort_keys=[(name, "ascending") for name in keys]))
