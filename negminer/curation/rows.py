"""The rows curation scores: given positives, scored candidates and tail samples.

Contract of :func:`pair_rows`: the given positives (label 1), then the scored candidates
(label 0: raw rank below ``max_rank``, not a positive, not the same text as a positive or as
the anchor), then ``tail_samples`` seeded-random documents per anchor from outside that window
(label 0, ``tail`` True). Arrays are aligned by row; ``candidate_row`` points into the
candidate table (-1 where the search did not retrieve the pair), ``pair_idx`` into the pairs
(-1 for label-0 rows), ``rank`` is the raw rank (the search depth where not retrieved).
:func:`group_positives` groups the given positives by anchor (and anchor family);
:func:`expand_positives` and :func:`segment_max` are the array helpers the features and the
near-duplicate check build on.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from negminer.mining.strategies import pair_priority
from negminer.mining.vectors import gather_order

ROW_BATCH = 4096
SCORE_BATCH = 16384  # rows whose cosine is computed at once (2 × SCORE_BATCH × dim floats)


class PairRows(NamedTuple):
    """The rows curation scores, aligned arrays of length n_rows."""

    anchor: np.ndarray  # int64 anchor_idx
    doc: np.ndarray  # int64 doc_idx
    label: np.ndarray  # int8: 1 given positive, 0 candidate or tail sample
    pair_idx: np.ndarray  # int64, -1 for candidates
    candidate_row: np.ndarray  # int64 row in the candidate table, -1 if not retrieved
    rank: np.ndarray  # int64 raw rank, search depth where not retrieved
    score: np.ndarray  # float32 anchor–document cosine
    tail: np.ndarray  # bool: a random document from outside the scored window (label 0)


class Positives(NamedTuple):
    """Given positives grouped by anchor (CSR layout) and by anchor family."""

    indptr: np.ndarray  # (n_anchors + 1,) offsets into docs
    docs: np.ndarray  # doc_idx of each anchor's positives, grouped by anchor
    family: np.ndarray  # (n_anchors,) smallest anchor_idx with the same normalised text
    family_keys: np.ndarray  # sorted unique family * n_docs + doc_idx
    n_docs: int


def group_positives(pair_anchor: np.ndarray, pair_doc: np.ndarray, family: np.ndarray, n_docs: int) -> Positives:
    """Group the pairs' positives by anchor and by anchor family.

    Args:
        pair_anchor: (n_pairs,) anchor_idx of each given pair.
        pair_doc: (n_pairs,) doc_idx of each given pair.
        family: (n_anchors,) family id of each anchor (anchors with equal normalised text).
        n_docs: size of the document pool.
    """
    order = np.lexsort((pair_doc, pair_anchor))
    counts = np.bincount(pair_anchor, minlength=len(family))
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    keys = np.unique(family[pair_anchor].astype(np.int64) * n_docs + pair_doc)
    return Positives(indptr, pair_doc[order].astype(np.int64), family, keys, n_docs)


def pair_rows(
    candidates: pa.Table,
    *,
    pair_anchor: np.ndarray,
    pair_doc: np.ndarray,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    max_rank: int,
    tail_samples: int,
    seed: int,
    anchor_hash: np.ndarray,
    doc_order: np.ndarray,
    anchors: np.ndarray | None = None,
) -> PairRows:
    """Given positives (label 1), the scored candidates and tail samples (label 0), in that order.

    Tail samples are documents drawn from outside the anchor's scored window (seeded hash of
    the anchor's text and the draw number, picking from the documents in `doc_order`), so that
    a given positive the search ranked low still has comparable label-0 rows to be judged
    against.

    Args:
        candidates: candidate table of :mod:`negminer.mining.search`.
        pair_anchor, pair_doc: (n_pairs,) the given pairs.
        anchor_vectors, doc_vectors: normalised float32 vectors by *_idx.
        max_rank: candidates with raw rank below this are scored.
        tail_samples: documents drawn per anchor from outside the window.
        seed: seed of the tail draw.
        anchor_hash: (n_anchors,) uint64 hash of each anchor's text.
        doc_order: (n_docs,) the documents in the order of their text hashes (so the draw
            does not depend on the corpus's row order).
        anchors: the anchors whose rows these are (their tail samples are drawn); None: every
            anchor of `anchor_vectors`.
    """
    col = {name: candidates.column(name).to_numpy() for name in _CANDIDATE_COLUMNS}
    n_docs = len(doc_vectors)
    scored = (
        (col["rank"] < max_rank) & ~col["is_positive"] & ~col["same_text_as_positive"] & ~col["same_text_as_anchor"]
    )
    cand = np.nonzero(scored)[0]
    table_keys = col["anchor_idx"].astype(np.int64) * n_docs + col["doc_idx"]
    key_order = np.argsort(table_keys, kind="stable")
    depth = int(col["rank"].max(initial=-1)) + 1
    pos_row = _table_rows(pair_anchor.astype(np.int64) * n_docs + pair_doc, table_keys, key_order)
    anchors = np.arange(len(anchor_vectors), dtype=np.int64) if anchors is None else anchors.astype(np.int64)
    tail_anchor, tail_doc = _tail_draw(anchors, anchor_hash, doc_order, tail_samples, seed)
    tail_row = _table_rows(tail_anchor * n_docs + tail_doc, table_keys, key_order)
    retrieved = tail_row >= 0
    excluded = _is_pair(tail_anchor, tail_doc, pair_anchor, pair_doc, n_docs) | (
        retrieved & ((col["rank"][tail_row.clip(0)] < max_rank) | col["same_text_as_positive"][tail_row.clip(0)])
    )
    tail_anchor, tail_doc, tail_row = tail_anchor[~excluded], tail_doc[~excluded], tail_row[~excluded]
    rows_table = np.r_[pos_row, cand, tail_row].astype(np.int64)
    anchor = np.r_[pair_anchor, col["anchor_idx"][cand], tail_anchor].astype(np.int64)
    doc = np.r_[pair_doc, col["doc_idx"][cand], tail_doc].astype(np.int64)
    n_pairs, n_cand, n_tail = len(pair_anchor), len(cand), len(tail_anchor)
    score = _row_scores(anchor, doc, rows_table, col["score"], anchor_vectors, doc_vectors)
    return PairRows(
        anchor=anchor,
        doc=doc,
        label=np.r_[np.ones(n_pairs, np.int8), np.zeros(n_cand + n_tail, np.int8)],
        pair_idx=np.r_[np.arange(n_pairs), np.full(n_cand + n_tail, -1)].astype(np.int64),
        candidate_row=rows_table,
        rank=np.where(rows_table >= 0, col["rank"][rows_table.clip(0)], depth).astype(np.int64),
        score=score.astype(np.float32),
        tail=np.r_[np.zeros(n_pairs + n_cand, bool), np.ones(n_tail, bool)],
    )


def _row_scores(
    anchor: np.ndarray,
    doc: np.ndarray,
    rows_table: np.ndarray,
    table_score: np.ndarray,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
) -> np.ndarray:
    """Each row's cosine: the search's score where it retrieved the pair, else computed, in batches
    (gathering both vectors of every row at once would hold 2 × dim floats per row)."""
    score = table_score[rows_table.clip(0)].astype(np.float32)
    computed = np.nonzero(rows_table < 0)[0]
    computed = computed[gather_order(doc[computed])]
    for first in range(0, len(computed), SCORE_BATCH):
        part = computed[first : first + SCORE_BATCH]
        score[part] = np.einsum("ij,ij->i", anchor_vectors[anchor[part]], doc_vectors[doc[part]])
    return score


def _table_rows(keys: np.ndarray, table_keys: np.ndarray, key_order: np.ndarray) -> np.ndarray:
    """Row of each (anchor * n_docs + doc) key in the candidate table, -1 where absent."""
    found = lookup_sorted(keys, table_keys[key_order])
    return np.where(found >= 0, key_order[found.clip(0)], -1)


def _tail_draw(
    anchors: np.ndarray, anchor_hash: np.ndarray, doc_order: np.ndarray, per_anchor: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`per_anchor` distinct seeded-random documents per anchor of `anchors` (fewer if the pool is small)."""
    n_docs = len(doc_order)
    if per_anchor <= 0 or n_docs == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    anchor = np.repeat(anchors, per_anchor)
    draw = np.tile(np.arange(per_anchor, dtype=np.uint64), len(anchors))
    pick = pair_priority(anchor_hash[anchor].astype(np.uint64), draw, seed) % np.uint64(n_docs)
    doc = doc_order[pick.astype(np.int64)].astype(np.int64)
    keys = np.unique(anchor * n_docs + doc)
    return keys // n_docs, keys % n_docs


def _is_pair(
    anchor: np.ndarray, doc: np.ndarray, pair_anchor: np.ndarray, pair_doc: np.ndarray, n_docs: int
) -> np.ndarray:
    pair_keys = np.unique(pair_anchor.astype(np.int64) * n_docs + pair_doc)
    return lookup_sorted(anchor * n_docs + doc, pair_keys) >= 0


_CANDIDATE_COLUMNS = (
    "anchor_idx",
    "doc_idx",
    "rank",
    "score",
    "is_positive",
    "same_text_as_positive",
    "same_text_as_anchor",
)


def lookup_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each value in `sorted_keys`, -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(len(values), -1, np.int64)
    pos = np.searchsorted(sorted_keys, values).clip(max=len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == values, pos, -1)


def family_owner_counts(positives: Positives) -> np.ndarray:
    """(n_docs,) how many anchor families name each document as a given positive."""
    return np.bincount(positives.family_keys % positives.n_docs, minlength=positives.n_docs)


def neighbors_naming(anchors: np.ndarray, docs: np.ndarray, positives: Positives, neighbors: np.ndarray) -> np.ndarray:
    """(len(anchors), neighbors.shape[1]) whether each neighbour of an anchor has that row's
    document as a given positive (in its family); -1 padded neighbours are False."""
    nbr = neighbors[anchors]
    keys = positives.family[nbr.clip(0)] * positives.n_docs + docs[:, None]
    return (lookup_sorted(keys.ravel(), positives.family_keys) >= 0).reshape(nbr.shape) & (nbr >= 0)


def expand_positives(anchor: np.ndarray, positives: Positives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (row, positive of the row's anchor) combination.

    Returns:
        (owner, offset, pos_doc): the row index, the positive's index among its anchor's
        positives and its doc_idx, one entry per combination.
    """
    n_pos = np.diff(positives.indptr)[anchor]
    owner = np.repeat(np.arange(len(anchor)), n_pos)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
    return owner, offset, positives.docs[positives.indptr[anchor][owner] + offset]


def segment_max(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Maximum of `values` per owner row (-inf where a row owns none)."""
    out = np.full(n, -np.inf, np.float64)
    np.maximum.at(out, owner, values)
    return out
