"""Lexical (BM25) candidates: a bm25s index per range of documents, scored with corpus-global statistics.

Tokens and weights are the curation feature's (:mod:`negminer.curation.lexical`): lower-cased
word tokens without English stop words, hashed into 2**20 columns; weight of a term in a
document idf · tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen)) (bm25s's ``atire`` tf with its
``lucene`` idf), idf and average length over the **whole** pool. So a shard's scores equal the
scores one index over every document gives, and a candidate's BM25 score equals its ``bm25``
feature. A query scores each of its distinct terms once.

Each shard is a :class:`bm25s.BM25` (its eager sparse score matrix, saved and memory-mapped by
bm25s); a search loads one shard at a time and keeps every anchor's top-k across shards.
Ties break on a hash of the doc id (``doc_keys``), so the candidates do not depend on the
order of the corpus rows; documents that share no term with the anchor (score 0) are never
candidates.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from negminer.curation.lexical import (
    BM25_B,
    BM25_K1,
    N_FEATURES,
    STATS_BATCH,
    LexicalStats,
    bm25_weights,
    streamed_lexical_stats,
    term_counts,
)
from negminer.storage.atomic import atomic_write
from negminer.storage.parquet_stream import read_row_range

logger = logging.getLogger(__name__)

# What the scores depend on besides the texts: part of the index's key.
SCORING = {"tokens": "hashing-2**20-english-stop", "k1": BM25_K1, "b": BM25_B, "tf": "atire", "idf": "lucene"}


class Bm25Shard(NamedTuple):
    """One saved bm25s index over the consecutive docs ``[first, stop)`` of the pool."""

    path: str
    first: int
    stop: int


def text_batches(path: str | Path, *, first: int = 0, stop: int | None = None) -> Iterator[list[str]]:
    """The ``text`` column of rows ``[first, stop)`` of a Parquet file, :data:`STATS_BATCH` rows at a time."""
    if stop is None:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=STATS_BATCH, columns=["text"]):
            yield batch.column(0).to_pylist()
        return
    for start in range(first, stop, STATS_BATCH):
        yield read_row_range(path, start, min(start + STATS_BATCH, stop), columns=["text"]).column(0).to_pylist()


def doc_keys(path: str | Path) -> np.ndarray:
    """A 64-bit hash of each ``doc_id`` of a Parquet file, read in batches: the tie-breaker of the
    BM25 and fused lists (the same whatever the order of the corpus rows)."""
    return id_hashes(path, "doc_id")


def id_hashes(path: str | Path, column: str) -> np.ndarray:
    """:func:`~negminer.mining.strategies.stable_hash64` of every id of a Parquet file's `column`,
    hashed a record batch at a time."""
    from negminer.mining.strategies import stable_hash64

    batches = pq.ParquetFile(path).iter_batches(batch_size=STATS_BATCH, columns=[column])
    keys = [stable_hash64(batch.column(0).to_pylist()) for batch in batches]
    return np.concatenate(keys) if keys else np.zeros(0, np.uint64)


def pool_stats(doc_batches: Iterable[list[str]]) -> LexicalStats:
    """Corpus-global document frequencies and lengths, streamed (memory: one batch plus a length per doc)."""
    return streamed_lexical_stats(doc_batches)


def save_stats(stats: LexicalStats, path: str | Path) -> Path:
    """Write `stats` to `path` (``.npz``) atomically."""
    return atomic_write(
        path,
        lambda handle: np.savez(
            handle, idf=stats.idf, doc_length=stats.doc_length, mean_length=np.float64(stats.mean_length)
        ),
    )


def load_stats(path: str | Path) -> LexicalStats:
    with np.load(path) as saved:
        return LexicalStats(saved["idf"], saved["doc_length"], float(saved["mean_length"]))


def build_bm25_shard(doc_batches: Iterable[list[str]], first: int, stats: LexicalStats, path: str | Path) -> Bm25Shard:
    """Index docs ``first, first + 1, ...`` (their texts in consecutive batches) and save the bm25s index.

    The folder appears at `path` whole or not at all (saved beside it, then renamed); memory:
    the shard's score matrix.

    Example:
        >>> build_bm25_shard([["vitamin d", "bone health"]], 0, stats, "bm25.d0-2")  # doctest: +SKIP
    """
    import bm25s
    import scipy.sparse as sp

    blocks, stop = [], first
    for texts in doc_batches:
        counts = term_counts(texts)
        blocks.append(bm25_weights(counts, stats, np.arange(stop, stop + len(texts))))
        stop += len(texts)
    weights = sp.vstack(blocks, format="csc") if blocks else sp.csc_matrix((0, N_FEATURES), dtype=np.float32)
    weights.sort_indices()
    index = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="atire", idf_method="lucene", backend="numpy")
    index.scores = {
        "data": weights.data.astype(np.float32),
        "indices": weights.indices.astype(np.int32),
        "indptr": weights.indptr.astype(np.int64),
        "num_docs": stop - first,
    }
    index.vocab_dict = {}  # queries pass hashed term ids, the columns themselves
    index.nonoccurrence_array = None  # atire has no non-occurrence term (bm25l, bm25+ do)
    _save_whole(index, Path(path))
    logger.info("bm25 shard %s: docs %d-%d, %d postings", Path(path).name, first, stop, weights.nnz)
    return Bm25Shard(str(path), first, stop)


def _save_whole(index, path: Path) -> None:
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        index.save(temp, show_progress=False)
        try:
            os.replace(temp, path)
        except OSError:  # a concurrent run saved the same shard first: same content, keep it
            if not (path / "params.index.json").exists():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def query_terms(texts: list[str]) -> list[np.ndarray]:
    """Each text's distinct hashed term ids, sorted (the order the scores are summed in)."""
    counts = term_counts(texts)
    counts.sort_indices()
    return [counts.indices[counts.indptr[i] : counts.indptr[i + 1]].astype(np.int32) for i in range(len(texts))]


def top_positive(scores: np.ndarray, k: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best (score, index) of a score vector with score > 0, by score then lower key (one per index)."""
    found = np.flatnonzero(scores > 0)
    if len(found) > k:
        threshold = np.partition(scores[found], len(found) - k)[len(found) - k]
        found = found[scores[found] >= threshold]
    order = np.lexsort((keys[found], -scores[found]))[:k]
    return scores[found[order]], found[order]


def search_bm25_shards(
    shards: list[Bm25Shard], anchor_batches: Iterable[list[str]], n_anchors: int, k: int, *, doc_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k BM25 (scores, doc ids) of `n_anchors` anchors over every shard; shape (n_anchors, k) each.

    Each shard is memory-mapped once and scored for every anchor, then dropped; each anchor
    keeps its best k across shards. Missing slots (fewer than k documents share a term with
    the anchor) have id -1 and score 0. `doc_keys` (n_docs,) breaks ties (a hash of each doc id).

    Example:
        >>> scores, ids = search_bm25_shards(shards, text_batches("anchors.parquet"), n_anchors, 100,
        ...     doc_keys=stable_hash64(doc_ids))  # doctest: +SKIP
    """
    import bm25s

    terms = [ids for texts in anchor_batches for ids in query_terms(texts)]
    if len(terms) != n_anchors:
        raise ValueError(f"{len(terms)} anchor texts for {n_anchors} anchors")
    best_scores = np.zeros((n_anchors, k), np.float32)
    best_ids = np.full((n_anchors, k), -1, np.int64)
    for shard in shards:
        index = bm25s.BM25.load(shard.path, mmap=True)
        keys = doc_keys[shard.first : shard.stop]
        for row, ids in enumerate(terms):
            scores, docs = top_positive(index.get_scores_from_ids(ids), k, keys) if len(ids) else _NONE
            _keep_best(best_scores, best_ids, row, scores, docs + shard.first, doc_keys)
        del index
    return best_scores, best_ids


_NONE = (np.zeros(0, np.float32), np.zeros(0, np.int64))


def _keep_best(
    best_scores: np.ndarray, best_ids: np.ndarray, row: int, scores: np.ndarray, ids: np.ndarray, keys: np.ndarray
) -> None:
    held = best_ids[row] >= 0
    all_scores = np.concatenate([best_scores[row][held], scores])
    all_ids = np.concatenate([best_ids[row][held], ids])
    order = np.lexsort((keys[all_ids], -all_scores))[: best_ids.shape[1]]
    best_scores[row] = 0
    best_ids[row] = -1
    best_scores[row, : len(order)] = all_scores[order]
    best_ids[row, : len(order)] = all_ids[order]
