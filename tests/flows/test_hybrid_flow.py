"""Hybrid candidates through the Prefect flow (BM25 shards and search shards mapped) and the local
runner: the same dataset bytes, whatever the order of the input rows, with the sources in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]

CONFIG = {
    "embed": {"max_seq_length": 64},
    "mine": {
        "strategy": "simans",  # sampled below the positive, so BM25-only candidates get chosen too
        "num_negatives": 2,
        "search_depth": 20,
        "sources": ["dense", "bm25"],
        "bm25_shard_docs": 40,  # 3 BM25 shards over the 100 docs
        "search_shard_size": 16,
    },
}


def _shuffled(path: Path, out: Path, seed: int) -> str:
    table = pq.read_table(path)
    pq.write_table(table.take(np.random.default_rng(seed).permutation(table.num_rows)), out)
    return str(out)


def _candidates(version: Path) -> list[tuple]:
    """Every candidate by anchor and doc text, with its rank, score, source and slot: no row numbers."""
    table = pq.read_table(version / "candidates.parquet")
    anchors = pq.read_table(version / "anchors.parquet").column("text").to_pylist()
    docs = pq.read_table(version / "docs.parquet").column("text").to_pylist()
    columns = [table.column(c).to_pylist() for c in ("anchor_idx", "doc_idx", "rank", "score", "source")]
    slots = table.column("negative_slot").to_pylist()
    return sorted(
        (anchors[a], docs[d], rank, score, source, slot is not None)
        for (a, d, rank, score, source), slot in zip(zip(*columns, strict=True), slots, strict=True)
    )


def test_flow_and_local_runner_write_the_same_hybrid_dataset(prefect_harness, tiny_inputs, tmp_path) -> None:
    from negminer.config import PipelineConfig
    from negminer.flows.mine import mine_flow
    from negminer.stages import run_stages

    config = PipelineConfig.from_dict(CONFIG)
    pairs, corpus = str(tiny_inputs["pairs40"]), str(tiny_inputs["corpus"])
    flow_version = Path(mine_flow(pairs, str(tmp_path / "flow"), "tiny", corpus=corpus, config=config))
    local_version = Path(
        run_stages(
            _shuffled(tiny_inputs["pairs40"], tmp_path / "pairs.parquet", 1),
            tmp_path / "local",
            "tiny",
            corpus=_shuffled(tiny_inputs["corpus"], tmp_path / "corpus.parquet", 2),
            config=config,
        )
    )

    assert _candidates(local_version) == _candidates(flow_version), "the same candidates, whatever the row order"
    triplets = [pq.read_table(v / "triplets.parquet").to_pylist() for v in (flow_version, local_version)]
    assert sorted(map(str, triplets[0])) == sorted(map(str, triplets[1]))
    manifest = json.loads((flow_version / "manifest.json").read_text())
    candidates = pq.read_table(flow_version / "candidates.parquet")
    counts = {c["values"]: c["counts"] for c in pc.value_counts(candidates.column("source")).to_pylist()}
    assert set(counts) == {"dense", "bm25", "dense+bm25"}
    sources = manifest["sources"]
    assert sources["sources"] == ["dense", "bm25"] and sources["fusion"] == "rrf" and sources["rrf_k"] == 60
    assert sources["rows_by_source"] == counts
    assert [(s["first"], s["stop"]) for s in sources["bm25"]["shards"]] == [(0, 40), (40, 80), (80, 100)]
    assert manifest["config"]["mine"]["sources"] == ["dense", "bm25"]
    chosen = candidates.filter(pc.is_valid(candidates.column("negative_slot")))
    assert chosen.num_rows > 60 and "bm25" in chosen.column("source").to_pylist(), "BM25-only negatives chosen"
