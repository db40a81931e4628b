"""What every anchor's features need from the whole pool: built once, shared by every shard.

Contract of :func:`pool_context`: from the candidate table (read in batches, twice), the
anchor vectors, the anchors' families and the documents' texts it returns a
:class:`PoolContext`: each anchor's nearest other anchors (outside its family), every
retrieved score grouped by document (:class:`DocScores`: how many anchors retrieved a
document, and how many with a higher score than a given one), the pool's BM25
statistics, and the text hashes seeded draws use (so that row order does not matter).
Everything else a feature needs comes from the anchor's own rows, so a shard of
anchors is described exactly as it would be in one pass over all of them.

Memory: 4 bytes per candidate row (the scores, float32) and 24 per document (offsets,
hashes, order), plus 8 bytes per anchor and neighbour; the batches, the neighbour search blocks and the sort chunks are
bounded by :data:`NEIGHBOR_BATCH` and :data:`SORT_CHUNK_ROWS`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from negminer.config import CurateConfig
from negminer.curation.lexical import LexicalStats, TextSource, lexical_stats
from negminer.mining.vectors import read_rows, take_rows

logger = logging.getLogger(__name__)

NEIGHBOR_BATCH = 65536  # anchors searched at once for their nearest anchors
SORT_CHUNK_ROWS = 1 << 23  # scores sorted at once when they are grouped by document


class DocScores(NamedTuple):
    """Every retrieved (document, score), grouped by document (CSR), ascending within each."""

    offsets: np.ndarray  # (n_docs + 1,) int64
    scores: np.ndarray  # float32

    def count(self, doc: np.ndarray) -> np.ndarray:
        """How many candidate rows name each of `doc` (its hubness)."""
        return self.offsets[doc + 1] - self.offsets[doc]

    def higher_than(self, doc: np.ndarray, score: np.ndarray) -> np.ndarray:
        """How many candidate rows of each `doc[i]` score strictly higher than `score[i]`.

        Example:
            >>> s = DocScores(np.array([0, 3, 3]), np.array([0.1, 0.5, 0.9], np.float32))
            >>> s.higher_than(np.array([0, 0, 1]), np.array([0.5, 0.0, 0.2], np.float32)).tolist()
            [1, 3, 0]
        """
        score = np.asarray(score, np.float32)
        end = self.offsets[doc + 1]
        lo, hi = self.offsets[doc].copy(), end.copy()
        last = max(len(self.scores) - 1, 0)
        while (active := lo < hi).any():  # binary search for the first score above, per row
            mid = (lo + hi) >> 1
            above = self.scores[np.minimum(mid, last)] > score if len(self.scores) else active
            hi = np.where(active & above, mid, hi)
            lo = np.where(active & ~above, mid + 1, lo)
        return end - lo


class PoolContext(NamedTuple):
    neighbors: np.ndarray  # (n_anchors, k) int32 nearest other anchors, -1 padded
    neighbor_sims: np.ndarray  # (n_anchors, k) float32 their cosines
    doc_scores: DocScores
    lexical: LexicalStats
    anchor_hash: np.ndarray  # (n_anchors,) uint64 hash of each anchor's normalised text
    doc_hash: np.ndarray  # (n_docs,) uint64 hash of each document's normalised text
    doc_order: np.ndarray  # (n_docs,) int64 documents ordered by (doc_hash, doc_idx): what seeded draws pick from


def key_matrix(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-width binary column (the read stage's ``text_key``) as an (n, width) uint8 view."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    width = keys.type.byte_width
    data = np.frombuffer(keys.buffers()[1], np.uint8)[keys.offset * width : (keys.offset + len(keys)) * width]
    return data.reshape(len(keys), width)


def text_hashes(texts: TextSource | None = None, *, keys: pa.Array | None = None) -> np.ndarray:
    """uint64 of each text's key (:func:`negminer.textkeys.text_key`, its first 8 bytes, little-endian).

    From the read stage's 16-byte ``text_key`` column where given (no Python object per row),
    else from the texts. Seeded draws hash these instead of row numbers, so the same inputs
    in another row order are curated alike.
    """
    if keys is not None:
        return key_matrix(keys)[:, :8].copy().view("<u8").ravel()
    from negminer.textkeys import text_key

    listed = texts if isinstance(texts, list) else texts.to_pylist()
    return np.fromiter((int.from_bytes(text_key(t)[:8], "little") for t in listed), np.uint64, len(listed))


def pool_context(
    candidate_batches: Callable[[], Iterable[pa.Table]],
    *,
    anchor_vectors: np.ndarray,
    family: np.ndarray,
    family_hash: np.ndarray,
    doc_texts: TextSource,
    doc_hash: np.ndarray,
    config: CurateConfig,
) -> PoolContext:
    """The shared context of every anchor's features (see the module docstring).

    `candidate_batches` gives the candidate rows (``doc_idx``, ``score``) in batches, each
    time it is called. The nearest anchors are searched exactly up to
    ``config.neighbor_exact_max_anchors`` anchors, above it with an IVF index tuned to
    ``config.neighbor_min_recall``.
    """
    neighbors, neighbor_sims = anchor_neighbors(
        anchor_vectors,
        family,
        k=config.neighbor_anchors,
        exact_max_anchors=config.neighbor_exact_max_anchors,
        min_recall=config.neighbor_min_recall,
        max_probe=config.neighbor_max_probe,
        seed=config.seed,
    )
    scores = doc_scores(candidate_batches, len(doc_texts))
    doc_order = np.lexsort((np.arange(len(doc_hash)), doc_hash))
    return PoolContext(neighbors, neighbor_sims, scores, lexical_stats(doc_texts), family_hash, doc_hash, doc_order)


def doc_scores(candidate_batches: Callable[[], Iterable[pa.Table]], n_docs: int) -> DocScores:
    """Group the candidates' scores by document: one pass counts, one fills, then chunked sorts."""
    counts = np.zeros(n_docs, np.int64)
    for batch in candidate_batches():
        docs, sizes = np.unique(batch.column("doc_idx").to_numpy(), return_counts=True)
        counts[docs] += sizes
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    scores = np.empty(int(offsets[-1]), np.float32)
    cursor = offsets[:-1].copy()
    for batch in candidate_batches():
        doc = batch.column("doc_idx").to_numpy().astype(np.int64)
        order = np.argsort(doc, kind="stable")
        grouped = doc[order]
        within = np.arange(len(grouped)) - np.searchsorted(grouped, grouped, side="left")
        scores[cursor[grouped] + within] = batch.column("score").to_numpy()[order]
        docs, sizes = np.unique(grouped, return_counts=True)
        cursor[docs] += sizes
    _sort_within_docs(scores, offsets, counts)
    return DocScores(offsets, scores)


def _sort_within_docs(scores: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> None:
    """Sort each document's scores ascending, in place, about SORT_CHUNK_ROWS scores at a time."""
    targets = np.arange(SORT_CHUNK_ROWS, len(scores), SORT_CHUNK_ROWS)
    bounds = np.unique(np.concatenate([[0], np.searchsorted(offsets, targets, side="right") - 1, [len(counts)]]))
    for lo, hi in itertools.pairwise(bounds):
        first, stop = offsets[lo], offsets[hi]
        local_doc = np.repeat(np.arange(hi - lo, dtype=np.int32), counts[lo:hi])
        part = scores[first:stop]
        scores[first:stop] = part[np.lexsort((part, local_doc))]


def anchor_neighbors(
    anchor_vectors: np.ndarray,
    family: np.ndarray,
    *,
    k: int,
    exact_max_anchors: int | None,
    min_recall: float,
    max_probe: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most similar anchors of each anchor, outside its own family.

    Up to `exact_max_anchors` anchors (None: always) the search is exact; above it an IVF
    index with 8-bit codes (a quarter of the vectors' size) tuned to `min_recall` within `max_probe`
    (:func:`negminer.mining.index.build_search_index`) cuts the cost from n² to about n·√n:
    each query scans at most `max_probe` of its ~4·√n lists.

    Returns:
        (neighbors int32, similarities float32), each (n_anchors, k); -1 and 0.0 pad anchors
        with fewer.
    """
    n = len(anchor_vectors)
    family_size = np.bincount(family, minlength=n)
    depth = min(n, k + int(family_size.max(initial=1)))
    index = _anchor_index(anchor_vectors, depth, exact_max_anchors, min_recall, max_probe, seed)
    ids = np.full((n, k), -1, np.int32)
    sims = np.zeros((n, k), np.float32)
    for first in range(0, n, NEIGHBOR_BATCH):
        part = read_rows(anchor_vectors, first, first + NEIGHBOR_BATCH)
        found_sims, found = index.search(part, depth)
        same = (found < 0) | (family[found.clip(0)] == family[first : first + len(part), None])
        order = np.argsort(same, axis=1, kind="stable")[:, :k]
        width = order.shape[1]
        ids[first : first + len(part), :width] = np.take_along_axis(np.where(same, -1, found), order, axis=1)
        sims[first : first + len(part), :width] = np.take_along_axis(np.where(same, 0.0, found_sims), order, axis=1)
    return ids, sims


def _anchor_index(
    vectors: np.ndarray, depth: int, exact_max: int | None, min_recall: float, max_probe: int | None, seed: int
) -> Any:
    import faiss

    from negminer.mining.index import BLOCK_ROWS, build_search_index, choose_factory

    n, dim = vectors.shape
    if exact_max is None or n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        for first in range(0, n, BLOCK_ROWS):
            index.add(read_rows(vectors, first, first + BLOCK_ROWS))
        return index
    lists = choose_factory(n, dim, kind="auto", exact_max_docs=exact_max).split(",")[0]
    sample = np.sort(np.random.default_rng(seed).permutation(n)[:1000])
    index, report = build_search_index(
        vectors,
        sample_queries=take_rows(vectors, sample),
        k=depth,
        kind=f"{lists},SQ8",
        exact_max_docs=exact_max,
        min_recall=min_recall,
        use_gpu=False,
        seed=seed,
        max_probe=max_probe,
    )
    logger.info("nearest anchors: %s, recall@%d %s on 1,000 anchors", report.factory, depth, report.recall)
    return index
