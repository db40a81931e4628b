"""The Parquet format reader: one Parquet file, or a folder of them read as one table.

Contract: a folder's files are its ``.parquet``/``.pq`` entries by name (hidden ``.`` and
metadata ``_`` entries skipped); they must agree on each column's type (any kind of string
counts as one) and each non-empty file must hold the required columns. Rows are numbered across
the folder; :attr:`~negminer.storage.read_common.RawRead.parts` maps them back to the files.
A missing, unreadable or corrupt file raises :class:`~negminer.errors.InputError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negminer.errors import InputError
from negminer.storage.read_common import RawRead, check_required, check_unique, open_error
from negminer.storage.row_checks import is_text_type

PARQUET_SUFFIXES = {".parquet", ".pq"}
# What pyarrow raises for a corrupt file (UnicodeDecodeError: a column name that is not UTF-8).
PARQUET_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)


def parquet_files(folder: Path) -> list[Path]:
    """The folder's Parquet files by name; hidden (``.``) and metadata (``_``) entries skipped."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise open_error(folder, err) from err
    files = [p for p in entries if p.suffix.lower() in PARQUET_SUFFIXES and p.name[0] not in "._" and p.is_file()]
    if not files:
        raise InputError("folder holds no .parquet files", path=str(folder))
    return files


def read_parquet_files(files: list[Path], columns: list[str], required: list[str], *, folder: Path | None) -> RawRead:
    parts = [_read_parquet(p, columns) for p in files]
    names = list(dict.fromkeys(name for _, file_names in parts for name in file_names))
    if folder is not None:
        check_required(folder, required, names)
        for path, (table, file_names) in zip(files, parts, strict=True):
            if table.num_rows:  # an empty part file may lack columns
                check_required(path, required, file_names)
        _check_folder_types(folder, files, [table for table, _ in parts])
    tables = [_text_as_string(table) for table, _ in parts]
    table = tables[0] if len(tables) == 1 else _concat(tables, folder or files[0])
    starts = np.cumsum([0] + [t.num_rows for t in tables[:-1]]) + 1
    file_parts = tuple(zip(starts.tolist(), files, strict=True)) if folder is not None else ()
    return RawRead(table, _number_rows(table.num_rows), [], names, file_parts)


def _number_rows(num_rows: int) -> pa.Array:
    return pa.array(np.arange(1, num_rows + 1, dtype=np.int64))


def _check_readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise open_error(path, err) from err


def _read_parquet(path: Path, columns: list[str]) -> tuple[pa.Table, list[str]]:
    """The wanted columns of one file, and all the file's column names."""
    _check_readable(path)
    try:
        names = pq.read_schema(path).names
    except PARQUET_ERRORS as err:
        raise InputError(f"not a readable Parquet file ({err})", path=str(path)) from err
    check_unique(path, columns, names)
    try:
        return pq.read_table(path, columns=[c for c in columns if c in names]), names
    except PARQUET_ERRORS as err:
        raise InputError(f"not a readable Parquet file ({err})", path=str(path)) from err


def _check_folder_types(folder: Path, files: list[Path], tables: list[pa.Table]) -> None:
    """Files of a folder must agree on each column's type (any kind of string counts as one)."""
    first: dict[str, tuple[str, Path]] = {}
    for path, table in zip(files, tables, strict=True):
        for field in table.schema:
            kind = "string" if is_text_type(field.type) else str(field.type)
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
        if is_text_type(field.type) and not pa.types.is_string(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(pa.string()))
    return table


def _concat(tables: list[pa.Table], path: Path) -> pa.Table:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InputError(f"Parquet files in the folder disagree on schema ({err})", path=str(path)) from err
