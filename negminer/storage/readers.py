"""Readers for pairs and corpus files: Parquet (file or folder), JSONL and CSV.

Contract: a reader returns a :class:`ReadResult` whose ``table`` holds only string columns
(the requested ones, renamed to negminer's canonical names) plus ``source_row`` (1-based data
row number in the file, header excluded), and whose ``rejects`` table holds the quarantined
rows with ``source_file``, ``source_row``, ``column`` and ``reason``. File-level problems
(missing file, unreadable or corrupt file, missing required column) always raise
:class:`~negminer.errors.InputError`; row-level problems are quarantined or raised depending on
``on_bad_rows``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import NamedTuple

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


class ReadResult(NamedTuple):
    table: pa.Table
    rejects: pa.Table


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def read_table(
    path: str | Path,
    *,
    required: dict[str, str],
    optional: dict[str, str] | None = None,
    text_columns: tuple[str, ...] = (),
    on_bad_rows: OnBadRows = "quarantine",
) -> ReadResult:
    """Read a file into canonical string columns and quarantine bad rows.

    Args:
        path: Parquet file or folder of Parquet files, JSONL, or CSV/TSV file.
        required: canonical name -> column name in the file; missing ones raise.
        optional: canonical name -> column name in the file; used when present.
        text_columns: canonical names that must hold non-empty text.
        on_bad_rows: quarantine bad rows (returned in ``rejects``) or raise on the first.

    Returns:
        ReadResult with ``table`` of shape (rows kept, canonical columns + source_row).

    Example:
        >>> read_table("pairs.jsonl", required={"anchor": "anchor", "positive": "positive"})  # doctest: +SKIP
    """
    path = Path(path)
    optional = optional or {}
    if not path.exists():
        raise InputError("file not found", path=str(path))
    wanted = {**required, **optional}
    raw, format_rejects = _read_any(path, list(wanted.values()), on_bad_rows)
    missing = [col for col in required.values() if col not in raw.column_names]
    if missing:
        raise InputError(
            f"missing required column(s) {missing}; the file has {raw.column_names}. "
            "Rename them or pass the column names as options.",
            path=str(path),
            column=missing[0],
        )
    present = {canon: col for canon, col in wanted.items() if col in raw.column_names}
    table = pa.table(
        {canon: raw.column(col) for canon, col in present.items()}
        | {"source_row": raw.column("source_row")}
    )
    table = _cast_to_string(table, path, present)
    table, row_rejects = _quarantine_rows(table, path, present, text_columns, on_bad_rows)
    rejects = pa.concat_tables([format_rejects, row_rejects])
    if rejects.num_rows:
        logger.warning("%s: quarantined %d row(s)", path, rejects.num_rows)
    return ReadResult(table, rejects)


def _read_any(path: Path, columns: list[str], on_bad_rows: OnBadRows) -> tuple[pa.Table, pa.Table]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in PARQUET_SUFFIXES)
        if not files:
            raise InputError("folder holds no .parquet files", path=str(path))
        tables = [_read_parquet(p, columns) for p in files]
        return _number_rows(_concat(tables, path)), empty_rejects()
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _number_rows(_read_parquet(path, columns)), empty_rejects()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, columns, on_bad_rows)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, columns, on_bad_rows)
    raise InputError(
        f"unknown file type {suffix!r}; use .parquet, .jsonl or .csv (or a folder of .parquet)",
        path=str(path),
    )


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    try:
        schema = pq.read_schema(path)
        present = [c for c in columns if c in schema.names]
        return pq.read_table(path, columns=present)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"not a readable Parquet file ({err})", path=str(path)) from err


def _concat(tables: list[pa.Table], path: Path) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as err:
        raise InputError(f"Parquet files in the folder disagree on schema ({err})", path=str(path)) from err


def _number_rows(table: pa.Table) -> pa.Table:
    return table.append_column("source_row", pa.array(range(1, table.num_rows + 1), pa.int64()))


def _reject(path: Path, row: int, column: str | None, reason: str, value: object) -> dict:
    text = None if value is None else str(value)[:200]
    return {"source_file": str(path), "source_row": row, "column": column, "reason": reason, "value": text}


def _bad_row(
    on_bad_rows: OnBadRows, path: Path, row: int, column: str | None, reason: str, value: object
) -> dict:
    if on_bad_rows == "fail":
        raise InputError(reason.replace("_", " "), path=str(path), row=row, column=column)
    return _reject(path, row, column, reason, value)


def _read_jsonl(path: Path, columns: list[str], on_bad_rows: OnBadRows) -> tuple[pa.Table, pa.Table]:
    data: dict[str, list] = {c: [] for c in columns}
    rows: list[int] = []
    rejects: list[dict] = []
    try:
        handle = path.open("rb")
    except OSError as err:
        raise InputError(f"cannot open file ({err.strerror})", path=str(path)) from err
    with handle:
        for row, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            record = _parse_json_line(raw_line, path, row, on_bad_rows, rejects)
            if record is None:
                continue
            for col in columns:
                data[col].append(record.get(col))
            rows.append(row)
    seen = [c for c in columns if any(v is not None for v in data[c])] if rows else []
    arrays = {c: pa.array([_as_text(v) for v in data[c]], pa.string()) for c in seen}
    non_string = _non_string_rejects(data, seen, rows, path, on_bad_rows)
    table = pa.table(arrays | {"source_row": pa.array(rows, pa.int64())})
    return table, pa.Table.from_pylist(rejects + non_string, schema=REJECT_SCHEMA)


def _parse_json_line(
    raw_line: bytes, path: Path, row: int, on_bad_rows: OnBadRows, rejects: list[dict]
) -> dict | None:
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError:
        rejects.append(_bad_row(on_bad_rows, path, row, None, "invalid_utf8", raw_line[:200]))
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        rejects.append(_bad_row(on_bad_rows, path, row, None, "invalid_json", line))
        return None
    if not isinstance(record, dict):
        rejects.append(_bad_row(on_bad_rows, path, row, None, "not_an_object", line))
        return None
    return record


def _as_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _non_string_rejects(
    data: dict[str, list], columns: list[str], rows: list[int], path: Path, on_bad_rows: OnBadRows
) -> list[dict]:
    out = []
    for col in columns:
        for value, row in zip(data[col], rows, strict=True):
            if value is not None and not isinstance(value, str):
                out.append(_bad_row(on_bad_rows, path, row, col, "non_string", value))
    return out


def _read_csv(path: Path, columns: list[str], on_bad_rows: OnBadRows) -> tuple[pa.Table, pa.Table]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot open file ({err.strerror})", path=str(path)) from err
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError:
        return _read_csv_lines(path, payload, columns, delimiter, on_bad_rows)
    return _csv_rows_to_table(path, io.StringIO(text, newline=""), columns, delimiter, on_bad_rows, [])


def _read_csv_lines(
    path: Path, payload: bytes, columns: list[str], delimiter: str, on_bad_rows: OnBadRows
) -> tuple[pa.Table, pa.Table]:
    """Slow path for files with invalid UTF-8: find and quarantine the bad lines."""
    good: list[str] = []
    rejects: list[dict] = []
    for line_no, raw_line in enumerate(payload.splitlines(keepends=True)):
        try:
            good.append(raw_line.decode("utf-8-sig" if line_no == 0 else "utf-8"))
        except UnicodeDecodeError:
            if line_no == 0:
                raise InputError("header is not valid UTF-8", path=str(path), row=0) from None
            rejects.append(_bad_row(on_bad_rows, path, line_no, None, "invalid_utf8", raw_line))
            good.append("\x00SKIP\n")
    return _csv_rows_to_table(
        path, io.StringIO("".join(good), newline=""), columns, delimiter, on_bad_rows, rejects
    )


def _csv_rows_to_table(
    path: Path,
    handle: io.StringIO,
    columns: list[str],
    delimiter: str,
    on_bad_rows: OnBadRows,
    rejects: list[dict],
) -> tuple[pa.Table, pa.Table]:
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("file is empty (no header row)", path=str(path)) from None
    except csv.Error as err:
        raise InputError(f"cannot parse header ({err})", path=str(path), row=0) from err
    index = {name: i for i, name in enumerate(header)}
    present = [c for c in columns if c in index]
    data: dict[str, list] = {c: [] for c in present}
    rows: list[int] = []
    row = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            row += 1
            rejects.append(_bad_row(on_bad_rows, path, row, None, "unparseable_csv", str(err)))
            continue
        row += 1
        if record == ["\x00SKIP"] or not record:
            continue
        if len(record) != len(header):
            rejects.append(_bad_row(on_bad_rows, path, row, None, "wrong_field_count", record))
            continue
        for col in present:
            data[col].append(record[index[col]])
        rows.append(row)
    arrays = {c: pa.array(data[c], pa.string()) for c in present}
    table = pa.table(arrays | {"source_row": pa.array(rows, pa.int64())})
    return table, pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)


def _cast_to_string(table: pa.Table, path: Path, present: dict[str, str]) -> pa.Table:
    for canon, col in present.items():
        column = table.column(canon)
        if pa.types.is_string(column.type):
            continue
        if pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
            table = table.set_column(table.schema.get_field_index(canon), canon, column.cast(pa.string()))
            continue
        raise InputError(
            f"must hold strings but has type {column.type}", path=str(path), column=col
        )
    return table


def _quarantine_rows(
    table: pa.Table,
    path: Path,
    present: dict[str, str],
    text_columns: tuple[str, ...],
    on_bad_rows: OnBadRows,
) -> tuple[pa.Table, pa.Table]:
    bad_mask = pa.array([False] * table.num_rows)
    rejects = []
    for canon in text_columns:
        column = table.column(canon)
        is_null = pc.is_null(column)
        is_blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), False)
        for mask, reason in ((is_null, "null_value"), (is_blank, "empty_text")):
            hit = pc.and_not(mask, bad_mask)
            if not pc.any(hit).as_py():
                continue
            rows = table.filter(hit)
            first_row = rows.column("source_row")[0].as_py()
            if on_bad_rows == "fail":
                raise InputError(reason.replace("_", " "), path=str(path), row=first_row, column=present[canon])
            rejects.append(_reject_table(rows, path, present[canon], reason, canon))
            bad_mask = pc.or_(bad_mask, hit)
    kept = table.filter(pc.invert(bad_mask))
    return kept, pa.concat_tables(rejects) if rejects else empty_rejects()


def _reject_table(rows: pa.Table, path: Path, column: str, reason: str, canon: str) -> pa.Table:
    n = rows.num_rows
    return pa.table(
        {
            "source_file": pa.array([str(path)] * n, pa.string()),
            "source_row": rows.column("source_row"),
            "column": pa.array([column] * n, pa.string()),
            "reason": pa.array([reason] * n, pa.string()),
            "value": rows.column(canon).cast(pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
