"""Near-duplicates between an anchor's positives and its candidate negatives.

Contract of :func:`positive_similarity`: for each row, the highest cosine between the row's
document and any given positive of the row's anchor other than the document itself (NaN for
a positive row of an anchor with a single positive). A candidate at or above the threshold is
a near-duplicate of a positive (a paraphrase, another version of the same abstract, the same
text with different markup): it can never be a true negative of that anchor. Texts that
normalise to the same string are already excluded by the search (``same_text_as_positive``).
"""

from __future__ import annotations

import numpy as np

from negminer.curation.rows import ROW_BATCH, PairRows, Positives, expand_positives, segment_max
from negminer.mining.vectors import gather_order


def positive_similarity(rows: PairRows, positives: Positives, doc_vectors: np.ndarray) -> np.ndarray:
    """(n_rows,) float32: cosine to the closest other positive of the row's anchor.

    Example:
        >>> sim = positive_similarity(rows, positives, doc_vectors)  # doctest: +SKIP
    """
    out = np.full(len(rows.anchor), np.nan, np.float32)
    # every positive of the rows' anchors once, then the rows' documents in doc order: a gathered
    # row of a memory-mapped pool costs a page fault unless a neighbouring row was just read
    positive_docs = np.unique(expand_positives(np.unique(rows.anchor), positives)[2])
    positive_vectors = doc_vectors[positive_docs]
    order = gather_order(rows.doc)
    for first in range(0, len(rows.anchor), ROW_BATCH):
        part = order[first : first + ROW_BATCH]
        owner, _, pos_doc = expand_positives(rows.anchor[part], positives)
        other = pos_doc != rows.doc[part][owner]
        row_vectors = doc_vectors[rows.doc[part]][owner]
        sims = np.einsum("ij,ij->i", row_vectors, positive_vectors[np.searchsorted(positive_docs, pos_doc)])
        best = segment_max(np.where(other, sims, -np.inf), owner, len(part))
        out[part] = np.where(np.isfinite(best), best, np.nan)
    return out


def near_duplicates(
    rows: PairRows, positives: Positives, doc_vectors: np.ndarray, *, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates whose cosine to one of their anchor's positives is at least `threshold`.

    Returns:
        (is_near_duplicate (n_rows,) bool, similarity (n_rows,) float32).

    Example:
        >>> flags, sims = near_duplicates(rows, positives, doc_vectors, threshold=0.95)  # doctest: +SKIP
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sims = positive_similarity(rows, positives, doc_vectors)
    flags = (rows.label == 0) & (np.nan_to_num(sims, nan=-1.0) >= threshold)
    return flags, sims
