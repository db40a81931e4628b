"""The features confident learning scores the pair rows (:mod:`negminer.curation.rows`) with.

Contract of :func:`pair_features`: a dict of float32 columns, one value per row. Every
feature is computed the same way for a given positive as for a candidate: a feature that
only a positive could have (its similarity to itself) would let the classifier recognise
positives by construction instead of by content.

* retrieval (label-free): ``score``, ``log_rank``, ``gap_to_top`` (to the anchor's best
  score), ``score_z`` (within the anchor's candidates), ``log_reverse_rank`` (how many other
  anchors retrieved the document with a higher score), ``log_doc_hubness`` (how many anchors
  retrieve it);
* pseudo-relevance feedback (label-free): ``feedback_score`` (cosine to the centroid of the
  anchor's top 10 retrieved documents), ``neighborhood_score`` (cosine to the centroid of the
  nearest other anchors);
* lexical: ``bm25``, ``bm25_relative`` (over the anchor's best row), ``token_overlap``
  (share of the anchor's tokens in the document), ``log_doc_length``, ``log_length_ratio``;
* own positives (leave-one-positive-out; NaN on every row of an anchor with a single
  positive): ``own_positive_sim`` (closest of the anchor's other positives) and
  ``score_minus_own_positive``;
* cross-anchor, only with ``cross_anchor=True`` (leave-anchor-out: other anchors' positives):
  ``neighbor_positive_sim`` (cosine to the most similar other anchor that has the document as
  a positive, 0 if none), ``neighbor_positive_count``, ``log_doc_positive_count``,
  ``neighbor_doc_max`` / ``neighbor_doc_mean`` (cosine to the positives of the nearest other
  anchors, the document itself left out).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from negminer.curation.context import PoolContext
from negminer.curation.lexical import TextSource, lexical_features
from negminer.curation.rows import (
    ROW_BATCH,
    PairRows,
    Positives,
    expand_positives,
    family_owner_counts,
    lookup_sorted,
    neighbors_naming,
    segment_max,
)
from negminer.mining.strategies import pair_priority
from negminer.mining.vectors import gather_order


def pair_features(
    rows: PairRows,
    *,
    candidates: pa.Table,
    positives: Positives,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_texts: TextSource,
    doc_texts: TextSource,
    context: PoolContext,
    cross_anchor: bool,
    seed: int,
) -> dict[str, np.ndarray]:
    """The classifier's features of every row (see the module docstring), float32 columns.

    Args:
        rows: the rows to describe (:func:`pair_rows`).
        candidates: the candidate table the rows come from (their anchors' rows, whole).
        positives: the given positives (:func:`group_positives`).
        anchor_vectors, doc_vectors: normalised float32 vectors by *_idx.
        anchor_texts, doc_texts: texts by *_idx (lexical features), lists or Arrow arrays.
        context: what the features need from the whole pool
            (:func:`negminer.curation.context.pool_context`).
        cross_anchor: add the features built from other anchors' positives.
        seed: seed of the leave-one-positive-out draw.

    Example:
        >>> feats = pair_features(rows, candidates=c, positives=p, anchor_vectors=a,
        ...                       doc_vectors=d, anchor_texts=at, doc_texts=dt, context=ctx,
        ...                       cross_anchor=False, seed=12)  # doctest: +SKIP
    """
    neighbors, neighbor_sims = context.neighbors, context.neighbor_sims
    features = {
        **retrieval_features(rows, candidates=candidates, context=context),
        **feedback_features(
            rows,
            candidates=candidates,
            anchor_vectors=anchor_vectors,
            doc_vectors=doc_vectors,
            neighbors=neighbors,
            neighbor_sims=neighbor_sims,
        ),
        **lexical_features(
            rows.anchor, rows.doc, anchor_texts=anchor_texts, doc_texts=doc_texts, stats=context.lexical
        ),
        **own_positive_features(
            rows,
            positives,
            anchor_vectors,
            doc_vectors,
            seed=seed,
            anchor_hash=context.anchor_hash,
            doc_hash=context.doc_hash,
        ),
    }
    if cross_anchor:
        features.update(cross_anchor_features(rows, positives, neighbors, neighbor_sims))
        features.update(neighbor_doc_features(rows, positives, neighbors, neighbor_sims, doc_vectors=doc_vectors))
    return {name: np.asarray(values, np.float32) for name, values in features.items()}


def retrieval_features(rows: PairRows, *, candidates: pa.Table, context: PoolContext) -> dict[str, np.ndarray]:
    """Label-free features of the anchor's ranking and of the document across anchors."""
    c_anchor = candidates.column("anchor_idx").to_numpy().astype(np.int64)
    c_score = candidates.column("score").to_numpy().astype(np.float64)
    n_anchors = max(int(c_anchor.max(initial=-1)), int(rows.anchor.max(initial=-1))) + 1
    top = np.full(n_anchors, -1.0)
    np.maximum.at(top, c_anchor, c_score)
    count = np.bincount(c_anchor, minlength=n_anchors).clip(1)
    mean = np.bincount(c_anchor, c_score, minlength=n_anchors) / count
    var = np.bincount(c_anchor, c_score**2, minlength=n_anchors) / count - mean**2
    std = np.sqrt(var.clip(1e-6))
    score = rows.score.astype(np.float64)
    return {
        "score": score,
        "log_rank": np.log1p(rows.rank),
        "gap_to_top": score - top[rows.anchor],
        "score_z": (score - mean[rows.anchor]) / std[rows.anchor],
        "log_reverse_rank": np.log1p(context.doc_scores.higher_than(rows.doc, rows.score)),
        "log_doc_hubness": np.log1p(context.doc_scores.count(rows.doc)),
    }


def feedback_features(
    rows: PairRows,
    *,
    candidates: pa.Table,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    neighbors: np.ndarray,
    neighbor_sims: np.ndarray,
    feedback_depth: int = 10,
) -> dict[str, np.ndarray]:
    """Label-free pseudo-relevance feedback: agreement of the anchor's neighbourhood.

    ``feedback_score``: cosine between the document and the centroid of the anchor's top
    `feedback_depth` retrieved documents (whatever their labels). ``neighborhood_score``: cosine
    between the document and the similarity-weighted centroid of the nearest other anchors.
    """
    anchors, local = np.unique(rows.anchor, return_inverse=True)
    c_anchor = candidates.column("anchor_idx").to_numpy().astype(np.int64)
    c_local = np.searchsorted(anchors, c_anchor).clip(max=max(len(anchors) - 1, 0))
    top = (candidates.column("rank").to_numpy() < feedback_depth) & (anchors[c_local] == c_anchor)
    feedback = np.zeros((len(anchors), doc_vectors.shape[1]), np.float32)
    np.add.at(feedback, c_local[top], doc_vectors[candidates.column("doc_idx").to_numpy()[top]])
    weight = np.where(neighbors >= 0, neighbor_sims.clip(0), 0.0)
    neighborhood = np.zeros_like(feedback)
    for first in range(0, len(anchors), ROW_BATCH):
        part = anchors[first : first + ROW_BATCH]
        neighborhood[first : first + ROW_BATCH] = np.einsum(
            "ak,akd->ad", weight[part], anchor_vectors[neighbors[part].clip(0)]
        )
    feedback_score, neighborhood_score = _row_cosines(doc_vectors, rows.doc, (feedback, neighborhood), local)
    return {"feedback_score": feedback_score, "neighborhood_score": neighborhood_score}


def _row_cosines(
    left: np.ndarray, left_rows: np.ndarray, rights: tuple[np.ndarray, ...], right_rows: np.ndarray
) -> list[np.ndarray]:
    """For each `right`: cosine of left[left_rows[i]] and right[right_rows[i]] (0 where right is a
    zero vector). Each left row is gathered once for all of them: from a memory-mapped pool every
    gathered row is a page fault."""
    units = []
    for right in rights:
        norms = np.linalg.norm(right, axis=1)
        units.append(right / np.where(norms > 0, norms, 1.0)[:, None])
    out = [np.empty(len(left_rows), np.float32) for _ in rights]
    order = gather_order(left_rows)
    for first in range(0, len(left_rows), ROW_BATCH * 16):
        part = order[first : first + ROW_BATCH * 16]
        gathered = left[left_rows[part]]
        for result, right in zip(out, units, strict=True):
            result[part] = np.einsum("ij,ij->i", gathered, right[right_rows[part]])
    return out


def cross_anchor_features(
    rows: PairRows, positives: Positives, neighbors: np.ndarray, neighbor_sims: np.ndarray
) -> dict[str, np.ndarray]:
    """Is the document a given positive of other (similar) anchors? Leave-anchor-out."""
    family_count = family_owner_counts(positives)
    own_keys = positives.family[rows.anchor] * positives.n_docs + rows.doc
    own = lookup_sorted(own_keys, positives.family_keys) >= 0
    best = np.zeros(len(rows.anchor), np.float32)
    hits = np.zeros(len(rows.anchor), np.int64)
    for first in range(0, len(rows.anchor), ROW_BATCH):
        part = slice(first, first + ROW_BATCH)
        hit = neighbors_naming(rows.anchor[part], rows.doc[part], positives, neighbors)
        best[part] = np.where(hit, neighbor_sims[rows.anchor[part]], 0.0).max(axis=1, initial=0.0)
        hits[part] = hit.sum(axis=1)
    return {
        "neighbor_positive_sim": best,
        "neighbor_positive_count": hits,
        "log_doc_positive_count": np.log1p(family_count[rows.doc] - own),
    }


def neighbor_doc_features(
    rows: PairRows,
    positives: Positives,
    neighbors: np.ndarray,
    neighbor_sims: np.ndarray,
    *,
    doc_vectors: np.ndarray,
) -> dict[str, np.ndarray]:
    """Cosine between the document and the positives of the nearest other anchors.

    The document itself is left out of those positives, so the feature measures topical
    closeness to what similar anchors call relevant, not whether the document is one of them.
    """
    best = np.full(len(rows.anchor), -1.0, np.float32)
    mean = np.full(len(rows.anchor), -1.0, np.float32)
    k = neighbors.shape[1]
    for first in range(0, len(rows.anchor), ROW_BATCH // 4):
        part = np.arange(first, min(first + ROW_BATCH // 4, len(rows.anchor)))
        nbr = neighbors[rows.anchor[part]].ravel()
        owner, _, pos_doc = expand_positives(nbr.clip(0), positives)
        real = nbr[owner] >= 0
        owner, pos_doc = owner[real], pos_doc[real]
        row_doc = rows.doc[part][owner // k]
        sims = np.einsum("ij,ij->i", doc_vectors[row_doc], doc_vectors[pos_doc])
        per_nbr = segment_max(np.where(pos_doc != row_doc, sims, -np.inf), owner, len(nbr)).reshape(-1, k)
        valid = np.isfinite(per_nbr)
        weight = np.where(valid, neighbor_sims[rows.anchor[part]].clip(0), 0.0)
        best[part] = np.where(valid, per_nbr, -1.0).max(axis=1)
        has = weight.sum(axis=1) > 0
        mean[part] = np.where(
            has, (np.where(valid, per_nbr, 0.0) * weight).sum(axis=1) / weight.sum(axis=1).clip(1e-6), -1.0
        )
    return {"neighbor_doc_max": best, "neighbor_doc_mean": mean}


def own_positive_features(
    rows: PairRows,
    positives: Positives,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    *,
    seed: int,
    anchor_hash: np.ndarray,
    doc_hash: np.ndarray,
) -> dict[str, np.ndarray]:
    """Similarity to the anchor's other positives, leaving one positive out for every row.

    A positive row compares with the anchor's other positives; a candidate row with all of
    them but one (chosen by a seeded hash of the anchor's and the row's text hashes, among
    the positives in text-hash order), so both see the same number of positives.
    Anchors with a single positive get NaN on all their rows.
    """
    n_pos = np.diff(positives.indptr)[rows.anchor]
    sim = np.full(len(rows.anchor), np.nan, np.float32)
    gap = np.full(len(rows.anchor), np.nan, np.float32)
    skip = _skipped_positive(rows, positives, n_pos, seed, anchor_hash, doc_hash)
    multi = np.nonzero(n_pos >= 2)[0]
    for first in range(0, len(multi), ROW_BATCH):
        part = multi[first : first + ROW_BATCH]
        owner, offset, pos_doc = expand_positives(rows.anchor[part], positives)
        keep = offset != skip[part][owner]
        d_sim = np.einsum("ij,ij->i", doc_vectors[rows.doc[part][owner]], doc_vectors[pos_doc])
        a_sim = np.einsum("ij,ij->i", anchor_vectors[rows.anchor[part][owner]], doc_vectors[pos_doc])
        sim[part] = segment_max(np.where(keep, d_sim, -np.inf), owner, len(part))
        gap[part] = rows.score[part] + segment_max(np.where(keep, -a_sim, -np.inf), owner, len(part))
    return {"own_positive_sim": sim, "score_minus_own_positive": gap}


def _skipped_positive(
    rows: PairRows, positives: Positives, n_pos: np.ndarray, seed: int, anchor_hash: np.ndarray, doc_hash: np.ndarray
) -> np.ndarray:
    """Index (within the anchor's positives) of the positive each row leaves out."""
    n_docs = positives.n_docs
    owner = np.repeat(np.arange(len(positives.indptr) - 1), np.diff(positives.indptr))
    sorted_keys = owner * n_docs + positives.docs
    own = np.searchsorted(sorted_keys, rows.anchor * n_docs + rows.doc) - positives.indptr[rows.anchor]
    drawn = pair_priority(anchor_hash[rows.anchor].astype(np.uint64), doc_hash[rows.doc].astype(np.uint64), seed)
    nth = (drawn % n_pos.clip(1).astype(np.uint64)).astype(np.int64)
    by_hash = np.lexsort((positives.docs, doc_hash[positives.docs], owner))  # each anchor's positives by text hash
    start = positives.indptr[rows.anchor]
    drawn_offset = by_hash[(start + nth).clip(max=max(len(by_hash) - 1, 0))] - start if len(by_hash) else nth
    return np.where(rows.label == 1, own, drawn_offset)
