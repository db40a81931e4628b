"""From a stored candidate table to the tables a dataset version publishes.

One function, :func:`derive_dataset`, shared by ``mine`` (the select stage) and ``refilter``
(a new version from an old version's candidate table, without embedding or searching again),
so both give the same bytes for the same candidates and settings.

Tables it returns: ``triplets`` (the training view, :mod:`negminer.mining.formats`),
``candidates`` (every retrieved candidate with ``anchor_id``, ``doc_id``, raw ``rank``,
``score``, ``positive_score``, ``score_minus_positive``, ``reason`` and ``negative_slot``) and,
with ``output_scores``, ``scored`` (the training view plus scores).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import MineConfig
from negminer.mining.formats import (
    negative_scores_by_anchor,
    negatives_by_anchor,
    scored_view,
    training_view,
)
from negminer.mining.strategies import calibrated_bounds, select_negatives, stable_hash64

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Columns derive_dataset adds to the candidate table; dropped again before re-selecting.
DERIVED_COLUMNS = ("anchor_id", "doc_id", "score_minus_positive", "reason", "negative_slot")
# MineConfig fields that select_negatives takes as keyword options.
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


class Derived(NamedTuple):
    tables: dict[str, pa.Table]
    counts: dict[str, Any]
    score_quantiles: dict[str, dict[str, float]]
    selection: dict[str, Any]


def derive_dataset(
    candidates: pa.Table,
    *,
    anchors: pa.Table,
    docs: pa.Table,
    pairs: pa.Table,
    config: MineConfig,
) -> Derived:
    """Select negatives from `candidates` and build the tables of a dataset version.

    Args:
        candidates: candidate table (:mod:`negminer.mining.search`), possibly one already
            published (its derived columns are recomputed) and possibly with curation's
            ``flagged_false_negative`` / ``excluded_by_audit`` columns.
        anchors: ``anchor_id`` and ``text`` by anchor_idx.
        docs: ``doc_id`` and ``text`` by doc_idx; with ``text_key`` (normalised-text key),
            an anchor never gets two documents of the same text as negatives.
        pairs: ``anchor_idx``, ``doc_idx`` in output order; an optional ``score`` column (the
            pair's cosine) feeds the scored view, else the anchor's lowest positive score.
        config: the selection settings.

    Returns:
        Derived(tables, counts for the manifest, score quantiles, effective thresholds).

    Example:
        >>> derived = derive_dataset(cands, anchors=a, docs=d, pairs=p, config=MineConfig())  # doctest: +SKIP
        >>> derived.tables["triplets"].column_names  # doctest: +SKIP
        ['anchor', 'positive', 'negative']
    """
    base = candidates.drop_columns([c for c in DERIVED_COLUMNS if c in candidates.column_names])
    options = config.model_dump(include=SELECT_OPTIONS)
    selection = select_negatives(
        base,
        anchor_hash=stable_hash64(anchors.column("anchor_id").to_pylist()),
        doc_hash=stable_hash64(docs.column("doc_id").to_pylist()),
        doc_text_group=text_groups(docs),
        **options,
    )
    published = with_ids(selection.candidates, anchors, docs)
    chosen = published.filter(pc.is_valid(published.column("negative_slot")))
    tables = _views(published, chosen, anchors, docs, pairs, config)
    counts = {
        "triplet_rows": tables["triplets"].num_rows,
        "negatives": chosen.num_rows,
        "anchors_short": selection.anchors_short,
        "dropped_by_reason": selection.reason_counts,
    }
    low, high = calibrated_bounds(
        base,
        min_score_percentile=config.min_score_percentile,
        max_score_percentile=config.max_score_percentile,
    )
    thresholds = {"min_score_from_percentile": low, "max_score_from_percentile": high}
    return Derived(tables, counts, score_quantiles(published, chosen), thresholds)


def text_groups(docs: pa.Table) -> np.ndarray | None:
    """(n_docs,) id of each doc's normalised text (its ``text_key``), or None without keys."""
    if "text_key" not in docs.column_names:
        return None
    keys = docs.column("text_key").combine_chunks()
    return pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _views(
    published: pa.Table,
    chosen: pa.Table,
    anchors: pa.Table,
    docs: pa.Table,
    pairs: pa.Table,
    config: MineConfig,
) -> dict[str, pa.Table]:
    n_anchors, k = anchors.num_rows, config.num_negatives
    grid = negatives_by_anchor(chosen, n_anchors, k)
    anchor_texts, doc_texts = anchors.column("text"), docs.column("text")
    view = training_view(pairs, anchor_texts, doc_texts, grid, output_format=config.output_format)
    tables = {"triplets": view, "candidates": published}
    if config.output_scores:
        tables["scored"] = scored_view(
            pairs,
            anchor_texts,
            doc_texts,
            grid,
            pair_scores=_pair_scores(pairs, published, n_anchors),
            negative_scores=negative_scores_by_anchor(chosen, n_anchors, k),
            output_format=config.output_format,
        )
    return tables


def _pair_scores(pairs: pa.Table, candidates: pa.Table, n_anchors: int) -> np.ndarray:
    """Cosine of each pair: the pairs' ``score`` column, else the anchor's positive score."""
    if "score" in pairs.column_names:
        return pairs.column("score").to_numpy()
    lowest = np.full(n_anchors, np.nan, np.float32)
    lowest[candidates.column("anchor_idx").to_numpy()] = candidates.column("positive_score").to_numpy()
    return lowest[pairs.column("anchor_idx").to_numpy()]


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


def score_quantiles(candidates: pa.Table, chosen: pa.Table) -> dict[str, dict[str, float]]:
    """Quantiles of the chosen negatives', all candidates' and retrieved positives' scores."""

    def q(values: np.ndarray) -> dict[str, float]:
        if len(values) == 0:
            return {}
        return {f"q{round(p * 100):02d}": round(float(np.quantile(values, p)), 4) for p in QUANTILES}

    positive = candidates.filter(candidates.column("is_positive"))
    return {
        "negative": q(chosen.column("score").to_numpy()),
        "candidate": q(candidates.column("score").to_numpy()),
        "positive_retrieved": q(positive.column("score").to_numpy()),
    }
