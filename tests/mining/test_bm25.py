"""BM25 candidates: bm25s shards scored with corpus-global statistics equal one index over every doc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from negminer.curation.lexical import lexical_features, term_counts
from negminer.mining import bm25
from negminer.mining.strategies import stable_hash64


@pytest.fixture(scope="module")
def texts(tiny_inputs: dict[str, Path]) -> tuple[list[str], list[str]]:
    """(the 42 anchors, the 100 documents) of the tiny inputs."""
    anchors = pq.read_table(tiny_inputs["pairs42"]).column("anchor").to_pylist()
    return anchors, pq.read_table(tiny_inputs["corpus"]).column("text").to_pylist()


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_shards_with_global_statistics_equal_one_index(texts, tmp_path) -> None:
    anchors, docs = texts
    stats = bm25.pool_stats(_batches(docs, 7))
    whole = bm25.build_bm25_shard(_batches(docs, 64), 0, stats, tmp_path / "whole")
    shards = [
        bm25.build_bm25_shard([docs[first:stop]], first, stats, tmp_path / f"s{first}")
        for first, stop in ((0, 30), (30, 60), (60, 100))
    ]
    keys = stable_hash64([str(i) for i in range(len(docs))])
    single = bm25.search_bm25_shards([whole], _batches(anchors, 10), len(anchors), 20, doc_keys=keys)
    sharded = bm25.search_bm25_shards(shards, _batches(anchors, 10), len(anchors), 20, doc_keys=keys)

    assert np.array_equal(single[1], sharded[1]) and np.array_equal(single[0], sharded[0])
    found = single[1] >= 0
    assert found.sum(axis=1).min() >= 1 and (found.sum(axis=1) == 20).mean() > 0.8
    assert (found.sum(axis=1) < 20).any(), "an anchor sharing terms with few docs gets empty slots"
    assert (single[0][found] > 0).all() and (single[0][~found] == 0).all()
    assert {int(d) for d in single[1][found]} - set(range(30)), "hits come from every shard's docs"


def test_scores_are_the_curation_feature_and_bm25s_own(texts, tmp_path) -> None:
    import bm25s

    anchors, docs = texts
    stats = bm25.pool_stats([docs])
    shard = bm25.build_bm25_shard([docs], 0, stats, tmp_path / "index")
    scores, ids = bm25.search_bm25_shards([shard], [anchors[:3]], 3, 10, doc_keys=np.arange(len(docs)))

    feature = lexical_features(
        np.repeat(np.arange(3), 10), ids[:3].reshape(-1), anchor_texts=anchors, doc_texts=docs, stats=stats
    )["bm25"].reshape(3, 10)
    assert np.allclose(scores, feature, rtol=1e-5)
    # bm25s's own index over the same tokens (its atire tf, lucene idf) ranks and scores alike
    counts = term_counts(docs)
    tokens = [[str(t) for t, n in zip(counts[i].indices, counts[i].data, strict=True) for _ in range(int(n))]
              for i in range(len(docs))]  # fmt: skip
    reference = bm25s.BM25(k1=1.2, b=0.75, method="atire", idf_method="lucene")
    reference.index(tokens, show_progress=False)
    for row, terms in enumerate(bm25.query_terms(anchors[:3])):
        theirs = reference.get_scores([str(t) for t in terms])
        assert np.allclose(theirs[ids[row]], scores[row], rtol=1e-5)
        assert np.allclose(np.sort(theirs)[::-1][:10], scores[row], rtol=1e-5)


def test_top_positive_breaks_ties_on_the_doc_key_and_skips_zeros() -> None:
    scores = np.array([0.0, 2.0, 1.0, 2.0, 0.0, 1.0, 3.0], np.float32)
    by_index, reversed_keys = np.arange(7, dtype=np.uint64), np.arange(7, dtype=np.uint64)[::-1]
    assert bm25.top_positive(scores, 4, by_index)[1].tolist() == [6, 1, 3, 2]
    assert bm25.top_positive(scores, 4, reversed_keys)[1].tolist() == [6, 3, 1, 5]
    assert bm25.top_positive(scores, 10, by_index)[1].tolist() == [6, 1, 3, 2, 5]
    assert bm25.top_positive(np.zeros(5, np.float32), 3, by_index)[1].tolist() == []


def test_a_shard_folder_appears_whole_and_a_rebuild_keeps_it(texts, tmp_path) -> None:
    _, docs = texts
    stats = bm25.pool_stats([docs])
    path = tmp_path / "bm25.d0-100"
    bm25.build_bm25_shard([docs], 0, stats, path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    bm25.build_bm25_shard([docs], 0, stats, path)  # a rerun after a kill before its marker
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25.d0-100"], "no temp folder left"


def test_stats_round_trip(texts, tmp_path) -> None:
    _, docs = texts
    stats = bm25.pool_stats(_batches(docs, 9))
    loaded = bm25.load_stats(bm25.save_stats(stats, tmp_path / "stats.npz"))
    assert np.array_equal(loaded.idf, stats.idf) and np.array_equal(loaded.doc_length, stats.doc_length)
    assert loaded.mean_length == stats.mean_length
