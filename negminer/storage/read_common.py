"""What the format readers share: their result (:class:`RawRead`) and the file-level checks.

Contract: a format reader (Parquet, JSONL, CSV) returns a :class:`RawRead` with the wanted
columns as read, their 1-based row numbers and the rows it rejected while parsing; every
file-level problem raises :class:`~negminer.errors.InputError` naming the file (and the column,
where there is one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from negminer.errors import InputError

LISTED_COLUMNS = 50  # file columns named in a missing-column message
SURROGATE = re.compile("[\ud800-\udfff]")


class RawRead(NamedTuple):
    """What a format reader found: wanted columns as read, their row numbers, parse rejects."""

    table: pa.Table
    rows: pa.Array
    rejects: list[dict]
    columns: list[str]
    parts: tuple[tuple[int, Path], ...] = ()  # (first row, file) of each file of a folder


def open_error(path: Path, err: OSError) -> InputError:
    return InputError(f"cannot read file ({err.strerror or err})", path=str(path))


def check_required(path: Path, required: list[str], file_columns: list[str]) -> None:
    missing = [col for col in required if col not in file_columns]
    if not missing:
        return
    shown = file_columns[:LISTED_COLUMNS] + (["..."] if len(file_columns) > LISTED_COLUMNS else [])
    raise InputError(
        f"missing required column(s) {missing}; the file has {shown}. Rename them or pass the column names as options.",
        path=str(path),
        column=missing[0],
    )


def check_unique(path: Path, columns: list[str], file_columns: list[str]) -> None:
    for col in columns:
        count = file_columns.count(col)
        if count > 1:
            raise InputError(
                f"the file has {count} columns named {col!r}; rename all but one", path=str(path), column=col
            )
