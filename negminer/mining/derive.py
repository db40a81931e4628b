"""Helpers between a stored candidate table and the tables a dataset version publishes.

The selection itself is :func:`negminer.mining.streaming.derive_files` (shared by ``mine``
and ``refilter``); this module holds what it and the select stage build on: the option names
:func:`negminer.mining.strategies.select_negatives` takes from the config
(:data:`SELECT_OPTIONS`), the columns selection adds (:data:`DERIVED_COLUMNS`), the manifest's
score quantiles (:data:`QUANTILES`), the ids added to published candidates (:func:`with_ids`),
the pairs' cosine (:func:`with_pair_scores`) and the docs' normalised-text groups
(:func:`text_groups`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Columns selection adds to the candidate table; dropped again before re-selecting.
DERIVED_COLUMNS = (
    "anchor_id",
    "doc_id",
    "score_minus_positive",
    "reason",
    "negative_slot",
    "difficulty",
    "cross_encoder_score",
    "cross_encoder_positive_score",
)
# SelectionConfig fields that select_negatives takes as keyword options (none has a default there).
SELECT_OPTIONS = frozenset(
    {
        "num_negatives",
        "range_min",
        "range_max",
        "min_score",
        "max_score",
        "min_score_percentile",
        "max_score_percentile",
        "absolute_margin",
        "relative_margin",
        "semi_hard_margin",
        "sampling_strategy",
        "simans_a",
        "simans_b",
        "seed",
    }
)


def text_groups(docs: pa.Table) -> np.ndarray | None:
    """(n_docs,) id of each doc's normalised text (its ``text_key``), or None without keys."""
    if "text_key" not in docs.column_names:
        return None
    keys = docs.column("text_key").combine_chunks()
    return pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def with_pair_scores(pairs: pa.Table, anchor_vectors: np.ndarray, doc_vectors: np.ndarray) -> pa.Table:
    """`pairs` with a ``score`` column: the cosine of each (anchor, positive) pair.

    Args:
        pairs: table with ``anchor_idx`` and ``doc_idx``.
        anchor_vectors: (n_anchors, dim) normalised float32.
        doc_vectors: (n_docs, dim) normalised float32.
    """
    from negminer.mining.search import positive_scores

    scores = positive_scores(
        anchor_vectors,
        doc_vectors,
        pairs.column("anchor_idx").to_numpy(),
        pairs.column("doc_idx").to_numpy(),
    )
    if "score" in pairs.column_names:
        pairs = pairs.drop_columns(["score"])
    return pairs.append_column("score", pa.array(scores, pa.float32()))


def with_ids(candidates: pa.Table, anchors: pa.Table, docs: pa.Table) -> pa.Table:
    """Add ``anchor_id`` / ``doc_id`` (first columns) and ``score_minus_positive``."""
    anchor_idx = candidates.column("anchor_idx")
    doc_idx = candidates.column("doc_idx")
    out = candidates.add_column(0, "anchor_id", anchors.column("anchor_id").take(anchor_idx))
    out = out.add_column(1, "doc_id", docs.column("doc_id").take(doc_idx))
    margin = pc.subtract(out.column("score"), out.column("positive_score"))
    return out.append_column("score_minus_positive", margin)
