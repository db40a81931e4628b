"""The loader reads candidates, docs and pairs in batches: results do not depend on the batch size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer.audit import loader
from negminer.audit.loader import flagged_rows, score_histogram

DATASET = "scifact-audit"  # the dataset conftest.py builds


def _small_row_groups(version_dir: Path, stems: tuple[str, ...], rows: int) -> None:
    for stem in stems:
        path = version_dir / f"{stem}.parquet"
        pq.write_table(pq.read_table(path), path, row_group_size=rows)


def _whole_table_histogram(path: Path, bins: int) -> dict:
    """The histogram computed from whole columns, as the loader did before it read in batches."""
    table = pq.read_table(path, columns=["score", "is_positive", "negative_slot"])
    is_positive = table["is_positive"].to_numpy(zero_copy_only=False)
    is_negative = table["negative_slot"].is_valid().to_numpy(zero_copy_only=False)
    score = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    shown = score[is_positive | is_negative]
    low, high = math.floor(shown.min() * 20) / 20, math.ceil(shown.max() * 20) / 20
    edges = np.linspace(low, max(high, low + 0.05), bins + 1)
    return {
        "edges": [round(float(e), 4) for e in edges],
        "positive": np.histogram(score[is_positive], edges)[0].tolist(),
        "negative": np.histogram(score[is_negative], edges)[0].tolist(),
    }


def test_flagged_rows_are_the_same_in_tiny_batches_and_never_read_whole_tables(version_dir, monkeypatch):
    expected = flagged_rows(version_dir, dataset=DATASET, version="v0001")
    _small_row_groups(version_dir, ("candidates", "docs", "pairs", "anchors"), rows=7)
    monkeypatch.setattr(loader, "BATCH_ROWS", 3)
    whole_reads = []
    read_table = pq.read_table
    monkeypatch.setattr(
        pq, "read_table", lambda path, **kw: whole_reads.append(Path(path).name) or read_table(path, **kw)
    )

    rows = flagged_rows(version_dir, dataset=DATASET, version="v0001")

    assert rows == expected and len(rows) == pq.read_metadata(version_dir / "flagged.parquet").num_rows
    assert set(whole_reads) == {"flagged.parquet"}


def test_score_histogram_in_tiny_batches_equals_the_whole_table_histogram(version_dir, monkeypatch):
    path = version_dir / "candidates.parquet"
    expected = _whole_table_histogram(path, loader.HISTOGRAM_BINS)
    _small_row_groups(version_dir, ("candidates",), rows=10)
    monkeypatch.setattr(loader, "BATCH_ROWS", 4)

    histogram = score_histogram(version_dir)

    assert histogram == expected and pq.read_metadata(path).num_row_groups > 10
    assert sum(histogram["positive"]) + sum(histogram["negative"]) > 0


def test_read_filtered_keeps_file_order_over_row_groups(tmp_path: Path, monkeypatch) -> None:
    table = pa.table(
        {
            "anchor_id": ["a", "b", "a", "c", "b", "a", "d", "a"],
            "doc_id": ["x", "x", "y", "x", "y", "x", "z", "z"],
            "score": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        }
    )
    path = tmp_path / "candidates.parquet"
    pq.write_table(table, path, row_group_size=3)
    monkeypatch.setattr(loader, "BATCH_ROWS", 2)
    anchors, docs = pa.array(["a", "b"]), pa.chunked_array([["x"], ["z", "q"]])

    both = loader._read_filtered(path, {"anchor_id": anchors, "doc_id": docs}, ["score", "title"])
    one = loader._read_filtered(path, {"doc_id": docs}, ["anchor_id", "missing"])
    none = loader._read_filtered(path, {"anchor_id": pa.array([], pa.string())}, ["score"])

    wanted = pc.and_(
        pc.is_in(table["anchor_id"], value_set=anchors), pc.is_in(table["doc_id"], value_set=pa.array(["x", "z", "q"]))
    )
    assert both.column_names == ["anchor_id", "doc_id", "score", "title"]
    assert both.drop_columns(["title"]).to_pylist() == table.filter(wanted).to_pylist()
    assert both["title"].null_count == both.num_rows == 4
    assert one.column_names == ["doc_id", "anchor_id"] and one["anchor_id"].to_pylist() == [
        "a",
        "b",
        "c",
        "a",
        "d",
        "a",
    ]
    assert none.num_rows == 0 and none.column_names == ["anchor_id", "score"]


def test_read_filtered_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(loader.InputError, match="missing"):
        loader._read_filtered(tmp_path / "docs.parquet", {"doc_id": pa.array(["x"])}, ["text"])
