"""Hybrid candidates (mine.sources: [dense, bm25]): the search stage fuses the dense index's and
bm25s's lists per anchor, records which view proposed each row, and keeps the dense cosine."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.errors import ConfigError
from negminer.mining.bm25 import Bm25Shard, search_bm25_shards, text_batches
from negminer.mining.strategies import stable_hash64

DEPTH = 10
HYBRID = {"search_depth": DEPTH, "sources": ["dense", "bm25"]}


def _config(**mine) -> PipelineConfig:
    return PipelineConfig.from_dict({"mine": mine})


@pytest.fixture(scope="module")
def searched(random_vector_run, tmp_path_factory):
    """(work folder, dense-only table, hybrid table, hybrid reference) over 40 sample pairs, random vectors."""
    config = _config(**HYBRID)
    work, _, _ = random_vector_run(tmp_path_factory.mktemp("hybrid"), config)
    dense = stages.search_stage(work, config=_config(search_depth=DEPTH).mine, index_config=config.index)
    hybrid = stages.search_stage(work, config=config.mine, index_config=config.index)
    return work, pq.read_table(dense.candidates), pq.read_table(hybrid.candidates), hybrid


def _by_anchor(table, column: str) -> dict[int, list]:
    out: dict[int, list] = {}
    rows = table.sort_by([("anchor_idx", "ascending"), ("rank", "ascending")])
    for anchor, value in zip(rows.column("anchor_idx").to_pylist(), rows.column(column).to_pylist(), strict=True):
        out.setdefault(anchor, []).append(value)
    return out


def test_fused_candidates_follow_reciprocal_rank_fusion(searched) -> None:
    work, dense, hybrid, ref = searched
    depth = ref.depth
    index = stages.bm25_stage(work, config=_config(**HYBRID).mine)  # finished: its marker
    shards = [Bm25Shard(s.path, s.first, s.stop) for s in index.shards]
    n_anchors = pq.ParquetFile(work / "anchors.parquet").metadata.num_rows
    keys = stable_hash64(pq.read_table(work / "docs.parquet").column("doc_id").to_pylist())
    _, bm25_ids = search_bm25_shards(shards, text_batches(work / "anchors.parquet"), n_anchors, depth, doc_keys=keys)
    dense_ids = _by_anchor(dense, "doc_idx")
    fused_ids, fused_sources = _by_anchor(hybrid, "doc_idx"), _by_anchor(hybrid, "source")
    for anchor in range(n_anchors):
        lexical = [int(d) for d in bm25_ids[anchor] if d >= 0]
        value: dict[int, float] = {}
        for ranked in (dense_ids[anchor], lexical):
            for rank, doc in enumerate(ranked, start=1):
                value[doc] = value.get(doc, 0.0) + 1 / (60 + rank)
        expected = sorted(value, key=lambda doc: (-value[doc], keys[doc]))[:depth]
        assert fused_ids[anchor] == expected, anchor
        in_dense, in_bm25 = set(dense_ids[anchor]), set(lexical)
        names = [
            "+".join(n for n, held in (("dense", d in in_dense), ("bm25", d in in_bm25)) if held) for d in expected
        ]
        assert fused_sources[anchor] == names, anchor
    sources = set(hybrid.column("source").to_pylist())
    assert sources == {"dense", "bm25", "dense+bm25"}, sources
    assert ref.sources["rows_by_source"] == {s: hybrid.column("source").to_pylist().count(s) for s in sources}


def test_every_candidate_scores_its_dense_cosine(searched) -> None:
    work, dense, hybrid, _ = searched
    anchors, docs = np.load(work / "anchors.npy"), np.load(work / "docs.npy")
    a, d = hybrid.column("anchor_idx").to_numpy(), hybrid.column("doc_idx").to_numpy()
    cosine = np.einsum("ij,ij->i", anchors[a], docs[d])
    assert np.allclose(hybrid.column("score").to_numpy(), cosine, atol=1e-5)
    bm25_only = np.array(hybrid.column("source").to_pylist()) == "bm25"
    assert bm25_only.sum() > 10
    columns = ("anchor_idx", "doc_idx", "score")
    dense_score = {(x, y): v for x, y, v in zip(*(dense.column(c).to_pylist() for c in columns), strict=True)}
    rows = zip(a.tolist(), d.tolist(), hybrid.column("score").to_pylist(), bm25_only, strict=True)
    kept = [(x, y, v) for x, y, v, only_bm25 in rows if not only_bm25]
    assert all(dense_score[(x, y)] == v for x, y, v in kept), "dense-proposed rows keep the index's score"


def test_positives_are_flagged_as_in_a_dense_search(searched) -> None:
    work, dense, hybrid, _ = searched
    pairs = pq.read_table(work / "pairs.parquet")
    known = set(zip(pairs.column("anchor_idx").to_pylist(), pairs.column("doc_idx").to_pylist(), strict=True))
    rows = zip(*(hybrid.column(c).to_pylist() for c in ("anchor_idx", "doc_idx", "is_positive")), strict=True)
    flags = {(a, d): p for a, d, p in rows}
    assert all(p == ((a, d) in known) for (a, d), p in flags.items())
    assert any(flags.values()), "BM25 finds given positives too (text overlap)"
    assert hybrid.column("positive_score").to_pylist()[:DEPTH] == dense.column("positive_score").to_pylist()[:DEPTH]


def test_dense_only_search_is_unchanged(searched) -> None:
    _, dense, hybrid, ref = searched
    assert "source" not in dense.column_names
    assert hybrid.column_names == [*dense.column_names, "source"]
    assert ref.sources["sources"] == ["dense", "bm25"] and ref.sources["fusion"] == "rrf"


def test_sharded_bm25_and_search_equal_one_shard(random_vector_run, searched, tmp_path) -> None:
    _, _, single, single_ref = searched
    config = _config(**HYBRID, bm25_shard_docs=37, search_shard_size=7, search_batch_size=3)
    work, read, _ = random_vector_run(tmp_path, config)
    index = stages.index_stage(work, config=config.index, retrieval=config.mine)
    plan = stages.bm25_plan_stage(work, config=config.mine)
    assert len(plan.shards) > 2
    for shard in reversed(plan.shards):  # mapped shards finish in any order
        stages.bm25_shard_stage(work, shard, plan=plan)
    bm25 = stages.bm25_stage(work, config=config.mine)
    shards = stages.search_shards(read.anchors, config=config.mine)
    options = {"config": config.mine, "index_config": config.index, "index": index, "bm25": bm25}
    for shard in shards[1:]:
        stages.search_shard_stage(work, shard, **options)
    merged = stages.search_merge_stage(work, shards, **options)

    assert pq.read_table(merged.candidates).equals(single)
    assert merged.sources["rows_by_source"] == single_ref.sources["rows_by_source"]
    assert [s["stop"] for s in merged.sources["bm25"]["shards"]][:2] == [37, 74]


def test_bm25_stage_resumes_after_a_kill(random_vector_run, tmp_path) -> None:
    config = _config(**HYBRID, bm25_shard_docs=50)
    work, _, _ = random_vector_run(tmp_path, config)
    first = stages.bm25_stage(work, config=config.mine)
    files = {p: p.read_bytes() for p in work.glob("bm25-*.d*/*")}
    # killed after the second shard's folder was renamed into place, before its marker and the index's
    (work / f"bm25-{first.key}.json").unlink()
    (work / f"{first.shards[1].path.rsplit('/', 1)[1]}.json").unlink()
    shutil.rmtree(first.shards[2].path)  # ... and before the third shard was saved
    (work / f"{first.shards[2].path.rsplit('/', 1)[1]}.json").unlink()
    (work / f".{first.shards[2].path.rsplit('/', 1)[1]}.tmp").mkdir()  # a killed save's temp folder
    again = stages.bm25_stage(work, config=config.mine)

    assert [(s.first, s.stop, s.postings) for s in again.shards] == [
        (s.first, s.stop, s.postings) for s in first.shards
    ]
    assert {p: p.read_bytes() for p in work.glob("bm25-*.d*/*")} == files


def test_sources_are_validated_naming_the_key() -> None:
    assert _config().mine.sources == ("dense",) and not _config().mine.hybrid
    assert _config(sources=["bm25", "dense"]).mine.hybrid
    for bad, words in ((["dense", "splade"], r"mine\.sources"), ([], r"mine\.sources"), (["bm25", "bm25"], "twice")):
        with pytest.raises(ConfigError, match=words):
            _config(sources=bad)
    with pytest.raises(ConfigError, match=r"mine\.fusion"):
        _config(sources=["dense", "bm25"], fusion="max")
    with pytest.raises(ConfigError, match=r"mine\.rrf_k"):
        _config(rrf_k=0)


def test_bm25_alone_proposes_every_candidate(searched) -> None:
    work, _, hybrid, _ = searched
    config = _config(search_depth=DEPTH, sources=["bm25"])
    ref = stages.search_stage(work, config=config.mine, index_config=config.index)
    alone = pq.read_table(ref.candidates)
    assert set(alone.column("source").to_pylist()) == {"bm25"}
    lexical = {
        pair
        for pair, source in zip(
            zip(hybrid.column("anchor_idx").to_pylist(), hybrid.column("doc_idx").to_pylist(), strict=True),
            hybrid.column("source").to_pylist(),
            strict=True,
        )
        if "bm25" in source
    }
    assert set(zip(alone.column("anchor_idx").to_pylist(), alone.column("doc_idx").to_pylist(), strict=True)) >= lexical
    anchors, docs = np.load(work / "anchors.npy"), np.load(work / "docs.npy")
    a, d = alone.column("anchor_idx").to_numpy(), alone.column("doc_idx").to_numpy()
    assert np.allclose(alone.column("score").to_numpy(), np.einsum("ij,ij->i", anchors[a], docs[d]), atol=1e-5)


def test_the_order_of_the_sources_changes_nothing(searched) -> None:
    work, _, hybrid, _ = searched
    config = _config(search_depth=DEPTH, sources=["bm25", "dense"])
    ref = stages.search_stage(work, config=config.mine, index_config=config.index)
    assert pq.read_table(ref.candidates).equals(hybrid)
