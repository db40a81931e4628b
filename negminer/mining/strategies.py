"""Choose negatives from a stored candidate table.

Contract: :func:`select_negatives` takes the candidate table of :mod:`negminer.mining.search`
(plus ``anchor_id`` / ``doc_id`` columns for seeded sampling) and returns it with two more
columns: ``reason`` (why the candidate was kept or dropped, one of :data:`REASONS`) and
``negative_slot`` (1..num_negatives for chosen negatives, null otherwise). The first
applicable reason wins, in the order of :data:`REASONS`.

Windows and bounds use sentence-transformers' option names. ``range_min`` / ``range_max``
count *raw* ranks (positives included), so a setting means the same thing whatever the
anchor's number of positives; sentence-transformers counts them among the survivors instead.
Margins compare against the anchor's lowest-scoring positive: ``absolute_margin`` keeps
``score <= positive_score - m``, ``relative_margin`` keeps ``score <= positive_score * (1 - m)``
(for a negative positive score the bound is ``positive_score * (1 + m)``, so it stays below it).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from negminer.config import SamplingStrategy

REASONS = (
    "positive",
    "same_text_as_positive",
    "same_text_as_anchor",
    "below_range_min",
    "above_range_max",
    "above_max_score",
    "below_min_score",
    "absolute_margin",
    "relative_margin",
    "surplus",
    "selected",
)


class Selection(NamedTuple):
    candidates: pa.Table
    reason_counts: dict[str, int]
    anchors_short: int


def stable_hash64(ids: list[str]) -> np.ndarray:
    """A 64-bit hash of each id string, the same on every machine and run."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids),
        np.uint64,
        len(ids),
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def pair_priority(anchor_hash: np.ndarray, doc_hash: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random priority per (anchor id, doc id) pair, independent of row order."""
    with np.errstate(over="ignore"):
        mixed = _splitmix64(doc_hash ^ _splitmix64(np.full_like(doc_hash, seed, np.uint64)))
        return _splitmix64(anchor_hash ^ mixed)


def select_negatives(
    candidates: pa.Table,
    *,
    anchor_hash: np.ndarray,
    doc_hash: np.ndarray,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    sampling_strategy: SamplingStrategy = "top",
    seed: int = 12,
) -> Selection:
    """Mark each candidate selected or dropped (with the reason) and number the negatives.

    Args:
        candidates: candidate table (n rows) sorted by anchor then rank.
        anchor_hash: (n_anchors,) :func:`stable_hash64` of each anchor id, by anchor_idx.
        doc_hash: (n_docs,) :func:`stable_hash64` of each doc id, by doc_idx.
        num_negatives: negatives per anchor.
        range_min, range_max: raw-rank window ``[range_min, range_max)``.
        min_score, max_score: absolute cosine bounds.
        absolute_margin, relative_margin: positive-aware bounds (see module docstring).
        sampling_strategy: ``top`` takes the best-scoring eligible candidates, ``random`` a
            seeded sample of them.
        seed: sampling seed.

    Returns:
        Selection(candidates with ``reason`` and ``negative_slot``, count per reason,
        number of anchors with fewer than `num_negatives` negatives).

    Example:
        >>> sel = select_negatives(cands, anchor_hash=ah, doc_hash=dh, num_negatives=5)  # doctest: +SKIP
    """
    col = {name: candidates.column(name).to_numpy() for name in candidates.column_names if name in _NUMERIC}
    reason = _drop_reasons(
        col,
        range_min=range_min,
        range_max=range_max,
        min_score=min_score,
        max_score=max_score,
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
    )
    eligible = reason == len(REASONS) - 1
    anchor = col["anchor_idx"]
    if sampling_strategy == "top":
        priority = col["rank"].astype(np.uint64)
    else:
        priority = pair_priority(anchor_hash[anchor], doc_hash[col["doc_idx"]], seed)
    slot = _slots(anchor, priority, eligible)
    reason = np.where(eligible & (slot > num_negatives), REASONS.index("surplus"), reason)
    slot = np.where(eligible & (slot <= num_negatives), slot, 0)
    out = candidates.append_column("reason", pa.array(np.asarray(REASONS, dtype=object)[reason], pa.string()))
    out = out.append_column("negative_slot", pa.array(slot.astype(np.int16), mask=slot == 0))
    counts = Counter(dict(zip(REASONS, np.bincount(reason, minlength=len(REASONS)).tolist(), strict=True)))
    per_anchor = np.bincount(anchor[slot > 0], minlength=int(anchor.max(initial=-1)) + 1)
    short = int(np.sum(per_anchor[np.unique(anchor)] < num_negatives)) if len(anchor) else 0
    return Selection(out, {k: v for k, v in counts.items() if v}, short)


_NUMERIC = {
    "anchor_idx",
    "doc_idx",
    "rank",
    "score",
    "positive_score",
    "is_positive",
    "same_text_as_positive",
    "same_text_as_anchor",
}


def _drop_reasons(
    col: dict[str, np.ndarray],
    *,
    range_min: int,
    range_max: int | None,
    min_score: float | None,
    max_score: float | None,
    absolute_margin: float | None,
    relative_margin: float | None,
) -> np.ndarray:
    """Index into REASONS of the first reason that drops each row ("selected" if none)."""
    score, pos, rank = col["score"], col["positive_score"], col["rank"]
    rules = [
        col["is_positive"],
        col["same_text_as_positive"],
        col["same_text_as_anchor"],
        rank < range_min,
        rank >= range_max if range_max is not None else None,
        score > max_score if max_score is not None else None,
        score < min_score if min_score is not None else None,
        score > pos - absolute_margin if absolute_margin is not None else None,
        score > relative_bound(pos, relative_margin) if relative_margin is not None else None,
    ]
    reason = np.full(len(score), len(REASONS) - 1, np.int64)
    for code in range(len(rules) - 1, -1, -1):
        if rules[code] is not None:
            reason = np.where(rules[code], code, reason)
    return reason


def relative_bound(positive_score: np.ndarray, margin: float) -> np.ndarray:
    """Highest allowed negative score: ``pos·(1−m)``, or ``pos·(1+m)`` when pos < 0."""
    return np.where(positive_score >= 0, positive_score * (1 - margin), positive_score * (1 + margin))


def _slots(anchor: np.ndarray, priority: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """1-based position of each eligible row among its anchor's eligible rows, by priority."""
    order = np.lexsort((priority, ~eligible, anchor))
    sorted_anchor, sorted_eligible = anchor[order], eligible[order]
    starts = np.r_[True, sorted_anchor[1:] != sorted_anchor[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    position = np.arange(len(order)) - group_start + 1
    slot = np.zeros(len(order), np.int64)
    slot[order] = np.where(sorted_eligible, position, 0)
    return slot
