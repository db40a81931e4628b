"""Streamed selection equals the in-memory one: same rows, same Parquet bytes, same manifest figures.

The fixture is the SciFact sample (200 claims, 800 abstracts, real texts and ids) with seeded
random unit vectors in place of the model, searched to depth 20 (about 4,400 candidate rows);
``batch_rows`` is small and odd so selection runs in dozens of batches, some smaller than one
anchor's rows.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer.audit.feedback import apply_decisions
from negminer.config import MineConfig
from negminer.mining.derive import derive_dataset, with_pair_scores
from negminer.mining.quantiles import StreamedQuantiles
from negminer.mining.search import search_candidates
from negminer.mining.streaming import BatchedFeedback, anchor_batches, derive_files
from negminer.storage.atomic import write_parquet_atomic
from negminer.storage.inputs import prepare_inputs
from negminer.storage.parquet_stream import StagedParquetWriter

BATCH_ROWS = 37


@pytest.fixture(scope="module")
def world(sample_dir: Path, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("streaming")
    prepared = prepare_inputs(sample_dir / "pairs.parquet", sample_dir / "corpus.parquet")
    rng = np.random.default_rng(3)
    vectors = {}
    for stem in ("anchors", "docs"):
        v = rng.normal(size=(getattr(prepared, stem).num_rows, 16)).astype(np.float32)
        vectors[stem] = v / np.linalg.norm(v, axis=1, keepdims=True)
    pairs = prepared.pairs
    search_candidates(
        vectors["anchors"],
        vectors["docs"],
        folder / "candidates.parquet",
        pair_anchor=pairs.column("anchor_idx").to_numpy(),
        pair_doc=pairs.column("doc_idx").to_numpy(),
        doc_text_keys=prepared.docs.column("text_key").to_pylist(),
        anchor_text_keys=prepared.anchors.column("text_key").to_pylist(),
        search_depth=20,
        batch_size=64,
    )
    return {
        "folder": folder,
        "candidates": folder / "candidates.parquet",
        "anchors": prepared.anchors.select(["anchor_id", "text"]),
        "docs": prepared.docs.select(["doc_id", "text", "text_key"]),
        "pairs": with_pair_scores(pairs, vectors["anchors"], vectors["docs"]),
    }


def _bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _both(
    world: dict,
    out: Path,
    config: MineConfig,
    *,
    candidates: Path | None = None,
    pairs=None,
    transform=None,
    batch_rows: int = BATCH_ROWS,
):
    candidates = candidates or world["candidates"]
    pairs = world["pairs"] if pairs is None else pairs
    table = pq.read_table(candidates)
    memory = derive_dataset(
        transform(table) if transform else table,
        anchors=world["anchors"],
        docs=world["docs"],
        pairs=pairs,
        config=config,
    )
    paths = {stem: out / f"{stem}.parquet" for stem in ("candidates", "triplets", "scored")}
    streamed = derive_files(
        candidates,
        paths,
        anchors=world["anchors"],
        docs=world["docs"],
        pairs=pairs,
        config=config,
        transform=transform,
        batch_rows=batch_rows,
    )
    return memory, streamed


def _assert_same(memory, streamed) -> None:
    assert set(streamed.paths) == set(memory.tables)
    for stem, table in memory.tables.items():
        written = pq.read_table(streamed.paths[stem])
        assert written.equals(table), stem
        assert streamed.rows[stem] == table.num_rows
        assert streamed.paths[stem].read_bytes() == _bytes(table.combine_chunks()), f"{stem}: Parquet bytes differ"
    assert streamed.counts == memory.counts
    assert streamed.score_quantiles == memory.score_quantiles
    assert streamed.selection == memory.selection


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"strategy": "naive", "num_negatives": 5},
        {"strategy": "positive-aware", "range_max": 15},
        {"strategy": "semi-hard", "semi_hard_margin": 0.3},
        {"strategy": "calibrated", "min_score_percentile": 10.0},
        {"output_format": "n-tuple", "output_scores": True},
        {"output_format": "labeled-pair", "output_scores": True},
        {"output_format": "labeled-list", "output_scores": True, "sampling_strategy": "random"},
    ],
)
def test_streamed_selection_equals_in_memory(world: dict, tmp_path: Path, options: dict):
    memory, streamed = _both(world, tmp_path, MineConfig(search_depth=20, **options))
    assert streamed.rows["candidates"] > 40 * BATCH_ROWS  # many batches
    _assert_same(memory, streamed)


def test_the_batch_size_does_not_change_the_output(world: dict, tmp_path: Path):
    config = MineConfig(search_depth=20, output_scores=True)
    outputs = []
    for batch_rows in (1, 500, 1 << 20):
        out = tmp_path / str(batch_rows)
        outputs.append(
            {stem: p.read_bytes() for stem, p in _both(world, out, config, batch_rows=batch_rows)[1].paths.items()}
        )
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_file_whose_anchors_are_not_together_is_selected_in_one_batch(world: dict, tmp_path: Path, caplog):
    table = pq.read_table(world["candidates"])
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    path = tmp_path / "shuffled.parquet"
    pq.write_table(shuffled, path)
    memory, streamed = _both(world, tmp_path, MineConfig(search_depth=20, strategy="calibrated"), candidates=path)
    _assert_same(memory, streamed)
    assert "not together" in caplog.text


def test_audit_decisions_applied_per_batch_equal_applied_at_once(world: dict, tmp_path: Path):
    table = pq.read_table(world["candidates"])
    rows = table.slice(0, 400).filter(pa.compute.invert(table.slice(0, 400).column("is_positive")))
    anchors, docs = world["anchors"], world["docs"]
    pick = rows.take([0, 25, 60, 130, 300])
    anchor_ids = anchors.column("anchor_id").take(pick.column("anchor_idx")).to_pylist()
    doc_ids = docs.column("doc_id").take(pick.column("doc_idx")).to_pylist()
    decisions = pa.table(
        {
            "anchor_id": anchor_ids,
            "doc_id": doc_ids,
            "decision": ["is_positive", "drop_pair", "is_negative", "is_positive", "skip"],
        }
    )
    whole = apply_decisions(table, decisions, anchors=anchors, docs=docs, pairs=world["pairs"], extra_positives=True)
    feedback = BatchedFeedback(
        decisions, schema=table.schema, anchors=anchors, docs=docs, pairs=world["pairs"], extra_positives=True
    )
    assert feedback.pairs.equals(whole.pairs)
    config = MineConfig(search_depth=20)
    memory = derive_dataset(whole.candidates, anchors=anchors, docs=docs, pairs=whole.pairs, config=config)
    paths = {stem: tmp_path / f"{stem}.parquet" for stem in ("candidates", "triplets", "scored")}
    streamed = derive_files(
        world["candidates"],
        paths,
        anchors=anchors,
        docs=docs,
        pairs=feedback.pairs,
        config=config,
        transform=feedback,
        batch_rows=BATCH_ROWS,
    )
    _assert_same(memory, streamed)
    assert feedback.counts == whole.counts
    assert whole.counts["excluded_candidates"] > 0


def test_anchor_batches_never_split_an_anchor(world: dict):
    seen = []
    for batch in anchor_batches(world["candidates"], 7):
        anchors = np.unique(batch.column("anchor_idx").to_numpy())
        assert not set(anchors) & set(seen)
        seen.extend(anchors.tolist())
    assert sum(1 for _ in anchor_batches(world["candidates"], 7)) == len(seen)


def test_streamed_quantiles_are_numpy_quantiles():
    rng = np.random.default_rng(1)
    probabilities = (0.0, 0.01, 0.25, 0.5, 0.95, 0.99, 1.0)
    for values in (
        rng.normal(size=10_001).astype(np.float32),
        np.full(5, 0.3, np.float32),
        np.round(rng.uniform(-1, 1, 999), 2).astype(np.float32),
        np.array([0.7], np.float32),
    ):
        quantiles = StreamedQuantiles(probabilities)
        parts = np.array_split(values, 4)
        for part in parts:
            quantiles.first(part)
        for part in parts:
            quantiles.second(part)
        assert quantiles.values() == [float(np.quantile(values, p)) for p in probabilities]


def test_staged_writer_matches_write_table_and_publishes_only_on_commit(tmp_path: Path):
    table = pa.table({"a": np.arange(10_000), "b": pa.array([f"t{i % 97}" for i in range(10_000)])})
    expected = tmp_path / "expected.parquet"
    pq.write_table(table, expected, compression="zstd", row_group_size=1000)
    target = tmp_path / "out.parquet"
    with StagedParquetWriter(target, row_group_rows=1000) as writer:
        for first in range(0, 10_000, 333):
            writer.write(table.slice(first, 333))
        assert not target.exists()
        writer.commit()
    assert target.read_bytes() == expected.read_bytes()
    with pytest.raises(RuntimeError), StagedParquetWriter(tmp_path / "failed.parquet") as writer:
        writer.write(table)
        raise RuntimeError("killed")
    assert list(tmp_path.glob("*failed*")) == []


def test_an_empty_candidate_file_gives_empty_tables(world: dict, tmp_path: Path):
    empty = tmp_path / "empty.parquet"
    write_parquet_atomic(empty, pq.read_schema(world["candidates"]).empty_table())
    memory, streamed = _both(world, tmp_path, MineConfig(search_depth=20), candidates=empty)
    _assert_same(memory, streamed)
