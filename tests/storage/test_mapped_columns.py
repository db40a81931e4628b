"""A Parquet column served from a memory-mapped Arrow IPC copy (storage/mapped_columns.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from negminer.storage.mapped_columns import mapped_column


def test_the_mapped_column_is_the_parquet_column_and_holds_no_heap_memory(tmp_path) -> None:
    texts = [f"passage {i} " + "word " * (i % 50) for i in range(200_000)]
    pq.write_table(pa.table({"doc_id": [str(i) for i in range(len(texts))], "text": texts}), tmp_path / "docs.parquet")
    allocated = pa.total_allocated_bytes()

    column = mapped_column(tmp_path / "docs.parquet", "text")

    assert column.to_pylist() == texts
    assert column.num_chunks > 1  # written in record batches, never as one table
    assert column.take([5, 199_999, 0]).to_pylist() == [texts[5], texts[199_999], texts[0]]
    assert pa.total_allocated_bytes() - allocated < 1 << 20  # the buffers are the file's pages
    assert (tmp_path / "docs.text.arrow").exists()


def test_the_copy_is_made_once_and_an_empty_column_is_empty(tmp_path) -> None:
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "anchors.parquet")
    mapped_column(tmp_path / "anchors.parquet", "text")
    made = (tmp_path / "anchors.text.arrow").stat().st_mtime_ns
    assert mapped_column(tmp_path / "anchors.parquet", "text").to_pylist() == ["a", "b"]
    assert (tmp_path / "anchors.text.arrow").stat().st_mtime_ns == made

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "none.parquet")
    assert len(mapped_column(tmp_path / "none.parquet", "text")) == 0
