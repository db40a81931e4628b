"""Block reads of memory-mapped vectors: float32 copies, and the mapped pages leave the RSS."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from negminer.mining.vectors import read_rows, release, take_rows


def _rss_file_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_rows_are_float32_copies(tmp_path: Path):
    vectors = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float16)
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    block = read_rows(mapped, 10, 20)
    assert block.dtype == np.float32 and block.flags.c_contiguous and not isinstance(block, np.memmap)
    np.testing.assert_array_equal(block, vectors[10:20].astype(np.float32))
    np.testing.assert_array_equal(take_rows(mapped, np.array([5, 1])), vectors[[5, 1]].astype(np.float32))
    release(vectors)  # a plain array: nothing to do
    np.testing.assert_array_equal(read_rows(vectors, 0, 3), vectors[:3].astype(np.float32))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_pass_over_a_mapped_file_does_not_stay_resident(tmp_path: Path):
    rows, dim = 160_000, 384  # 123 MB of float16
    np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float16, shape=(rows, dim)).flush()
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    before = _rss_file_mb()
    total = sum(float(read_rows(mapped, first, first + 20_000).sum()) for first in range(0, rows, 20_000))
    assert total == 0.0
    assert _rss_file_mb() - before < 30  # without release: + ~120 MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_scattered_gather_releases_pages_as_it_goes(tmp_path: Path, monkeypatch):
    import negminer.mining.vectors as vectors_module

    rows, dim = 160_000, 384  # 123 MB of float16
    np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float16, shape=(rows, dim)).flush()
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    resident: list[float] = []

    def measured_release(vectors):
        resident.append(_rss_file_mb())
        release(vectors)

    monkeypatch.setattr(vectors_module, "TAKE_CHUNK", 256)
    monkeypatch.setattr(vectors_module, "release", measured_release)
    before = _rss_file_mb()
    picked = np.sort(np.random.default_rng(0).choice(rows, 20_000, replace=False))
    assert not take_rows(mapped, picked).any() and len(resident) == -(-20_000 // 256)
    assert max(resident) - before < 40  # one gather of all 20,000 rows: + ~120 MB before its release


def test_mapped_rows_read_like_an_array_in_float32(tmp_path: Path):
    from negminer.mining.vectors import MappedRows

    vectors = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    rows = MappedRows(np.load(tmp_path / "v.npy", mmap_mode="r"))
    grid = np.array([[3, 1], [0, 49]])
    assert len(rows) == 50 and rows.shape == (50, 4)
    np.testing.assert_array_equal(rows[np.array([5, 2, 5])], vectors[[5, 2, 5]])
    np.testing.assert_array_equal(rows[grid], vectors[grid])
    np.testing.assert_array_equal(rows[10:20], vectors[10:20])
    np.testing.assert_array_equal(rows[7], vectors[7])
    np.testing.assert_array_equal(read_rows(rows, 0, 5), vectors[:5])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_mapped_rows_gathers_do_not_stay_resident(tmp_path: Path):
    from negminer.mining.vectors import MappedRows

    rows, dim = 160_000, 384  # 123 MB of float16
    np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float16, shape=(rows, dim)).flush()
    plain, wrapped = (np.load(tmp_path / "v.npy", mmap_mode="r") for _ in range(2))
    picked = np.random.default_rng(0).integers(0, rows, 40_000)
    before = _rss_file_mb()
    assert not MappedRows(wrapped)[picked].any()
    assert _rss_file_mb() - before < 40
    assert not plain[picked].any()
    assert _rss_file_mb() - before > 80, "the plain gather maps the file (the difference the wrapper makes)"
