"""The JSONL format reader: one JSON object per line, read line by line.

Contract: rows are numbered by physical line (1-based; a UTF-8 byte-order mark on the first line
is dropped); blank lines are skipped and counted nowhere. A bad line is rejected with one of
``invalid_utf8``, ``invalid_json``, ``not_an_object``, ``non_string`` or ``invalid_unicode``.
A file with no object at all raises :class:`~negminer.errors.InputError` (naming the first
rejected line, if any).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from negminer.config import OnBadRows
from negminer.errors import InputError
from negminer.storage.read_common import SURROGATE, RawRead, open_error
from negminer.storage.rejects import VALUE_CHARS, bad_row_error, reject_record

JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


def read_jsonl(path: Path, columns: list[str], on_bad_rows: OnBadRows) -> RawRead:
    data: dict[str, list[str | None]] = {c: [] for c in columns}
    rows: list[int] = []
    rejects: list[dict] = []
    keys: dict[str, None] = {}
    try:
        handle = path.open("rb")
    except OSError as err:
        raise open_error(path, err) from err
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
    return RawRead(table, pa.array(rows, pa.int64()), rejects, list(keys))


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
        if value is not None and SURROGATE.search(value):
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
