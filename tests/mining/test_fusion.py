"""Fusion of dense and BM25 lists equals a direct implementation of reciprocal-rank and score fusion."""

from __future__ import annotations

import numpy as np
import pytest

from negminer.mining.fusion import dense_scores, fuse_lists, source_names


def _random_lists(rng: np.random.Generator, n: int, k: int, n_docs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    lists = []
    for _ in range(2):
        ids = np.stack([rng.choice(n_docs, size=k, replace=False) for _ in range(n)])
        scores = -np.sort(-rng.random((n, k)), axis=1).astype(np.float32)
        short = rng.random(n) < 0.3  # some anchors get fewer candidates from a list
        ids[short, k // 2 :] = -1
        scores[short, k // 2 :] = 0
        lists.append((scores, ids))
    return lists


def _part(fusion: str, rank: int, score: float, low: float, high: float, rrf_k: int) -> float:
    if fusion == "rrf":
        return 1.0 / (rrf_k + rank)
    return (score - low) / (high - low) if high > low else 1.0


def _direct(lists, row: int, *, depth: int, fusion: str, rrf_k: int, keys) -> tuple[list[int], list[int]]:
    """Fused ids and source masks of one anchor, one document at a time."""
    value: dict[int, float] = {}
    mask: dict[int, int] = {}
    for bit, (scores, ids) in enumerate(lists):
        valid = [(float(s), int(d)) for s, d in zip(scores[row], ids[row], strict=True) if d >= 0]
        low, high = min(s for s, _ in valid), max(s for s, _ in valid)
        for rank, (score, doc) in enumerate(valid, start=1):
            value[doc] = value.get(doc, 0.0) + _part(fusion, rank, score, low, high, rrf_k)
            mask[doc] = mask.get(doc, 0) | 1 << bit
    order = sorted(value, key=lambda doc: (-value[doc], keys[doc]))[:depth]
    return order, [mask[doc] for doc in order]


@pytest.mark.parametrize("fusion", ["rrf", "score"])
def test_fusion_equals_a_direct_implementation(fusion: str) -> None:
    rng = np.random.default_rng(5)
    lists = _random_lists(rng, n=40, k=12, n_docs=30)
    keys = rng.permutation(30).astype(np.uint64)  # ties break on the doc key, not the doc's row
    fused = fuse_lists(lists, depth=12, fusion=fusion, rrf_k=60, doc_keys=keys)
    for row in range(40):
        ids, masks = _direct(lists, row, depth=12, fusion=fusion, rrf_k=60, keys=keys)
        held = fused.ids[row] >= 0
        assert fused.ids[row][held].tolist() == ids, row
        assert fused.sources[row][held].tolist() == masks, row
        assert not held[len(ids) :].any()
    assert {1, 2, 3} <= set(fused.sources[fused.ids >= 0].tolist()), "dense-only, bm25-only and both occur"


def test_a_document_both_lists_rank_first_comes_first() -> None:
    dense = (np.array([[0.9, 0.8, 0.7]], np.float32), np.array([[4, 2, 9]]))
    lexical = (np.array([[5.0, 3.0, 1.0]], np.float32), np.array([[4, 7, 2]]))
    fused = fuse_lists([dense, lexical], depth=4, fusion="rrf", rrf_k=60, doc_keys=np.arange(10, dtype=np.uint64))
    assert fused.ids.tolist() == [[4, 2, 7, 9]]
    assert source_names(fused.sources.reshape(-1), ("dense", "bm25")) == ["dense+bm25", "dense+bm25", "bm25", "dense"]


def test_dense_scores_keep_the_index_scores_and_compute_the_rest() -> None:
    rng = np.random.default_rng(1)
    anchors = rng.normal(size=(6, 8)).astype(np.float32)
    docs = rng.normal(size=(20, 8)).astype(np.float32)
    fused = np.array([[3, 11, -1], [5, 0, 19]])
    known = (np.array([[0.25, 0.5], [0.75, 0.0]], np.float32), np.array([[3, 7], [19, -1]]))
    scores = dense_scores(fused, 4, anchors, docs, known)
    assert scores[0, 0] == 0.25 and scores[1, 2] == 0.75, "the index's score is kept"
    assert scores[0, 2] == 0
    for row, col in ((0, 1), (1, 0), (1, 1)):
        assert scores[row, col] == pytest.approx(float(anchors[4 + row] @ docs[fused[row, col]]), abs=1e-5)
