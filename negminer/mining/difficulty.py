"""Difficulty tiers of candidates (easy, medium, hard) and the curriculum stages built on them.

Definition. A candidate's difficulty is its margin to the anchor's positive, ``score −
positive_score`` (the ``score_minus_positive`` column; positive-aware, as NV-Retriever's
TopK-MarginPos and TopK-PercPos rules and SimANS's peak are), placed against this run's
calibrated quantiles of that margin over every retrieved candidate that is not a known
positive:

* ``easy``: margin below the ``difficulty_medium_quantile`` quantile (default 0.5);
* ``medium``: from there up to the ``difficulty_hard_quantile`` quantile (default 0.9);
* ``hard``: at or above it (the candidates closest to, or above, the positive: the
  informative negatives of ANCE and of hard-negative mining, and where most unlabelled
  positives sit).

The margin makes tiers comparable across anchors (a score of 0.6 is hard for an anchor whose
positive scores 0.62, easy for one at 0.95); the quantiles make them comparable across models
(each model has its own score scale), so a re-mined version's tiers mean the same share of
the pool. Known positives have no tier (null).

The quantiles are exact (:class:`negminer.mining.quantiles.StreamedQuantiles`, two passes
over three columns of the candidate file, memory independent of its rows), so the thresholds,
and every tier, depend only on the candidates, not on batch or shard sizes.

Stages: a training-view row's stage is the tier of its hardest negative (a triplet's own
negative; an n-tuple's or labeled-list's hardest), :data:`STAGE_STEMS` the files, easy first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negminer.mining.quantiles import StreamedQuantiles

TIERS = ("easy", "medium", "hard")
NO_TIER = -1  # a known positive, or a missing negative
DIFFICULTY = "difficulty"
# The curriculum's files, in training order; each holds the training-view rows of one tier.
STAGE_STEMS = tuple(f"curriculum-{i + 1}-{tier}" for i, tier in enumerate(TIERS))
_COLUMNS = ["score", "positive_score", "is_positive"]


class DifficultyThresholds(NamedTuple):
    """Margins (``score − positive_score``) from which a candidate is medium / hard; None without candidates."""

    medium: float | None
    hard: float | None

    def to_json(self) -> dict[str, Any]:
        return {"medium": self.medium, "hard": self.hard}


def difficulty_thresholds(
    batches: Iterator[pa.RecordBatch | pa.Table] | list[pa.RecordBatch | pa.Table],
    second_batches: Iterator[pa.RecordBatch | pa.Table] | list[pa.RecordBatch | pa.Table],
    *,
    medium_quantile: float,
    hard_quantile: float,
) -> DifficultyThresholds:
    """The run's tier thresholds from two passes over the same candidate batches.

    Args:
        batches: batches with ``score``, ``positive_score`` and ``is_positive`` (first pass).
        second_batches: the same batches again, in any order (second pass).
        medium_quantile, hard_quantile: quantiles (0–1) of the non-positive candidates' margins.

    Example:
        >>> t = difficulty_thresholds([table], [table], medium_quantile=0.5, hard_quantile=0.9)  # doctest: +SKIP
        >>> t.medium < t.hard  # doctest: +SKIP
        True
    """
    sketch = StreamedQuantiles((medium_quantile, hard_quantile))
    for batch in batches:
        sketch.first(_margins(batch))
    if sketch.count == 0:
        return DifficultyThresholds(None, None)
    for batch in second_batches:
        sketch.second(_margins(batch))
    medium, hard = sketch.values()
    return DifficultyThresholds(medium, hard)


def file_thresholds(
    path: str | Path, *, medium_quantile: float, hard_quantile: float, batch_rows: int
) -> DifficultyThresholds:
    """:func:`difficulty_thresholds` of a candidate file, read `batch_rows` rows at a time."""

    def read() -> Iterator[pa.RecordBatch]:
        return pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=_COLUMNS)

    return difficulty_thresholds(read(), read(), medium_quantile=medium_quantile, hard_quantile=hard_quantile)


def _margins(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """float32 margins of the batch's non-positive candidates (the values ``with_ids`` publishes)."""
    margin, positive = _margin_and_positive(batch)
    return margin[~positive & ~np.isnan(margin)]


def _margin_and_positive(table: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(table.column("score").to_numpy(zero_copy_only=False), np.float32)
    positive_score = np.asarray(table.column("positive_score").to_numpy(zero_copy_only=False), np.float32)
    positive = table.column("is_positive").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    return score - positive_score, positive


def tier_codes(margin: np.ndarray, is_positive: np.ndarray, thresholds: DifficultyThresholds) -> np.ndarray:
    """(n,) int8 tier index into :data:`TIERS` per candidate; :data:`NO_TIER` for positives and NaN."""
    codes = np.full(len(margin), NO_TIER, np.int8)
    if thresholds.medium is None:
        return codes
    margin = np.asarray(margin, np.float64)
    valid = ~np.asarray(is_positive, bool) & ~np.isnan(margin)
    codes[valid] = (margin[valid] >= thresholds.medium).astype(np.int8) + (margin[valid] >= thresholds.hard)
    return codes


def tier_names(codes: np.ndarray) -> pa.Array:
    """A string column of tier names, null where the code is :data:`NO_TIER`."""
    codes = np.asarray(codes)
    indices = pa.array(np.clip(codes, 0, None).astype(np.int8), mask=codes == NO_TIER)
    return pa.array(TIERS, pa.string()).take(indices)


def candidate_tiers(candidates: pa.Table, thresholds: DifficultyThresholds) -> np.ndarray:
    """(rows,) tier codes of a candidate table with ``score``, ``positive_score``, ``is_positive``."""
    margin, positive = _margin_and_positive(candidates)
    return tier_codes(margin, positive, thresholds)


def with_difficulty(candidates: pa.Table, codes: np.ndarray) -> pa.Table:
    """`candidates` with its ``difficulty`` column (last) from the codes."""
    return candidates.append_column(DIFFICULTY, tier_names(codes))


def fill_tier_grid(tiers: np.ndarray, anchor: np.ndarray, slot: np.ndarray, codes: np.ndarray) -> None:
    """Put the chosen negatives' codes at (anchor, slot − 1) of the (n_anchors, num_negatives) grid."""
    tiers[np.asarray(anchor, np.int64), np.asarray(slot, np.int64) - 1] = codes


def tier_counts(codes: np.ndarray) -> dict[str, int]:
    """Candidates per tier (every tier named, zeros kept)."""
    counts = np.bincount(codes[codes != NO_TIER].astype(np.int64), minlength=len(TIERS))
    return {tier: int(n) for tier, n in zip(TIERS, counts, strict=True)}
