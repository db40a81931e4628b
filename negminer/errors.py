"""The exceptions negminer raises.

Every error a user can cause is a :class:`NegminerError`; the CLI prints its message as one
line on stderr. :class:`InputError` names the file, row and column when one is known, so the
user can find the bad value without a traceback.
"""

from __future__ import annotations


class NegminerError(Exception):
    """Base class for errors caused by input, configuration or the environment."""


class InputError(NegminerError):
    """Bad input data: names the file and, where known, the row and column."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = path
        self.row = row
        self.column = column
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(NegminerError):
    """An invalid configuration value or file."""


class StorageError(NegminerError):
    """A failure to read or write negminer's own files (retryable I/O)."""
