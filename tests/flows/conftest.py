"""Small real inputs for the flow tests: 40 SciFact sample pairs (+2 more: 5%) and 100 docs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="session")
def tiny_inputs(sample_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """pairs40 / pairs42 (the first 40 and 42 sample pairs) and a 100-doc corpus holding all positives."""
    folder = tmp_path_factory.mktemp("tiny")
    pairs = pq.read_table(sample_dir / "pairs.parquet").slice(0, 42)
    corpus = pq.read_table(sample_dir / "corpus.parquet").to_pylist()
    wanted = set(pairs.column("positive_id").to_pylist())
    rows = [r for r in corpus if r["id"] in wanted]
    rows += [r for r in corpus if r["id"] not in wanted][: 100 - len(rows)]
    rows.sort(key=lambda r: int(r["id"]))
    pq.write_table(pairs.slice(0, 40), folder / "pairs40.parquet")
    pq.write_table(pairs, folder / "pairs42.parquet")
    pq.write_table(pa.Table.from_pylist(rows), folder / "corpus.parquet")
    return {
        "pairs40": folder / "pairs40.parquet",
        "pairs42": folder / "pairs42.parquet",
        "corpus": folder / "corpus.parquet",
    }
