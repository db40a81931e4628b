"""Fusion of several candidate lists per anchor (dense, BM25) into one list of the usual depth.

Contract of :func:`fuse_lists`: each list is (scores, ids) of shape (n_anchors, k), best first,
id -1 in empty slots. ``rrf`` gives a document Σ 1 / (rrf_k + rank) over the lists that hold
it (rank 1-based: 1 / (rrf_k + column + 1)); ``score`` gives it Σ of its scores min-max
normalised over each anchor's list (1.0 where a list's scores are all equal). A list that does
not hold a document adds nothing. Documents are ordered by fused value, ties on the lower doc
key (a hash of the doc id, so the order does not depend on the corpus's row order). The
sources of each kept document are a bit mask: bit i set when list i proposed it.

:func:`dense_scores` then gives every fused candidate the dense model's cosine, so selection
and curation see the same score whichever view proposed the candidate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from negminer.mining.vectors import take_rows


class Fused(NamedTuple):
    ids: np.ndarray  # (n_anchors, depth) int64, -1 in empty slots
    sources: np.ndarray  # (n_anchors, depth) int8 bit mask of the lists that proposed each


def fuse_lists(
    lists: list[tuple[np.ndarray, np.ndarray]], *, depth: int, fusion: str, rrf_k: int, doc_keys: np.ndarray
) -> Fused:
    """One list of `depth` candidates per anchor from `lists` (see the module docstring).

    Example:
        >>> dense = (np.array([[0.9, 0.8]]), np.array([[3, 1]]))
        >>> lexical = (np.array([[7.0, 2.0]]), np.array([[5, 3]]))
        >>> fuse_lists([dense, lexical], depth=3, fusion="rrf", rrf_k=60, doc_keys=np.arange(6)).ids
        array([[3, 5, 1]])
    """
    if fusion not in ("rrf", "score"):
        raise ValueError(f"fusion must be 'rrf' or 'score', not {fusion!r}")
    n = lists[0][1].shape[0]
    rows, ids, values, bits = [], [], [], []
    for bit, (scores, list_ids) in enumerate(lists):
        valid = list_ids >= 0
        rows.append(np.nonzero(valid)[0])
        ids.append(list_ids[valid].astype(np.int64))
        values.append(_contributions(scores, valid, fusion, rrf_k)[valid])
        bits.append(np.full(int(valid.sum()), 1 << bit, np.int8))
    row, doc = np.concatenate(rows), np.concatenate(ids)
    span = int(doc.max(initial=0)) + 1
    keys, inverse = np.unique(row.astype(np.int64) * span + doc, return_inverse=True)
    fused = np.bincount(inverse, weights=np.concatenate(values), minlength=len(keys))
    mask = np.zeros(len(keys), np.int8)
    np.bitwise_or.at(mask, inverse, np.concatenate(bits))
    key_row, key_doc = keys // span, keys % span
    order = np.lexsort((doc_keys[key_doc], -fused, key_row))
    key_row, key_doc, mask = key_row[order], key_doc[order], mask[order]
    slot = np.arange(len(order)) - np.searchsorted(key_row, key_row)
    kept = slot < depth
    out_ids = np.full((n, depth), -1, np.int64)
    out_sources = np.zeros((n, depth), np.int8)
    out_ids[key_row[kept], slot[kept]] = key_doc[kept]
    out_sources[key_row[kept], slot[kept]] = mask[kept]
    return Fused(out_ids, out_sources)


def _contributions(scores: np.ndarray, valid: np.ndarray, fusion: str, rrf_k: int) -> np.ndarray:
    if fusion == "rrf":
        return np.broadcast_to(1.0 / (rrf_k + 1 + np.arange(scores.shape[1], dtype=np.float64)), scores.shape)
    values = scores.astype(np.float64)
    low = np.where(valid, values, np.inf).min(axis=1, keepdims=True)
    high = np.where(valid, values, -np.inf).max(axis=1, keepdims=True)
    spread = high - low
    with np.errstate(invalid="ignore"):
        return np.where(spread > 0, (values - low) / np.where(spread > 0, spread, 1.0), 1.0)


def dense_scores(
    fused_ids: np.ndarray,
    first_anchor: int,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    known: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """Cosine of each fused candidate, (n_anchors, depth) float32 (0 in empty slots).

    `known` is the dense list (scores, ids) of the same anchors: its candidates keep the
    score the index gave them; the others' are computed from the stored vectors.
    """
    n, depth = fused_ids.shape
    out = np.zeros((n, depth), np.float32)
    todo = fused_ids >= 0
    if known is not None:
        known_scores, known_ids = known
        span = int(max(fused_ids.max(initial=0), known_ids.max(initial=0))) + 1
        held = known_ids >= 0
        keys = np.nonzero(held)[0].astype(np.int64) * span + known_ids[held]
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], known_scores[held][order]
        wanted = np.nonzero(todo)[0].astype(np.int64) * span + fused_ids[todo]
        at = np.searchsorted(keys, wanted).clip(max=max(len(keys) - 1, 0))
        hit = keys[at] == wanted if len(keys) else np.zeros(len(wanted), bool)
        placed = out[todo]
        placed[hit] = values[at[hit]]
        out[todo] = placed
        todo[todo] = ~hit
    row, col = np.nonzero(todo)
    if len(row):
        anchors = take_rows(anchor_vectors, row + first_anchor)
        docs = take_rows(doc_vectors, fused_ids[row, col])
        out[row, col] = np.einsum("ij,ij->i", anchors, docs)
    return out


def source_names(mask: np.ndarray, names: tuple[str, ...]) -> list[str]:
    """The ``source`` value of each bit mask: the names of its set bits joined by "+"."""
    labels = {bits: "+".join(name for i, name in enumerate(names) if bits >> i & 1) for bits in np.unique(mask)}
    return [labels[bits] for bits in mask.tolist()]
