"""Streamed selection: known answers, and the same Parquet bytes whatever the batch size.

The fixture is the SciFact sample (200 claims, 800 abstracts, real texts and ids) with seeded
random unit vectors in place of the model, searched to depth 20 (about 4,400 candidate rows);
``batch_rows`` is small and odd so selection runs in dozens of batches, some smaller than one
anchor's rows. The reference for many batches is the same file selected in one batch; the
known answers (reasons and slots, counts, quantiles, the triplet and n-tuple rows) are
computed here from the input file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer.config import MineConfig
from negminer.curation.decisions import BatchedFeedback, apply_decisions
from negminer.mining.derive import QUANTILES, SELECT_OPTIONS, text_groups, with_pair_scores
from negminer.mining.quantiles import StreamedQuantiles
from negminer.mining.search import search_candidates
from negminer.mining.strategies import select_negatives, stable_hash64
from negminer.mining.streaming import DerivedFiles, anchor_batches, derive_files
from negminer.storage.atomic import write_parquet_atomic
from negminer.storage.inputs import prepare_inputs
from negminer.storage.parquet_stream import StagedParquetWriter, staged_writers

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


STEMS = ("candidates", "triplets", "scored")
ONE_BATCH = 1 << 20  # more rows than the fixture has: the whole file is selected at once


def _derive(
    world: dict,
    out: Path,
    config: MineConfig,
    *,
    candidates: Path | None = None,
    pairs: pa.Table | None = None,
    transform=None,
    batch_rows: int = BATCH_ROWS,
) -> DerivedFiles:
    return derive_files(
        candidates or world["candidates"],
        {stem: out / f"{stem}.parquet" for stem in STEMS},
        anchors=world["anchors"],
        docs=world["docs"],
        pairs=world["pairs"] if pairs is None else pairs,
        config=config,
        transform=transform,
        batch_rows=batch_rows,
    )


def _file_bytes(derived: DerivedFiles) -> dict[str, bytes]:
    return {stem: path.read_bytes() for stem, path in derived.paths.items()}


def _assert_same(one: DerivedFiles, other: DerivedFiles) -> None:
    assert _file_bytes(one) == _file_bytes(other)
    assert (one.rows, one.counts, one.score_quantiles, one.selection) == (
        other.rows,
        other.counts,
        other.score_quantiles,
        other.selection,
    )


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"q{round(p * 100):02d}": round(float(np.quantile(values, p)), 4) for p in QUANTILES}


def _assert_known_answers(world: dict, derived: DerivedFiles, config: MineConfig, pairs: pa.Table) -> None:
    """The written tables and figures against answers computed here from the input file."""
    source = pq.read_table(world["candidates"])
    published = pq.read_table(derived.paths["candidates"])
    anchors, docs = world["anchors"], world["docs"]
    # every candidate, in the input's order, with its ids and margin
    assert published.select(["anchor_idx", "doc_idx", "rank"]).equals(source.select(["anchor_idx", "doc_idx", "rank"]))
    assert published["anchor_id"].equals(anchors["anchor_id"].take(source["anchor_idx"]))
    assert published["doc_id"].equals(docs["doc_id"].take(source["doc_idx"]))
    assert published["score_minus_positive"].equals(pc.subtract(source["score"], source["positive_score"]))
    # the reasons and slots of one in-memory selection of the whole table
    whole = select_negatives(
        source,
        anchor_hash=stable_hash64(anchors["anchor_id"].to_pylist()),
        doc_hash=stable_hash64(docs["doc_id"].to_pylist()),
        doc_text_group=text_groups(docs),
        **config.model_dump(include=SELECT_OPTIONS),
    )
    assert published["reason"].equals(whole.candidates["reason"])
    assert published["negative_slot"].equals(whole.candidates["negative_slot"])
    # counts and figures, from the written file
    reasons = Counter(published["reason"].to_pylist())
    slot = published["negative_slot"].to_numpy(zero_copy_only=False)
    chosen = ~np.isnan(slot.astype(np.float64))
    anchor = published["anchor_idx"].to_numpy()
    per_anchor = Counter(anchor[chosen].tolist())
    k = config.num_negatives
    assert derived.counts["negatives"] == chosen.sum()
    assert derived.counts["dropped_by_reason"] == dict(reasons)
    assert derived.counts["anchors_short"] == sum(per_anchor[a] < k for a in np.unique(anchor).tolist())
    score = published["score"].to_numpy()
    assert derived.score_quantiles == {
        "negative": _quantiles(score[chosen]),
        "candidate": _quantiles(score),
        "positive_retrieved": _quantiles(score[published["is_positive"].to_numpy(zero_copy_only=False)]),
    }
    positive = source["positive_score"].to_numpy()[np.unique(source["anchor_idx"].to_numpy(), return_index=True)[1]]
    for side, percentile in (("min", config.min_score_percentile), ("max", config.max_score_percentile)):
        expected = None if percentile is None else pytest.approx(float(np.percentile(positive, percentile)))
        assert derived.selection[f"{side}_score_from_percentile"] == expected
    if config.output_format in ("triplet", "n-tuple"):
        _assert_view(world, derived, config, pairs, published)


def _assert_view(world: dict, derived: DerivedFiles, config: MineConfig, pairs: pa.Table, published: pa.Table) -> None:
    """Triplet / n-tuple rows (and scores) rebuilt in Python from the pairs and the chosen negatives."""
    negatives: dict[int, dict[int, tuple[int, float]]] = {}
    for row in published.filter(pc.is_valid(published["negative_slot"])).to_pylist():
        negatives.setdefault(row["anchor_idx"], {})[row["negative_slot"]] = (row["doc_idx"], row["score"])
    anchor_text, doc_text = world["anchors"]["text"].to_pylist(), world["docs"]["text"].to_pylist()
    k = config.num_negatives
    rows, scores = [], []
    for pair in pairs.to_pylist():
        chosen = [negatives.get(pair["anchor_idx"], {})[s] for s in sorted(negatives.get(pair["anchor_idx"], {}))]
        head = {"anchor": anchor_text[pair["anchor_idx"]], "positive": doc_text[pair["doc_idx"]]}
        if config.output_format == "triplet":
            rows += [{**head, "negative": doc_text[doc]} for doc, _ in chosen]
            scores += [[pair["score"], score] for _, score in chosen]
        elif len(chosen) == k:
            rows.append({**head, **{f"negative_{i + 1}": doc_text[doc] for i, (doc, _) in enumerate(chosen)}})
            scores.append([pair["score"], *(score for _, score in chosen)])
    assert pq.read_table(derived.paths["triplets"]).to_pylist() == rows
    assert derived.rows["triplets"] == derived.counts["triplet_rows"] == len(rows)
    if config.output_scores:
        written = pq.read_table(derived.paths["scored"])["scores"].to_pylist()
        np.testing.assert_array_equal(np.array(written, np.float32), np.array(scores, np.float32))


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
        {"output_scores": True, "strategy": "naive"},
    ],
)
def test_selection_in_many_batches_writes_the_bytes_of_one_batch(world: dict, tmp_path: Path, options: dict):
    config = MineConfig(search_depth=20, **options)
    many = _derive(world, tmp_path / "many", config)
    assert many.rows["candidates"] > 40 * BATCH_ROWS  # many batches
    assert set(many.paths) == {"candidates", "triplets", *(["scored"] if config.output_scores else [])}
    _assert_same(many, _derive(world, tmp_path / "one", config, batch_rows=ONE_BATCH))
    _assert_known_answers(world, many, config, world["pairs"])


def test_the_batch_size_does_not_change_the_output(world: dict, tmp_path: Path):
    config = MineConfig(search_depth=20, output_scores=True)
    outputs = [_derive(world, tmp_path / str(rows), config, batch_rows=rows) for rows in (1, 500, ONE_BATCH)]
    _assert_same(outputs[0], outputs[1])
    _assert_same(outputs[0], outputs[2])


def test_a_file_whose_anchors_are_not_together_is_selected_in_one_batch(world: dict, tmp_path: Path, caplog):
    """Selection does not depend on row order: the shuffled file gives the same views and
    figures, and the same candidate rows in its own order."""
    table = pq.read_table(world["candidates"])
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    path = tmp_path / "shuffled.parquet"
    pq.write_table(shuffled, path)
    config = MineConfig(search_depth=20, strategy="calibrated", output_scores=True)
    mixed = _derive(world, tmp_path / "mixed", config, candidates=path)
    assert "not together" in caplog.text
    ordered = _derive(world, tmp_path / "ordered", config)
    for stem in ("triplets", "scored"):
        assert mixed.paths[stem].read_bytes() == ordered.paths[stem].read_bytes(), stem
    assert (mixed.rows, mixed.counts, mixed.score_quantiles, mixed.selection) == (
        ordered.rows,
        ordered.counts,
        ordered.score_quantiles,
        ordered.selection,
    )
    by_pair = [("anchor_idx", "ascending"), ("doc_idx", "ascending")]
    assert (
        pq.read_table(mixed.paths["candidates"])
        .sort_by(by_pair)
        .equals(pq.read_table(ordered.paths["candidates"]).sort_by(by_pair))
    )


def test_audit_decisions_applied_per_batch_equal_applied_at_once(world: dict, tmp_path: Path):
    table = pq.read_table(world["candidates"])
    rows = table.slice(0, 400).filter(pc.invert(table.slice(0, 400).column("is_positive")))
    anchors, docs = world["anchors"], world["docs"]
    pick = rows.take([0, 25, 60, 130, 300])
    anchor_ids = anchors.column("anchor_id").take(pick.column("anchor_idx")).to_pylist()
    doc_ids = docs.column("doc_id").take(pick.column("doc_idx")).to_pylist()
    decided = ["is_positive", "drop_pair", "is_negative", "is_positive", "skip"]
    decisions = pa.table({"anchor_id": anchor_ids, "doc_id": doc_ids, "decision": decided})
    whole = apply_decisions(table, decisions, anchors=anchors, docs=docs, pairs=world["pairs"], extra_positives=True)
    applied = tmp_path / "decided.parquet"
    pq.write_table(whole.candidates, applied)
    config = MineConfig(search_depth=20)
    at_once = _derive(world, tmp_path / "at-once", config, candidates=applied, pairs=whole.pairs, batch_rows=ONE_BATCH)
    feedback = BatchedFeedback(
        decisions, schema=table.schema, anchors=anchors, docs=docs, pairs=world["pairs"], extra_positives=True
    )
    assert feedback.pairs.equals(whole.pairs)
    batched = _derive(world, tmp_path / "batched", config, pairs=feedback.pairs, transform=feedback)
    _assert_same(batched, at_once)
    assert feedback.counts == whole.counts
    assert whole.counts["excluded_candidates"] == 3 and whole.counts["extra_positives"] == 2
    # excluded candidates are dropped for the decision; confirmed ones train as positives
    published = pq.read_table(batched.paths["candidates"])
    keys = zip(published["anchor_id"].to_pylist(), published["doc_id"].to_pylist(), strict=True)
    reason = dict(zip(keys, published["reason"].to_pylist(), strict=True))
    excluding = {"is_positive", "drop_pair"}
    decided_keys = zip(anchor_ids, doc_ids, strict=True)
    excluded = [reason[key] for key, d in zip(decided_keys, decided, strict=True) if d in excluding]
    assert excluded == ["audit_decision"] * 3
    added = whole.pairs.slice(world["pairs"].num_rows).select(["anchor_idx", "doc_idx"]).to_pylist()
    picked = zip(pick["anchor_idx"].to_pylist(), pick["doc_idx"].to_pylist(), decided, strict=True)
    assert added == [{"anchor_idx": a, "doc_idx": d} for a, d, decision in picked if decision == "is_positive"]


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


def test_staged_writers_publish_every_file_or_none(tmp_path: Path):
    table = pa.table({"x": np.arange(100, dtype=np.int64)})
    paths = {"a": tmp_path / "a.parquet", "b": tmp_path / "b.parquet"}
    with pytest.raises(RuntimeError), staged_writers(paths) as writers:
        writers["a"].write(table)
        writers["b"].write(table)
        raise RuntimeError("killed between the two")
    assert list(tmp_path.iterdir()) == [], "neither file nor any staged temporary is left"
    with staged_writers(paths) as writers:
        writers["a"].write(table)
        writers["b"].write(table.slice(0, 10))
        assert not paths["a"].exists(), "nothing is published before the block ends"
    assert pq.read_table(paths["a"]).equals(table)
    assert pq.read_table(paths["b"]).num_rows == 10 == writers["b"].rows


def test_an_empty_candidate_file_gives_empty_tables(world: dict, tmp_path: Path):
    empty = tmp_path / "empty.parquet"
    write_parquet_atomic(empty, pq.read_schema(world["candidates"]).empty_table())
    derived = _derive(world, tmp_path, MineConfig(search_depth=20, output_scores=True), candidates=empty)
    assert derived.rows == {"candidates": 0, "triplets": 0, "scored": 0}
    assert pq.read_table(derived.paths["triplets"]).column_names == ["anchor", "positive", "negative"]
    no_tier = {"easy": 0, "medium": 0, "hard": 0}
    assert derived.counts == {
        "triplet_rows": 0,
        "negatives": 0,
        "negatives_by_difficulty": no_tier,
        "anchors_short": 0,
        "dropped_by_reason": {},
    }
    assert derived.score_quantiles == {"negative": {}, "candidate": {}, "positive_retrieved": {}}
    assert derived.selection == {
        "min_score_from_percentile": None,
        "max_score_from_percentile": None,
        "difficulty_thresholds": {"medium": None, "hard": None},
    }
