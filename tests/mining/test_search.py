"""Candidate search on hand-made 2-d vectors whose ranking can be worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from negminer.mining.search import (
    CANDIDATE_SCHEMA,
    build_index,
    positive_scores,
    search_candidates,
)
from negminer.textkeys import text_key

# Unit vectors on the circle: the cosine of two of them is the cosine of their angle gap.
DOC_ANGLES = [0, 20, 45, 70, 100, 150]
DOC_TEXTS = ["Alpha", "Bravo", "  BRAVO \n", "Charlie", "Delta", "anchor one"]
ANCHOR_ANGLES = [0, 90]
ANCHOR_TEXTS = ["Anchor  One", "anchor two"]
# anchor 0 -> docs 1 and 3 (cos 20° and cos 70°); anchor 1 -> doc 4 (cos 10°)
PAIR_ANCHOR = np.array([0, 0, 1], np.int32)
PAIR_DOC = np.array([1, 3, 4], np.int32)


def unit(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def cos(deg: float) -> float:
    return math.cos(math.radians(deg))


def run_search(
    tmp_path: Path, *, search_depth: int, batch_size: int = 4096, **options
) -> tuple[object, dict[str, list]]:
    result = search_candidates(
        unit(ANCHOR_ANGLES),
        unit(DOC_ANGLES),
        tmp_path / "candidates.parquet",
        pair_anchor=options.pop("pair_anchor", PAIR_ANCHOR),
        pair_doc=options.pop("pair_doc", PAIR_DOC),
        doc_text_keys=[text_key(t) for t in DOC_TEXTS],
        anchor_text_keys=[text_key(t) for t in options.pop("anchor_texts", ANCHOR_TEXTS)],
        search_depth=search_depth,
        batch_size=batch_size,
        **options,
    )
    return result, pq.read_table(result.path).to_pydict()


def rows_of(table: dict[str, list], anchor: int) -> dict[str, list]:
    keep = [i for i, a in enumerate(table["anchor_idx"]) if a == anchor]
    return {name: [values[i] for i in keep] for name, values in table.items()}


def test_ranking_matches_the_angles(tmp_path):
    _, table = run_search(tmp_path, search_depth=10)
    a0, a1 = rows_of(table, 0), rows_of(table, 1)
    assert a0["doc_idx"] == [0, 1, 2, 3, 4, 5]
    assert a1["doc_idx"] == [4, 3, 2, 5, 1, 0]
    np.testing.assert_allclose(a0["score"], [cos(a) for a in (0, 20, 45, 70, 100, 150)], atol=1e-6)
    np.testing.assert_allclose(a1["score"], [cos(a) for a in (10, 20, 45, 60, 70, 90)], atol=1e-6)


def test_ranks_are_zero_based_and_scores_descend_per_anchor(tmp_path):
    _, table = run_search(tmp_path, search_depth=3)
    for anchor in (0, 1):
        rows = rows_of(table, anchor)
        assert rows["rank"] == list(range(len(rows["rank"])))
        assert all(a >= b for a, b in zip(rows["score"], rows["score"][1:], strict=False))


def test_known_positives_are_flagged_by_id(tmp_path):
    _, table = run_search(tmp_path, search_depth=10)
    flagged = {(a, d) for a, d, p in zip(table["anchor_idx"], table["doc_idx"], table["is_positive"], strict=True) if p}
    assert flagged == {(0, 1), (0, 3), (1, 4)}


def test_same_normalised_text_as_a_positive_is_flagged(tmp_path):
    _, table = run_search(tmp_path, search_depth=10)
    flagged = {
        (a, d)
        for a, d, s in zip(table["anchor_idx"], table["doc_idx"], table["same_text_as_positive"], strict=True)
        if s
    }
    # doc 2 "  BRAVO \n" is doc 1 "Bravo" up to case and whitespace; the positives themselves too
    assert (0, 2) in flagged
    assert (1, 2) not in flagged  # doc 1 is not a positive of anchor 1
    assert flagged == {(0, 1), (0, 2), (0, 3), (1, 4)}
    # a text duplicate is not a positive by id
    is_pos = {(a, d): p for a, d, p in zip(table["anchor_idx"], table["doc_idx"], table["is_positive"], strict=True)}
    assert is_pos[(0, 2)] is False


def test_doc_with_the_anchor_text_is_flagged(tmp_path):
    _, table = run_search(tmp_path, search_depth=10)
    flagged = {
        (a, d) for a, d, s in zip(table["anchor_idx"], table["doc_idx"], table["same_text_as_anchor"], strict=True) if s
    }
    # doc 5 "anchor one" is anchor 0 "Anchor  One" normalised; anchor 1's text is in no doc
    assert flagged == {(0, 5)}


def test_positive_score_is_the_lowest_cosine_over_the_positives(tmp_path):
    _, table = run_search(tmp_path, search_depth=10)
    np.testing.assert_allclose(rows_of(table, 0)["positive_score"], [cos(70)] * 6, atol=1e-6)
    np.testing.assert_allclose(rows_of(table, 1)["positive_score"], [cos(10)] * 6, atol=1e-6)


def test_positive_score_ignores_the_order_of_the_pairs(tmp_path):
    _, table = run_search(
        tmp_path,
        search_depth=10,
        pair_anchor=np.array([1, 0, 0], np.int64),
        pair_doc=np.array([4, 3, 1], np.int64),
    )
    np.testing.assert_allclose(rows_of(table, 0)["positive_score"], [cos(70)] * 6, atol=1e-6)


def test_depth_is_search_depth_plus_most_positives(tmp_path):
    result, table = run_search(tmp_path, search_depth=2)
    # anchor 0 has 2 positives, so every anchor gets 2 + 2 candidates
    assert result.depth == 4
    assert result.rows == 8
    assert len(rows_of(table, 0)["doc_idx"]) == 4
    assert len(rows_of(table, 1)["doc_idx"]) == 4
    assert rows_of(table, 1)["doc_idx"] == [4, 3, 2, 5]


def test_depth_is_capped_at_the_pool_size(tmp_path):
    result, table = run_search(tmp_path, search_depth=100)
    assert result.depth == len(DOC_ANGLES)
    assert result.rows == 2 * len(DOC_ANGLES)
    assert len(table["doc_idx"]) == 2 * len(DOC_ANGLES)


def test_depth_without_positives_is_search_depth(tmp_path):
    result, _ = run_search(
        tmp_path,
        search_depth=3,
        pair_anchor=np.array([], np.int32),
        pair_doc=np.array([], np.int32),
    )
    assert result.depth == 3
    assert result.rows == 6


def test_anchors_with_the_same_text_share_their_positives(tmp_path):
    # both anchors read "anchor two" once normalised: each one's positive is the other's too
    result, table = run_search(
        tmp_path,
        search_depth=1,
        anchor_texts=["Anchor Two", "  anchor   two"],
        pair_anchor=np.array([0, 1], np.int32),
        pair_doc=np.array([1, 4], np.int32),
    )
    assert result.depth == 3  # 1 + the 2 positives of the shared text
    flagged = {(a, d) for a, d, p in zip(table["anchor_idx"], table["doc_idx"], table["is_positive"], strict=True) if p}
    # anchor 0 (0°) retrieves docs 0, 1, 2; anchor 1 (90°) retrieves docs 4, 3, 2
    assert flagged == {(0, 1), (1, 4)}
    _, deep = run_search(
        tmp_path,
        search_depth=10,
        anchor_texts=["Anchor Two", "  anchor   two"],
        pair_anchor=np.array([0, 1], np.int32),
        pair_doc=np.array([1, 4], np.int32),
    )
    flagged = {(a, d) for a, d, p in zip(deep["anchor_idx"], deep["doc_idx"], deep["is_positive"], strict=True) if p}
    assert flagged == {(0, 1), (0, 4), (1, 1), (1, 4)}
    same_text = {
        (a, d) for a, d, s in zip(deep["anchor_idx"], deep["doc_idx"], deep["same_text_as_positive"], strict=True) if s
    }
    # doc 2 is doc 1's text, so it is excluded for both anchors
    assert {(0, 2), (1, 2)} <= same_text


def test_table_has_the_candidate_schema_and_no_partial_file(tmp_path):
    result, _ = run_search(tmp_path, search_depth=2)
    assert pq.read_schema(result.path).remove_metadata().equals(CANDIDATE_SCHEMA)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidates.parquet"]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_batch_size_does_not_change_the_table(tmp_path, batch_size):
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small, _ = run_search(tmp_path / "small", search_depth=3, batch_size=batch_size)
    large, _ = run_search(tmp_path / "large", search_depth=3, batch_size=4096)
    assert pq.read_table(small.path).equals(pq.read_table(large.path))


def test_batching_on_random_vectors_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(37, 8)).astype(np.float32)
    docs = rng.normal(size=(120, 8)).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    pair_anchor = np.repeat(np.arange(37, dtype=np.int32), rng.integers(1, 4, size=37))
    pair_doc = rng.integers(0, 120, size=len(pair_anchor)).astype(np.int32)
    doc_keys = [text_key(f"doc {i}") for i in range(120)]
    anchor_keys = [text_key(f"anchor {i}") for i in range(37)]

    def search(batch_size: int, name: str):
        return search_candidates(
            anchors,
            docs,
            tmp_path / name,
            pair_anchor=pair_anchor,
            pair_doc=pair_doc,
            doc_text_keys=doc_keys,
            anchor_text_keys=anchor_keys,
            search_depth=10,
            batch_size=batch_size,
        )

    one, big = search(1, "one.parquet"), search(1000, "big.parquet")
    t_one, t_big = pq.read_table(one.path), pq.read_table(big.path)
    assert t_one.equals(t_big)

    depth = 10 + int(np.bincount(pair_anchor).max())
    assert one.depth == depth and one.rows == 37 * depth
    table = t_one.to_pydict()
    full = anchors @ docs.T
    positives = set(zip(pair_anchor.tolist(), pair_doc.tolist(), strict=True))
    for a in range(37):
        rows = rows_of(table, a)
        expected = np.argsort(-full[a], kind="stable")[:depth]
        assert set(rows["doc_idx"]) == set(expected.tolist())
        np.testing.assert_allclose(rows["score"], full[a, rows["doc_idx"]], atol=1e-5)
        lowest = min(full[a, d] for (pa_, d) in positives if pa_ == a)
        np.testing.assert_allclose(rows["positive_score"], [lowest] * depth, atol=1e-5)
        assert rows["is_positive"] == [(a, d) in positives for d in rows["doc_idx"]]


def test_positive_scores_are_pair_cosines():
    anchors, docs = unit(ANCHOR_ANGLES), unit(DOC_ANGLES)
    got = positive_scores(anchors, docs, PAIR_ANCHOR, PAIR_DOC)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, [cos(20), cos(70), cos(10)], atol=1e-6)


def test_build_index_is_exact_inner_product():
    docs = unit(DOC_ANGLES)
    index = build_index(docs.astype(np.float64))
    assert index.ntotal == len(DOC_ANGLES)
    scores, ids = index.search(unit([90]), 3)
    assert ids[0].tolist() == [4, 3, 2]
    np.testing.assert_allclose(scores[0], [cos(10), cos(20), cos(45)], atol=1e-6)


def test_anchor_shards_merged_in_order_equal_one_search(tmp_path):
    from negminer.mining.search import merge_candidate_files

    rng = np.random.default_rng(1)
    anchors = rng.normal(size=(23, 8)).astype(np.float32)
    docs = rng.normal(size=(60, 8)).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    pair_anchor = np.repeat(np.arange(23, dtype=np.int32), rng.integers(1, 4, size=23))
    pair_doc = rng.integers(0, 60, size=len(pair_anchor)).astype(np.int32)
    keys = {
        "doc_text_keys": [text_key(f"doc {i}") for i in range(60)],
        "anchor_text_keys": [text_key(f"anchor {i % 20}") for i in range(23)],
    }  # 3 shared texts

    def search(name: str, anchor_range=None):
        return search_candidates(
            anchors,
            docs,
            tmp_path / name,
            pair_anchor=pair_anchor,
            pair_doc=pair_doc,
            search_depth=7,
            batch_size=4,
            anchor_range=anchor_range,
            **keys,
        )

    whole = search("whole.parquet")
    # the last shard runs first: completion order must not matter, only merge order
    parts = [
        search(f"part{i}.parquet", (first, min(first + 6, 23)))
        for i, first in reversed(list(enumerate(range(0, 23, 6))))
    ]
    rows = merge_candidate_files([p.path for p in reversed(parts)], tmp_path / "merged.parquet")
    assert rows == whole.rows and {p.depth for p in parts} == {whole.depth}
    assert pq.read_table(tmp_path / "merged.parquet").equals(pq.read_table(whole.path))


def test_anchor_range_outside_the_anchors_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="anchor_range"):
        run_search(tmp_path, search_depth=10, anchor_range=(1, 5))
