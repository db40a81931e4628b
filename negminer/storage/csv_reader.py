"""The CSV/TSV format reader (``.tsv`` is tab-separated), parsed with the csv module.

Contract: the first record is the header and must parse as valid UTF-8, else
:class:`~negminer.errors.InputError`; data rows are numbered by record as the csv module reads
them (1-based, header excluded; a quoted line break stays in its record, a blank line counts
and is skipped). A bad record is rejected on its own with ``invalid_utf8``,
``wrong_field_count`` or ``unparseable_csv``; a last record whose quote is never closed (it
would swallow the rest of the file) is rejected as ``unparseable_csv``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from negminer.errors import InputError
from negminer.storage.read_common import SURROGATE, RawRead, check_unique, open_error
from negminer.storage.rejects import reject_record, undecoded

CSV_SUFFIXES = {".csv", ".tsv"}
CSV_FIELD_LIMIT = 2**31 - 1  # the largest limit the csv module accepts on every platform


def read_csv(path: Path, columns: list[str]) -> RawRead:
    """Parse records with the csv module; undecodable bytes quarantine their own record only.

    The file is decoded with ``surrogateescape`` so every byte survives parsing; a record whose
    fields hold an escaped byte is rejected as ``invalid_utf8`` with its record number.
    """
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise open_error(path, err) from err
    text = payload.decode("utf-8-sig", "surrogateescape")
    # The limit is process-wide: raise it (never lower it) so no field of this file hits it.
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, CSV_FIELD_LIMIT)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = _csv_header(reader, path)
    check_unique(path, columns, header)
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
    return RawRead(table, pa.array(rows, pa.int64()), rejects, header)


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
    if any(SURROGATE.search(name) for name in header):
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
    if any(SURROGATE.search(field) for field in record):
        rejects.append(reject_record(path, row, None, "invalid_utf8", undecoded(delimiter.join(record))))
        return False
    if len(record) != width:
        rejects.append(reject_record(path, row, None, "wrong_field_count", delimiter.join(record)))
        return False
    return True
