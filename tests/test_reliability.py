"""Catalogue entries of the reliability issue that are not reader-level (see README)."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow as pa
import pytest

from negminer.errors import ConfigError, StorageError
from negminer.mining.encoder import resolve_model_path
from negminer.storage import versions
from negminer.storage.versions import latest_version, write_version


def test_model_folder_that_is_not_a_sentence_transformers_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ConfigError, match="not a sentence-transformers model folder"):
        resolve_model_path(str(tmp_path))


def test_model_that_is_not_a_local_folder_says_negminer_runs_offline() -> None:
    with pytest.raises(ConfigError, match="offline"):
        resolve_model_path("sentence-transformers/all-mpnet-base-v2")


def test_disk_full_while_writing_keeps_the_previous_latest(tmp_path: Path, monkeypatch) -> None:
    table = pa.table({"anchor": ["a"], "positive": ["p"], "negative": ["n"]})
    write_version(tmp_path, "ds", tables={"triplets": table}, manifest={})

    def full_disk(path, table):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(versions, "write_parquet_atomic", full_disk)
    with pytest.raises(StorageError, match=r"ds: cannot write dataset version.*No space left on device"):
        write_version(tmp_path, "ds", tables={"triplets": table}, manifest={})
    assert latest_version(tmp_path / "ds") == "v0001"
    assert sorted(p.name for p in (tmp_path / "ds").iterdir() if not p.name.startswith(".")) == ["LATEST", "v0001"]
