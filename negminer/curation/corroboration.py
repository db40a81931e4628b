"""Corroboration: a given positive that a near-neighbour anchor names too is no random document.

The false-positive check (:mod:`negminer.curation.null`) asks whether a given positive looks
like a random document of the corpus. Some relevant positives do to the embeddings (their
evidence is deep in a long abstract), and the check alone cannot tell them from wrong ones.
A second, independent label can: when one of the anchor's nearest other anchors (a
paraphrase, a negated claim, the same question asked again) has the same document as a given
positive, the two labels agree. A random document would be a positive of one of the anchor's
``k`` nearest anchors only by chance: with ``m`` other anchors naming the document among
``n`` anchor families, about ``1 - (1 - k/n)^m``. Relevant positives are corroborated at the
rate the fitted positives show (``corroborated_share``). A corroborated positive's confidence
of being a random document is scaled by the ratio of the two (capped at 1): Bayes' likelihood
ratio of the observation, applied as ``false_positive_max_share`` scales confidences. It stays
flagged (and in the audit queue) when its p-value says so; only the confidence, and so the
action, changes.
"""

from __future__ import annotations

import numpy as np

from negminer.curation.rows import ROW_BATCH, PairRows, Positives, family_owner_counts, neighbors_naming


def corroborated_positives(
    rows: PairRows, positives: Positives, neighbors: np.ndarray, *, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which given positives one of their anchor's `k` nearest other anchors names too, and the chance of that.

    Args:
        rows: the scored rows; only label-1 rows (given positives) can be corroborated.
        positives: every given positive of the pool (:func:`negminer.curation.rows.group_positives`).
        neighbors: (n_anchors, >= k) nearest other anchors by similarity, -1 padded
            (:func:`negminer.curation.context.anchor_neighbors`).
        k: how many of the nearest anchors count (0: none).

    Returns:
        (corroborated bool per row, chance float per row: the probability that a random
        document with this document's other owners would be corroborated).
    """
    corroborated = np.zeros(len(rows.anchor), bool)
    chance = np.ones(len(rows.anchor))
    k = min(k, neighbors.shape[1])
    is_pos = np.nonzero(rows.label == 1)[0]
    if k == 0 or len(is_pos) == 0:
        return corroborated, chance
    owners = family_owner_counts(positives)
    nearest = neighbors[:, :k]
    n_families = max(len(np.unique(positives.family)), 1)
    for first in range(0, len(is_pos), ROW_BATCH):
        part = is_pos[first : first + ROW_BATCH]
        corroborated[part] = neighbors_naming(rows.anchor[part], rows.doc[part], positives, nearest).any(axis=1)
        others = np.maximum(owners[rows.doc[part]] - 1, 0)
        chance[part] = 1.0 - (1.0 - min(1.0, k / n_families)) ** others
    return corroborated, chance


def corroboration_scale(corroborated: np.ndarray, chance: np.ndarray, share: float) -> np.ndarray:
    """(n,) the factor each given positive's confidence is scaled by: chance / share where
    corroborated (capped at 1), 1 elsewhere.

    Example:
        >>> corroboration_scale(np.array([True, False]), np.array([0.01, 0.01]), 0.5).tolist()
        [0.02, 1.0]
    """
    if share <= 0:
        return np.ones(len(corroborated))
    return np.where(corroborated, np.minimum(1.0, chance / share), 1.0)
