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
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import OnBadRows
from negminer.errors import InputError

logger = logging.getLogger(__name__)

REJECT_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("column", pa.string()),
        ("reason", pa.string()),
        ("value", pa.string()),
    ]
)
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
CSV_SUFFIXES = {".csv", ".tsv"}
VALUE_CHARS = 200  # characters of a bad value kept in rejects
LISTED_COLUMNS = 50  # file columns named in a missing-column message
CSV_FIELD_LIMIT = 2**31 - 1  # the largest limit the csv module accepts on every platform
# What pyarrow raises for a corrupt file (UnicodeDecodeError: a column name that is not UTF-8).
PARQUET_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)
_SURROGATE = re.compile("[\ud800-\udfff]")


class ReadResult(NamedTuple):
    table: pa.Table
    rejects: pa.Table


class PartedRead(NamedTuple):
    """A :class:`ReadResult` and, for a folder, the (first table row, file) of each of its files."""

    table: pa.Table
    rejects: pa.Table
    parts: tuple[tuple[int, Path], ...]  # empty for a single file


class _Raw(NamedTuple):
    """What a format reader found: wanted columns as read, their row numbers, parse rejects."""

    table: pa.Table
    rows: pa.Array
    rejects: list[dict]
    columns: list[str]
    parts: tuple[tuple[int, Path], ...] = ()  # (first row, file) of each file of a folder


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


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
    _check_required(path, list(required.values()), raw.columns)
    present = {canon: col for canon, col in wanted.items() if col in raw.table.column_names}
    table = pa.table(
        {
            canon: _as_string(raw.table.column(col), path, col, integers=canon not in text_columns)
            for canon, col in present.items()
        }
        | {"source_row": raw.rows}
    )
    table, utf8_rejects = _drop_invalid_utf8(table, path, present)
    table, text_rejects = _check_texts(table, path, present, text_columns)
    rejects = order_rejects([pa.Table.from_pylist(raw.rejects, schema=REJECT_SCHEMA), utf8_rejects, text_rejects])
    rejects = name_part_files(rejects, raw.parts)
    if rejects.num_rows and on_bad_rows == "fail":
        raise bad_row_error(rejects.slice(0, 1).to_pylist()[0])
    if rejects.num_rows:
        logger.warning("%s: quarantined %d row(s)", path, rejects.num_rows)
    return PartedRead(table, rejects, raw.parts)


# --- files and formats ------------------------------------------------------------------------


def _read_any(path: Path, columns: list[str], required: list[str], on_bad_rows: OnBadRows) -> _Raw:
    if not path.exists():
        raise InputError("file not found", path=str(path))
    if path.is_dir():
        return _read_parquet_files(_parquet_files(path), columns, required, folder=path)
    if not path.is_file():
        raise InputError("not a regular file", path=str(path))
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet_files([path], columns, required, folder=None)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, columns, on_bad_rows)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, columns)
    raise InputError(
        f"unknown file type {suffix!r}; use .parquet, .jsonl or .csv (or a folder of .parquet)",
        path=str(path),
    )


def _open_error(path: Path, err: OSError) -> InputError:
    return InputError(f"cannot read file ({err.strerror or err})", path=str(path))


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise _open_error(path, err) from err


def _parquet_files(folder: Path) -> list[Path]:
    """The folder's Parquet files by name; hidden (``.``) and metadata (``_``) entries skipped."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise _open_error(folder, err) from err
    files = [p for p in entries if p.suffix.lower() in PARQUET_SUFFIXES and p.name[0] not in "._" and p.is_file()]
    if not files:
        raise InputError("folder holds no .parquet files", path=str(folder))
    return files


def _check_required(path: Path, required: list[str], file_columns: list[str]) -> None:
    missing = [col for col in required if col not in file_columns]
    if not missing:
        return
    shown = file_columns[:LISTED_COLUMNS] + (["..."] if len(file_columns) > LISTED_COLUMNS else [])
    raise InputError(
        f"missing required column(s) {missing}; the file has {shown}. Rename them or pass the column names as options.",
        path=str(path),
        column=missing[0],
    )


def _check_unique(path: Path, columns: list[str], file_columns: list[str]) -> None:
    for col in columns:
        count = file_columns.count(col)
        if count > 1:
            raise InputError(
                f"the file has {count} columns named {col!r}; rename all but one", path=str(path), column=col
            )


def _number_rows(num_rows: int) -> pa.Array:
    return pa.array(np.arange(1, num_rows + 1, dtype=np.int64))


def reject_record(path: Path, row: int, column: str | None, reason: str, value: object) -> dict:
    """One row of :data:`REJECT_SCHEMA`; the value is shortened and made safe to store."""
    text = None if value is None else _printable(value if isinstance(value, str) else str(value))
    return {
        "source_file": _source_file(path),
        "source_row": row,
        "column": column,
        "reason": reason,
        "value": None if text is None else text[:VALUE_CHARS],
    }


def _printable(text: str) -> str:
    """Text safe to store: lone surrogates are written as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _undecoded(text: str) -> str:
    """Text decoded with ``surrogateescape``, with each undecodable byte shown as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return _printable(text)


def _source_file(path: Path) -> str:
    """The path as stored in rejects (a file name with undecodable bytes shows them as escapes)."""
    return _undecoded(str(path))


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


# --- Parquet ----------------------------------------------------------------------------------


def _read_parquet_files(files: list[Path], columns: list[str], required: list[str], *, folder: Path | None) -> _Raw:
    parts = [_read_parquet(p, columns) for p in files]
    names = list(dict.fromkeys(name for _, file_names in parts for name in file_names))
    if folder is not None:
        _check_required(folder, required, names)
        for path, (table, file_names) in zip(files, parts, strict=True):
            if table.num_rows:  # an empty part file may lack columns
                _check_required(path, required, file_names)
        _check_folder_types(folder, files, [table for table, _ in parts])
    tables = [_text_as_string(table) for table, _ in parts]
    table = tables[0] if len(tables) == 1 else _concat(tables, folder or files[0])
    starts = np.cumsum([0] + [t.num_rows for t in tables[:-1]]) + 1
    file_parts = tuple(zip(starts.tolist(), files, strict=True)) if folder is not None else ()
    return _Raw(table, _number_rows(table.num_rows), [], names, file_parts)


def name_part_files(rejects: pa.Table, parts: tuple[tuple[int, Path], ...]) -> pa.Table:
    """Rejects of a folder name the part file and the row within it, not the folder's row.

    Args:
        rejects: rows in :data:`REJECT_SCHEMA` whose ``source_row`` counts across the folder.
        parts: :attr:`PartedRead.parts` of the read; empty (a single file) changes nothing.
    """
    if not parts or not rejects.num_rows:
        return rejects
    starts = np.array([start for start, _ in parts])
    rows = rejects.column("source_row").to_numpy()
    which = np.searchsorted(starts, rows, side="right") - 1
    names = [_source_file(parts[i][1]) for i in which.tolist()]
    rejects = rejects.set_column(0, "source_file", pa.array(names, pa.string()))
    return rejects.set_column(1, "source_row", pa.array(rows - starts[which] + 1, pa.int64()))


def _read_parquet(path: Path, columns: list[str]) -> tuple[pa.Table, list[str]]:
    """The wanted columns of one file, and all the file's column names."""
    _check_readable(path)
    try:
        names = pq.read_schema(path).names
    except PARQUET_ERRORS as err:
        raise InputError(f"not a readable Parquet file ({err})", path=str(path)) from err
    _check_unique(path, columns, names)
    try:
        return pq.read_table(path, columns=[c for c in columns if c in names]), names
    except PARQUET_ERRORS as err:
        raise InputError(f"not a readable Parquet file ({err})", path=str(path)) from err


def _is_text_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return _is_text_type(dtype.value_type)
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_null(dtype)
    )


def _check_folder_types(folder: Path, files: list[Path], tables: list[pa.Table]) -> None:
    """Files of a folder must agree on each column's type (any kind of string counts as one)."""
    first: dict[str, tuple[str, Path]] = {}
    for path, table in zip(files, tables, strict=True):
        for field in table.schema:
            kind = "string" if _is_text_type(field.type) else str(field.type)
            seen_kind, seen_path = first.setdefault(field.name, (kind, path))
            if seen_kind != kind:
                raise InputError(
                    f"Parquet files in the folder disagree on schema: column {field.name!r} is "
                    f"{seen_kind} in {seen_path.name} but {kind} in {path.name}",
                    path=str(folder),
                    column=field.name,
                )


def _text_as_string(table: pa.Table) -> pa.Table:
    """Every kind of string column as ``string`` (so the files of a folder concatenate)."""
    for i, field in enumerate(table.schema):
        if _is_text_type(field.type) and not pa.types.is_string(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
    return table


def _as_string(column: pa.ChunkedArray, path: Path, name: str, *, integers: bool = False) -> pa.ChunkedArray:
    """Any kind of string column (or an all-null one) as ``string``; other types raise.

    With `integers`, an integer column (ids) is written in decimal.
    """
    if pa.types.is_string(column.type):
        return column
    if _is_text_type(column.type) or (integers and pa.types.is_integer(column.type)):
        return column.cast(pa.string())
    raise InputError(
        f"must hold strings but has type {column.type}; convert the column to strings",
        path=str(path),
        column=name,
    )


def _concat(tables: list[pa.Table], path: Path) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"Parquet files in the folder disagree on schema ({err})", path=str(path)) from err


# --- JSONL ------------------------------------------------------------------------------------


def _read_jsonl(path: Path, columns: list[str], on_bad_rows: OnBadRows) -> _Raw:
    data: dict[str, list[str | None]] = {c: [] for c in columns}
    rows: list[int] = []
    rejects: list[dict] = []
    keys: dict[str, None] = {}
    try:
        handle = path.open("rb")
    except OSError as err:
        raise _open_error(path, err) from err
    with handle:
        for row, raw_line in enumerate(handle, start=1):
            record = _parse_json_line(raw_line, path, row, rejects)
            if record is None:
                continue
            keys.update(dict.fromkeys(record))
            values = _record_values(record, columns, path, row, rejects)
            if values is None:
                continue
            for col, value in zip(columns, values, strict=True):
                data[col].append(value)
            rows.append(row)
    if not keys and not rows:
        raise _no_valid_rows(path, rejects, on_bad_rows)
    table = pa.table({c: pa.array(data[c], pa.string()) for c in columns if c in keys})
    return _Raw(table, pa.array(rows, pa.int64()), rejects, list(keys))


def _parse_json_line(raw_line: bytes, path: Path, row: int, rejects: list[dict]) -> dict | None:
    """The line's object, or None for a blank line or (with a reject added) a bad one."""
    try:
        line = raw_line.decode("utf-8-sig" if row == 1 else "utf-8")
    except UnicodeDecodeError:
        rejects.append(reject_record(path, row, None, "invalid_utf8", _shown_line(raw_line)))
        return None
    if not line.strip(" \t\r\n"):  # JSON's whitespace only: a form feed or NBSP line is invalid JSON
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, too many digits, too deep
        rejects.append(reject_record(path, row, None, "invalid_json", line.rstrip("\r\n")))
        return None
    if not isinstance(record, dict):
        rejects.append(reject_record(path, row, None, "not_an_object", line.rstrip("\r\n")))
        return None
    return record


def _shown_line(raw_line: bytes) -> str:
    return raw_line[: VALUE_CHARS * 4].decode("utf-8", "backslashreplace").rstrip("\r\n")


def _record_values(
    record: dict, columns: list[str], path: Path, row: int, rejects: list[dict]
) -> list[str | None] | None:
    """The wanted values of one object, or None (with one reject added) if any is bad."""
    values = [record.get(col) for col in columns]
    for col, value in zip(columns, values, strict=True):
        if value is not None and not isinstance(value, str):
            rejects.append(reject_record(path, row, col, "non_string", _json_text(value)))
            return None
        if value is not None and _SURROGATE.search(value):
            rejects.append(reject_record(path, row, col, "invalid_unicode", value))
            return None
    return values


def _json_text(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return repr(value)


def _no_valid_rows(path: Path, rejects: list[dict], on_bad_rows: OnBadRows) -> InputError:
    if rejects and on_bad_rows == "fail":
        return bad_row_error(rejects[0])
    if not rejects:
        return InputError("no valid rows: the file is empty", path=str(path))
    first = rejects[0]
    return InputError(
        f"no valid rows: all {len(rejects)} non-blank line(s) were rejected, the first at row "
        f"{first['source_row']} ({first['reason'].replace('_', ' ')})",
        path=str(path),
    )


# --- CSV --------------------------------------------------------------------------------------


def _read_csv(path: Path, columns: list[str]) -> _Raw:
    """Parse records with the csv module; undecodable bytes quarantine their own record only.

    The file is decoded with ``surrogateescape`` so every byte survives parsing; a record whose
    fields hold an escaped byte is rejected as ``invalid_utf8`` with its record number.
    """
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise _open_error(path, err) from err
    text = payload.decode("utf-8-sig", "surrogateescape")
    # The limit is process-wide: raise it (never lower it) so no field of this file hits it.
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, CSV_FIELD_LIMIT)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = _csv_header(reader, path)
    _check_unique(path, columns, header)
    index = {name: i for i, name in enumerate(header)}
    present = [c for c in columns if c in index]
    data: dict[str, list[str]] = {c: [] for c in present}
    rows: list[int] = []
    rejects: list[dict] = []
    start = end = reader.line_num  # physical lines before and after the current record
    for row, record in enumerate(_csv_records(reader, path, rejects), start=1):
        start, end = end, reader.line_num
        if not record or not _csv_record_ok(record, len(header), path, row, delimiter, rejects):
            continue
        for col in present:
            data[col].append(record[index[col]])
        rows.append(row)
    if rows and _opens_an_unclosed_quote(text, start, delimiter):  # the last record, kept
        rejects.append(reject_record(path, rows.pop(), None, "unparseable_csv", _UNCLOSED))
        for col in present:
            data[col].pop()
    table = pa.table({c: pa.array(data[c], pa.string()) for c in present})
    return _Raw(table, pa.array(rows, pa.int64()), rejects, header)


_UNCLOSED = "a quoted field is never closed: it runs to the end of the file, taking every later line with it"


def _opens_an_unclosed_quote(text: str, start_line: int, delimiter: str) -> bool:
    """Whether the file's last record (from physical line `start_line`, 0-based) opens a quote
    it never closes: the csv module's lenient mode then returns the rest of the file as that
    one field, and the lines after it would vanish without a trace."""
    buffer = io.StringIO(text, newline="")
    for _ in range(start_line):
        buffer.readline()
    tail = buffer.read()
    try:
        for _ in csv.reader(io.StringIO(tail, newline=""), delimiter=delimiter, strict=True):
            pass
    except csv.Error as err:
        return "unexpected end of data" in str(err)
    return False


def _csv_header(reader: Iterator[list[str]], path: Path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("file is empty (no header row)", path=str(path)) from None
    except csv.Error as err:
        raise InputError(f"cannot parse header ({err})", path=str(path), row=0) from err
    if any(_SURROGATE.search(name) for name in header):
        raise InputError("header is not valid UTF-8", path=str(path), row=0)
    return header


def _csv_records(reader: Iterator[list[str]], path: Path, rejects: list[dict]) -> Iterator[list[str]]:
    """Yield each record (``[]`` for a blank line or an unparseable record) in file order."""
    row = 0
    while True:
        row += 1
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            rejects.append(reject_record(path, row, None, "unparseable_csv", str(err)))
            yield []


def _csv_record_ok(record: list[str], width: int, path: Path, row: int, delimiter: str, rejects: list[dict]) -> bool:
    if any(_SURROGATE.search(field) for field in record):
        rejects.append(reject_record(path, row, None, "invalid_utf8", _undecoded(delimiter.join(record))))
        return False
    if len(record) != width:
        rejects.append(reject_record(path, row, None, "wrong_field_count", delimiter.join(record)))
        return False
    return True


# --- row checks -------------------------------------------------------------------------------


def _drop_invalid_utf8(table: pa.Table, path: Path, present: dict[str, str]) -> tuple[pa.Table, pa.Table]:
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


def _check_texts(
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
            "source_file": pa.array([_source_file(path)] * n, pa.string()),
            "source_row": rows.column("source_row"),
            "column": pa.array([column] * n, pa.string()),
            "reason": pa.array([reason] * n, pa.string()),
            "value": pc.utf8_slice_codeunits(rows.column(canon), 0, VALUE_CHARS),
        },
        schema=REJECT_SCHEMA,
    )


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
        names = pa.array([_source_file(path) for _, path in parts], pa.string())
        keys = {"file": pc.index_in(rejects.column("source_file"), value_set=names)} | keys
    order = pa.table(keys)
    return rejects.take(pc.sort_indices(order, sort_keys=[(name, "ascending") for name in keys]))
