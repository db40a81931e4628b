"""What every anchor's features need from the whole pool: built once, shared by every shard.

Contract of :func:`pool_context`: from the candidate table (read in batches), the anchor
vectors, the anchors' families and the documents' texts it returns a :class:`PoolContext`:
each anchor's nearest other anchors (outside its family), every retrieved (document, score)
as one sorted key (how many anchors retrieved a document with a higher score), how many
anchors retrieved each document, and the pool's BM25 statistics. Everything else a feature
needs comes from the anchor's own rows, so a shard of anchors is described exactly as it
would be in one pass over all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from negminer.config import CurateConfig
from negminer.curation.lexical import LexicalStats, TextSource, lexical_stats


class PoolContext(NamedTuple):
    neighbors: np.ndarray  # (n_anchors, k) int64 nearest other anchors, -1 padded
    neighbor_sims: np.ndarray  # (n_anchors, k) float32 their cosines
    reverse_keys: np.ndarray  # sorted doc_idx * 4 + (score + 1.5) of every candidate row, float64
    doc_hubness: np.ndarray  # (n_docs,) int64 candidate rows naming each document
    lexical: LexicalStats


def pool_context(
    candidate_batches: Iterable[pa.Table],
    *,
    anchor_vectors: np.ndarray,
    family: np.ndarray,
    doc_texts: TextSource,
    config: CurateConfig,
) -> PoolContext:
    """The shared context of every anchor's features (see the module docstring).

    The nearest anchors are searched exactly up to ``config.neighbor_exact_max_anchors``
    anchors, above it with an IVF index tuned to ``config.neighbor_min_recall``.
    """
    from negminer.curation.features import anchor_neighbors

    n_docs = len(doc_texts)
    keys, hubness = [], np.zeros(n_docs, np.int64)
    for batch in candidate_batches:
        doc = batch.column("doc_idx").to_numpy().astype(np.int64)
        keys.append(doc * 4.0 + (batch.column("score").to_numpy().astype(np.float64) + 1.5))
        hubness += np.bincount(doc, minlength=n_docs)
    reverse_keys = np.concatenate(keys) if keys else np.zeros(0)
    reverse_keys.sort()
    neighbors, neighbor_sims = anchor_neighbors(
        anchor_vectors,
        family,
        k=config.neighbor_anchors,
        exact_max_anchors=config.neighbor_exact_max_anchors,
        min_recall=config.neighbor_min_recall,
        seed=config.seed,
    )
    return PoolContext(neighbors, neighbor_sims, reverse_keys, hubness, lexical_stats(doc_texts))
