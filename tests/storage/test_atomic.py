"""Atomic writes: all or nothing, no temp files left behind."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.storage.atomic import (
    atomic_write,
    sha256_file,
    write_bytes_atomic,
    write_npy_atomic,
    write_parquet_atomic,
)


class Boom(RuntimeError):
    pass


def failing_writer(handle):
    handle.write(b"half of the new cont")
    raise Boom("disk on fire")


def test_writer_error_keeps_old_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    with pytest.raises(Boom):
        atomic_write(target, failing_writer)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_writer_error_on_a_new_file_creates_nothing(tmp_path):
    with pytest.raises(Boom):
        atomic_write(tmp_path / "new.bin", failing_writer)
    assert list(tmp_path.iterdir()) == []


def test_interrupt_also_cleans_up(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")

    def interrupted(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_successful_write_replaces_the_content(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    returned = atomic_write(target, lambda handle: handle.write(b"new content"))
    assert returned == target
    assert target.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    write_bytes_atomic(str(target), b"hi")
    assert target.read_bytes() == b"hi"


def test_parquet_and_npy_round_trip(tmp_path):
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    write_parquet_atomic(tmp_path / "t.parquet", table)
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_npy_atomic(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "t.parquet"]


def test_failing_parquet_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    old = pa.table({"x": [1]})
    write_parquet_atomic(target, old)

    def broken_write_table(table, where, **kwargs):
        where.write(b"PAR1 and then nothing")
        raise OSError("no space left on device")

    monkeypatch.setattr(pq, "write_table", broken_write_table)
    with pytest.raises(OSError, match="no space"):
        write_parquet_atomic(target, pa.table({"x": [2, 3]}))
    monkeypatch.undo()
    assert pq.read_table(target).equals(old)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_published_file_has_the_mode_a_plain_open_would_give(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic = write_bytes_atomic(tmp_path / "atomic.bin", b"x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_published_file_follows_a_umask_set_after_import(tmp_path):
    previous = os.umask(0o077)
    try:
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")
        atomic = write_bytes_atomic(tmp_path / "atomic.bin", b"x")
    finally:
        os.umask(previous)
    assert plain.stat().st_mode & 0o777 == 0o600
    assert atomic.stat().st_mode & 0o777 == 0o600


def test_without_proc_the_mode_still_follows_the_umask(tmp_path, monkeypatch):
    from negminer.storage import atomic

    monkeypatch.setattr(atomic, "_PROC_STATUS", tmp_path / "no-proc-status")
    previous = os.umask(0o027)
    try:
        written = write_bytes_atomic(tmp_path / "atomic.bin", b"x")
    finally:
        os.umask(previous)
    assert written.stat().st_mode & 0o777 == 0o640


def test_two_writers_of_one_path_get_different_temporary_names(tmp_path):
    from negminer.storage.atomic import atomic_path

    target = tmp_path / "docs.npy"
    with atomic_path(target, suffix=".npy") as first, atomic_path(target, suffix=".npy") as second:
        first.write_bytes(b"1")
        second.write_bytes(b"2")
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(".docs.npy.") and first.name.endswith(".partial.npy")
    assert [p.name for p in tmp_path.iterdir()] == ["docs.npy"]


def test_a_saved_index_leaves_no_temporary_file(tmp_path):
    import faiss

    from negminer.mining.index import load_index, save_index

    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    save_index(index, tmp_path / "index.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]
    assert load_index(tmp_path / "index.faiss", use_gpu=None).ntotal == 4
