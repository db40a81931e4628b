"""Readers for pairs and corpus files: Parquet (file or folder), JSONL and CSV.

Contract: a reader returns a :class:`ReadResult` whose ``table`` holds only string columns
(the requested ones, renamed to negminer's canonical names) plus ``source_row`` (1-based data
row number in the file, header excluded), and whose ``rejects`` table holds the quarantined
rows with ``source_file``, ``source_row``, ``column`` and ``reason``. File-level problems
(missing file, unreadable or corrupt file, missing required column) always raise
:class:`~negminer.errors.InputError`; row-level problems are quarantined or raised depending on
``on_bad_rows``.

Every input row ends up exactly once in ``table`` or in ``rejects`` (blank JSONL/CSV lines are
skipped and counted in neither); a row with any bad value is rejected once, with the first
problem found. ``rejects`` is ordered by ``source_row``, and with ``on_bad_rows="fail"`` the
error names the first bad row in file order. Reason codes: ``invalid_json``,
``not_an_object``, ``non_string``, ``invalid_unicode`` (JSONL); ``invalid_utf8`` (all
formats); ``wrong_field_count``, ``unparseable_csv`` (CSV); ``null_value``, ``empty_text``
(text columns). ``docs/bad_inputs.md`` catalogues them.

The formats live in :mod:`~negminer.storage.parquet_reader`, :mod:`~negminer.storage.jsonl_reader`
and :mod:`~negminer.storage.csv_reader`; the rejects table in :mod:`~negminer.storage.rejects`;
the checks every format's rows pass in :mod:`~negminer.storage.row_checks`. This module is the
entry point: import from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from negminer.config import OnBadRows
from negminer.errors import InputError
from negminer.storage.csv_reader import CSV_FIELD_LIMIT, CSV_SUFFIXES, read_csv
from negminer.storage.jsonl_reader import JSONL_SUFFIXES, read_jsonl
from negminer.storage.parquet_reader import PARQUET_ERRORS, PARQUET_SUFFIXES, parquet_files, read_parquet_files
from negminer.storage.read_common import LISTED_COLUMNS, RawRead, check_required
from negminer.storage.rejects import (
    REJECT_SCHEMA,
    VALUE_CHARS,
    bad_row_error,
    empty_rejects,
    name_part_files,
    order_rejects,
    reject_record,
)
from negminer.storage.row_checks import as_string, check_texts, drop_invalid_utf8

__all__ = [
    "CSV_FIELD_LIMIT",
    "CSV_SUFFIXES",
    "JSONL_SUFFIXES",
    "LISTED_COLUMNS",
    "PARQUET_ERRORS",
    "PARQUET_SUFFIXES",
    "REJECT_SCHEMA",
    "VALUE_CHARS",
    "PartedRead",
    "ReadResult",
    "bad_row_error",
    "empty_rejects",
    "name_part_files",
    "order_rejects",
    "read_table",
    "read_table_parts",
    "reject_record",
]

logger = logging.getLogger(__name__)


class ReadResult(NamedTuple):
    table: pa.Table
    rejects: pa.Table


class PartedRead(NamedTuple):
    """A :class:`ReadResult` and, for a folder, the (first table row, file) of each of its files."""

    table: pa.Table
    rejects: pa.Table
    parts: tuple[tuple[int, Path], ...]  # empty for a single file


def read_table(
    path: str | Path,
    *,
    required: dict[str, str],
    optional: dict[str, str] | None = None,
    text_columns: tuple[str, ...] = (),
    on_bad_rows: OnBadRows,
) -> ReadResult:
    """Read a file into canonical string columns and quarantine bad rows.

    Args:
        path: Parquet file or folder of Parquet files, JSONL, or CSV/TSV file.
        required: canonical name -> column name in the file; missing ones raise.
        optional: canonical name -> column name in the file; used when present.
        text_columns: canonical names that must hold non-empty text.
        on_bad_rows: quarantine bad rows (returned in ``rejects``) or raise on the first.

    Returns:
        ReadResult with ``table`` of shape (rows kept, canonical columns + source_row) and
        ``rejects`` of shape (rows quarantined, 5) in :data:`REJECT_SCHEMA`.

    Raises:
        InputError: for file-level problems, and for the first bad row when
            ``on_bad_rows="fail"``.

    Example:
        >>> read_table("pairs.jsonl", required={"anchor": "anchor", "positive": "positive"},
        ...     on_bad_rows="quarantine")  # doctest: +SKIP
    """
    read = read_table_parts(
        path, required=required, optional=optional, text_columns=text_columns, on_bad_rows=on_bad_rows
    )
    return ReadResult(read.table, read.rejects)


def read_table_parts(
    path: str | Path,
    *,
    required: dict[str, str],
    optional: dict[str, str] | None = None,
    text_columns: tuple[str, ...] = (),
    on_bad_rows: OnBadRows,
) -> PartedRead:
    """:func:`read_table`, also returning a folder's ``parts`` for :func:`name_part_files`.

    A caller that finds more bad rows in ``table`` (numbered by its ``source_row``, which counts
    across a folder's files) names them like the reader's own with ``parts``.
    """
    path = Path(path)
    optional = optional or {}
    wanted = {**required, **optional}
    raw = _read_any(path, list(dict.fromkeys(wanted.values())), list(required.values()), on_bad_rows)
    check_required(path, list(required.values()), raw.columns)
    present = {canon: col for canon, col in wanted.items() if col in raw.table.column_names}
    table = pa.table(
        {
            canon: as_string(raw.table.column(col), path, col, integers=canon not in text_columns)
            for canon, col in present.items()
        }
        | {"source_row": raw.rows}
    )
    table, utf8_rejects = drop_invalid_utf8(table, path, present)
    table, text_rejects = check_texts(table, path, present, text_columns)
    rejects = order_rejects([pa.Table.from_pylist(raw.rejects, schema=REJECT_SCHEMA), utf8_rejects, text_rejects])
    rejects = name_part_files(rejects, raw.parts)
    if rejects.num_rows and on_bad_rows == "fail":
        raise bad_row_error(rejects.slice(0, 1).to_pylist()[0])
    if rejects.num_rows:
        logger.warning("%s: quarantined %d row(s)", path, rejects.num_rows)
    return PartedRead(table, rejects, raw.parts)


def require_input(path: str | Path) -> Path:
    """`path` as a Path, or the one-line InputError that names it when nothing is there."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    return path


def _read_any(path: Path, columns: list[str], required: list[str], on_bad_rows: OnBadRows) -> RawRead:
    require_input(path)
    if path.is_dir():
        return read_parquet_files(parquet_files(path), columns, required, folder=path)
    if not path.is_file():
        raise InputError("not a regular file", path=str(path))
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return read_parquet_files([path], columns, required, folder=None)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path, columns, on_bad_rows)
    if suffix in CSV_SUFFIXES:
        return read_csv(path, columns)
    raise InputError(
        f"unknown file type {suffix!r}; use .parquet, .jsonl or .csv (or a folder of .parquet)",
        path=str(path),
    )
