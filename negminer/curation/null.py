"""The false-positive check: is a given positive indistinguishable from a random document?

Contract: every anchor is scored against ``null_samples`` documents drawn from the whole pool
by a seeded hash of the anchor's text and the draw number (so the draw does not depend on the
input's row order; :func:`null_scores`). A given positive's cosine is then placed in that
*null*, two ways:

* per anchor: the empirical p-value ``(1 + #{random docs scoring >= the positive}) / (m + 1)``
  (the positive itself is left out of its anchor's draw);
* overall: its score standardised by the anchor's null (mean, standard deviation) against
  every fitted anchor's standardised null scores pooled, which has a finer resolution than
  ``m`` draws.

The positive's p-value is the mean of the two. A relevant positive, even one the search
ranked far down, scores above most random documents (small p); a wrong one is a random
document (p uniform on [0, 1]). The p-values of all given positives are a two-group mixture:
a share ``pi0`` of random documents, uniform, and relevant positives concentrated near 0
(Storey 2002 estimates ``pi0`` from the p-values above 1/2). The confidence that a positive is
a random document is the estimated share of random documents among the positives whose
p-value is at least as large (a tail-area false discovery rate read the other way), made
non-decreasing in p. :func:`fit_null` keeps what the verdicts on other anchors need (the
pooled null, the confidence curve); :func:`null_verdicts` gives each positive its p-value and
confidence.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from negminer.mining.strategies import pair_priority

_NULL_SALT = np.uint64(0x4E554C4C)  # separates the null's draw from the tail samples' (both hash the anchor)
_BATCH_FLOATS = 1 << 22  # gathered document-vector floats per batch of anchors (16 MB)


class NullScores(NamedTuple):
    """Each given positive placed in its anchor's null, and the null scores to pool."""

    p_anchor: np.ndarray  # (n_pairs,) per-anchor empirical p-value of the positive's cosine
    z: np.ndarray  # (n_pairs,) the positive's cosine standardised by its anchor's null
    pooled: np.ndarray  # (n_anchors * m,) sorted standardised null scores of the anchors of the pairs


class NullFit(NamedTuple):
    """What the verdicts need from the fitted positives: the pooled null and the confidence curve."""

    pooled: np.ndarray  # sorted standardised null scores
    edges: np.ndarray  # (n,) the fitted positives' distinct p-values, ascending
    confidence: np.ndarray  # (n,) the confidence of a p-value at each edge (non-decreasing)
    pi0: float  # estimated share of given positives that are random documents


def null_scores(
    pair_anchor: np.ndarray,
    pair_doc: np.ndarray,
    pair_score: np.ndarray,
    *,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_hash: np.ndarray,
    doc_order: np.ndarray,
    samples: int,
    seed: int,
) -> NullScores:
    """Place every given positive's cosine in its anchor's null of `samples` random documents.

    Args:
        pair_anchor, pair_doc: (n_pairs,) anchor_idx and doc_idx of the given positives.
        pair_score: (n_pairs,) their cosine.
        anchor_vectors, doc_vectors: normalised float32 vectors by *_idx.
        anchor_hash: (n_anchors,) uint64 hash of each anchor's text (the draw's seed).
        doc_order: (n_docs,) the documents in the order of their text hashes.
        samples: random documents per anchor (m).
        seed: seed of the draw.

    Returns:
        NullScores; memory grows with the anchors of the pairs times `samples`.

    Example:
        >>> null = null_scores(pa, pd, ps, anchor_vectors=a, doc_vectors=d, anchor_hash=h,
        ...                    doc_order=np.arange(len(d)), samples=200, seed=0)  # doctest: +SKIP
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n_pairs = len(pair_anchor)
    p_anchor, z = np.ones(n_pairs), np.zeros(n_pairs)
    anchors, inverse = np.unique(pair_anchor, return_inverse=True)
    if n_pairs == 0 or len(doc_order) == 0:
        return NullScores(p_anchor, z, np.zeros(0, np.float32))
    pooled = np.empty((len(anchors), samples), np.float32)
    step = max(1, _BATCH_FLOATS // (samples * doc_vectors.shape[1]))
    draw = np.arange(samples, dtype=np.uint64) + _NULL_SALT
    for first in range(0, len(anchors), step):
        part = anchors[first : first + step]
        pick = pair_priority(np.repeat(anchor_hash[part].astype(np.uint64), samples), np.tile(draw, len(part)), seed)
        docs = doc_order[(pick % np.uint64(len(doc_order))).astype(np.int64)].reshape(len(part), samples)
        scores = np.einsum("ad,amd->am", anchor_vectors[part], doc_vectors[docs])
        mean, std = scores.mean(axis=1, keepdims=True), scores.std(axis=1, keepdims=True)
        pooled[first : first + len(part)] = (scores - mean) / np.maximum(std, 1e-6)
        for row in np.nonzero((inverse >= first) & (inverse < first + len(part)))[0]:
            local = inverse[row] - first
            other = docs[local] != pair_doc[row]  # the positive itself is no random document of its anchor
            higher = int(np.sum(scores[local][other] >= pair_score[row]))
            p_anchor[row] = (1 + higher) / (1 + int(other.sum()))
            z[row] = (pair_score[row] - mean[local, 0]) / max(float(std[local, 0]), 1e-6)
    return NullScores(p_anchor, z, np.sort(pooled.ravel()))


def pooled_p_values(z: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """(n,) share of the pooled standardised null scores at or above each `z` (with one pseudo-count).

    Example:
        >>> pooled_p_values(np.array([3.0, -3.0]), np.array([-1.0, 0.0, 1.0])).tolist()
        [0.25, 1.0]
    """
    above = len(pooled) - np.searchsorted(pooled, z, side="left")
    return (1.0 + above) / (1.0 + len(pooled))


def combined_p_values(p_anchor: np.ndarray, z: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """(n,) the mean of each positive's per-anchor p-value and its pooled one (the per-anchor one alone
    without a pooled null)."""
    return p_anchor if len(pooled) == 0 else (p_anchor + pooled_p_values(z, pooled)) / 2


def fit_null(p_values: np.ndarray, pooled: np.ndarray, *, max_share: float = 1.0, split: float = 0.5) -> NullFit:
    """The confidence curve of the given positives' p-values.

    ``pi0`` (the share of random documents among the positives) is Storey's estimate, the
    share of p-values above `split` over ``1 - split``: relevant positives rarely lose to half
    of the pool's documents. Among the positives with a p-value of at least ``t``, about
    ``pi0 * n * (1 - t)`` are random documents, so ``pi0 * n * (1 - t) / #{p >= t}`` (capped at
    1) is the share of random documents in that tail (each tail taken at the smallest t that
    gives it: just above the next smaller p-value); a p-value's confidence is the largest such
    share over the tails it belongs to (``t <= p``), which makes it non-decreasing in p.

    Looking like a random document is not being wrong: where far more positives look random
    than labels are plausibly wrong (``pi0`` above `max_share`), the positives are loose (e.g.
    related by citation, not by content), and only a share ``max_share / pi0`` of the
    random-looking ones can be wrong, so every confidence is scaled by it.

    Args:
        p_values: (n_pairs,) p-values of the fitted positives, in (0, 1].
        pooled: sorted standardised null scores of their anchors.
        max_share: the largest plausible share of wrong given positives.
        split: Storey's lambda.

    Example:
        >>> fit = fit_null(np.r_[np.full(90, 0.01), np.linspace(0.05, 0.95, 10)], np.zeros(0))
        >>> round(fit.pi0, 3), fit.confidence.round(3).tolist()[:3]
        (0.1, [0.1, 0.99, 1.0])
    """
    p = np.sort(np.clip(np.asarray(p_values, np.float64), 1e-12, 1.0))
    n = len(p)
    if n == 0:
        return NullFit(pooled, np.ones(1), np.zeros(1), 0.0)
    pi0 = float(min(1.0, np.sum(p > split) / ((1.0 - split) * n)))
    edges = np.unique(p)
    at_least = n - np.searchsorted(p, edges, side="left")
    below = np.r_[0.0, edges[:-1]]  # the same positives are the tail of every t just above the previous p-value
    share = np.minimum(1.0, pi0 * n * (1.0 - below) / at_least)
    plausible = min(1.0, max_share / pi0) if pi0 > 0 else 1.0
    return NullFit(pooled, edges, np.maximum.accumulate(share) * plausible, pi0)


def null_verdicts(p_anchor: np.ndarray, z: np.ndarray, fit: NullFit) -> tuple[np.ndarray, np.ndarray]:
    """(p_value, confidence) of each positive: the mean of its per-anchor and pooled p-values, and
    the confidence curve's value at the largest fitted p-value not above it (the share of random
    documents among the fitted positives that look at least as random).

    Example:
        >>> fit = fit_null(np.r_[np.full(90, 0.01), np.linspace(0.05, 0.95, 10)], np.zeros(0))
        >>> p, confidence = null_verdicts(np.array([0.01, 0.7]), np.array([9.0, 0.0]), fit)
        >>> confidence.round(3).tolist()
        [0.1, 1.0]
    """
    p_value = combined_p_values(p_anchor, z, fit.pooled)
    at = (np.searchsorted(fit.edges, p_value, side="right") - 1).clip(min=0)
    return p_value, fit.confidence[at]


def stratified_p_values(
    anchor: np.ndarray,
    score: np.ndarray,
    label: np.ndarray,
    window: np.ndarray,
    tail: np.ndarray,
    *,
    n_docs: int,
) -> np.ndarray:
    """(n_positives,) each given positive's p-value among its anchor's documents under any `score`.

    The anchor's documents are its scored window (every top candidate, weight 1) and its tail
    samples (seeded-random documents from outside the window, each standing for
    ``(n_docs - window) / tail`` documents): a stratified estimate of the share of the whole
    pool that scores at least as high as the positive.

    Args:
        anchor: (n_rows,) anchor of each row.
        score: (n_rows,) the score (e.g. a judge's relevance) of each row.
        label: (n_rows,) 1 for given positives.
        window: (n_rows,) label-0 rows of the scored window.
        tail: (n_rows,) tail samples.
        n_docs: size of the pool.

    Example:
        >>> stratified_p_values(np.zeros(4, np.int64), np.array([0.5, 0.9, 0.1, 0.2]),
        ...                     np.array([1, 0, 0, 0]), np.array([False, True, False, False]),
        ...                     np.array([False, False, True, True]), n_docs=11).round(3).tolist()
        [0.167]
    """
    positive = label == 1
    key = anchor.astype(np.float64) * 4.0 + np.clip(np.nan_to_num(score.astype(np.float64)), 0.0, 1.0)
    n_anchors = int(anchor.max(initial=-1)) + 1
    counts = []
    for stratum in (window, tail):
        keys = np.sort(key[stratum])
        start = np.searchsorted(keys, key[positive], side="left")
        end = np.searchsorted(keys, anchor[positive].astype(np.float64) * 4.0 + 2.0, side="left")
        counts.append((end - start, np.bincount(anchor[stratum], minlength=n_anchors)[anchor[positive]]))
    (above_window, n_window), (above_tail, n_tail) = counts
    weight = np.maximum(n_docs - n_window, 0) / np.maximum(n_tail, 1)
    return np.minimum(1.0, (1.0 + above_window + weight * above_tail) / (1.0 + n_docs))
