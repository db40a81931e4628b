"""Choose negatives from a stored candidate table.

Contract: :func:`select_negatives` takes the candidate table of :mod:`negminer.mining.search`
and returns it with two more columns: ``reason`` (why the candidate was kept or dropped, one
of :data:`REASONS`) and ``negative_slot`` (1..num_negatives for chosen negatives, null
otherwise). The first applicable reason wins, in the order of :data:`REASONS`:

1. ``positive``, ``same_text_as_positive``, ``same_text_as_anchor``: never a negative.
2. ``false_negative`` (optional bool column ``flagged_false_negative``, set by curation) and
   ``audit_decision`` (optional bool column ``excluded_by_audit``): dropped, so the next valid
   candidate takes their place. A null flag counts as False.
   ``duplicate_text``: the same normalised text as a better-ranked candidate of the anchor
   (given ``doc_text_group``), so an anchor never gets one document twice under two ids.
3. ``below_range_min`` / ``above_range_max``: the raw-rank window ``[range_min, range_max)``.
4. ``above_max_score`` / ``below_min_score``: absolute cosine bounds.
5. ``above_max_score_percentile`` / ``below_min_score_percentile``: bounds given as
   percentiles of this run's positive scores (:func:`calibrated_bounds`).
6. ``absolute_margin``, ``relative_margin``, ``semi_hard_band``: positive-aware rules.
7. ``surplus``: eligible but not sampled; ``selected``: a chosen negative.

Windows and bounds use sentence-transformers' option names. ``range_min`` / ``range_max``
count *raw* ranks (positives included), so a setting means the same thing whatever the
anchor's number of positives; sentence-transformers counts the survivors of its filters
instead (docs/strategies.md gives the translation). Margins compare against the anchor's
lowest-scoring positive, exactly as sentence-transformers does: ``absolute_margin`` drops
``score + m > positive_score``, ``relative_margin`` drops ``score > positive_score −
|positive_score|·m`` (sign-safe: the bound stays below the positive), ``semi_hard_margin`` keeps
``positive_score − m <= score < positive_score`` (FaceNet's semi-hard band).

With the optional columns ``cross_encoder_score`` and ``cross_encoder_positive_score``
(:mod:`negminer.mining.rescore`), rules 4 and 6 and the ``top`` order read the cross-encoder's
scores instead of the cosines, as sentence-transformers does with its ``cross_encoder``.

Sampling is seeded by a hash of (anchor id, candidate id, seed), never global random state:
``top`` takes the best-ranked eligible candidates, ``random`` a uniform sample, ``simans`` a
weighted sample without replacement with weight ``exp(−a·(score − positive_score − b)²)``
(SimANS, Zhou et al. 2022), drawn with exponential clocks so that it is row-order independent.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import SamplingStrategy

REASONS = (
    "positive",
    "same_text_as_positive",
    "same_text_as_anchor",
    "false_negative",
    "audit_decision",
    "duplicate_text",
    "below_range_min",
    "above_range_max",
    "above_max_score",
    "below_min_score",
    "above_max_score_percentile",
    "below_min_score_percentile",
    "absolute_margin",
    "relative_margin",
    "semi_hard_band",
    "surplus",
    "selected",
)
SELECTED = len(REASONS) - 1
SURPLUS = REASONS.index("surplus")
FLAG_COLUMNS = {"flagged_false_negative": "false_negative", "excluded_by_audit": "audit_decision"}
# Optional (score, positive score) of a cross-encoder that the score rules read instead of the cosines.
CROSS_ENCODER_COLUMNS = ("cross_encoder_score", "cross_encoder_positive_score")
SAMPLING_STRATEGIES = ("top", "random", "simans")


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
    num_negatives: int,
    range_min: int,
    range_max: int | None,
    min_score: float | None,
    max_score: float | None,
    absolute_margin: float | None,
    relative_margin: float | None,
    sampling_strategy: SamplingStrategy,
    seed: int,
    min_score_percentile: float | None,
    max_score_percentile: float | None,
    semi_hard_margin: float | None,
    simans_a: float,
    simans_b: float,
    doc_text_group: np.ndarray | None = None,
    percentile_bounds: tuple[float | None, float | None] | None = None,
) -> Selection:
    """Mark each candidate selected or dropped (with the reason) and number the negatives.

    Every option is required (defaults live in ``MineConfig`` only); a config passes its own as
    ``**config.model_dump(include=SELECT_OPTIONS)`` (:data:`negminer.mining.derive.SELECT_OPTIONS`).

    Args:
        candidates: candidate table (n rows), any row order; optional bool columns
            ``flagged_false_negative`` and ``excluded_by_audit`` drop their rows.
        anchor_hash: (n_anchors,) :func:`stable_hash64` of each anchor id, by anchor_idx.
        doc_hash: (n_docs,) :func:`stable_hash64` of each doc id, by doc_idx.
        num_negatives: negatives per anchor.
        range_min, range_max: raw-rank window ``[range_min, range_max)``.
        min_score, max_score: absolute cosine bounds.
        absolute_margin, relative_margin: positive-aware bounds (see module docstring).
        sampling_strategy: ``top`` takes the best-ranked eligible candidates, ``random`` a
            seeded uniform sample of them, ``simans`` a seeded sample weighted towards
            ``positive_score + simans_b``.
        seed: sampling seed.
        min_score_percentile, max_score_percentile: bounds as percentiles (0–100) of the
            anchors' positive scores in this table.
        semi_hard_margin: keep only ``positive − m <= score < positive``.
        simans_a, simans_b: SimANS sharpness and offset.
        doc_text_group: (n_docs,) id of each doc's normalised text; when given, a candidate
            whose text a better-ranked candidate of the same anchor has is dropped.
        percentile_bounds: (min, max) scores that the percentile settings resolve to, when
            `candidates` is one batch of a larger table (computed over the whole table with
            :func:`calibrated_bounds`); None computes them from `candidates`.

    Returns:
        Selection(candidates with ``reason`` and ``negative_slot``, count per reason,
        number of anchors with fewer than `num_negatives` negatives).

    Example:
        >>> options = MineConfig(strategy="naive").model_dump(include=SELECT_OPTIONS)  # doctest: +SKIP
        >>> sel = select_negatives(cands, anchor_hash=ah, doc_hash=dh, **options)  # doctest: +SKIP
    """
    _validate(candidates, num_negatives, sampling_strategy, min_score_percentile, max_score_percentile)
    col = _columns(candidates)
    low, high = percentile_bounds or calibrated_bounds(
        candidates,
        min_score_percentile=min_score_percentile,
        max_score_percentile=max_score_percentile,
    )
    masks = _drop_masks(
        col,
        range_min=range_min,
        range_max=range_max,
        min_score=min_score,
        max_score=max_score,
        percentile_bounds=(low, high),
        absolute_margin=absolute_margin,
        relative_margin=relative_margin,
        semi_hard_margin=semi_hard_margin,
    )
    if doc_text_group is not None:
        masks["duplicate_text"] = duplicate_text_mask(col["anchor_idx"], doc_text_group[col["doc_idx"]], col["rank"])
    reason = _first_reason(masks, len(col["score"]))
    eligible = reason == SELECTED
    priority = _priority(col, anchor_hash, doc_hash, sampling_strategy, seed, simans_a, simans_b)
    slot = _slots(col["anchor_idx"], priority, eligible, col["rank"])
    reason = np.where(eligible & (slot > num_negatives), SURPLUS, reason)
    slot = np.where(eligible & (slot <= num_negatives), slot, 0)
    return _selection(candidates, col["anchor_idx"], reason, slot, num_negatives)


_NUMERIC = (
    "anchor_idx",
    "doc_idx",
    "rank",
    "score",
    "positive_score",
    "is_positive",
    "same_text_as_positive",
    "same_text_as_anchor",
)


def _validate(
    candidates: pa.Table,
    num_negatives: int,
    sampling_strategy: str,
    min_score_percentile: float | None,
    max_score_percentile: float | None,
) -> None:
    missing = [name for name in _NUMERIC if name not in candidates.column_names]
    if missing:
        raise ValueError(f"candidate table lacks columns {missing}: pass the table written by search_candidates")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    if sampling_strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"sampling_strategy must be one of {SAMPLING_STRATEGIES}, got {sampling_strategy!r}")
    for name, value in (("min", min_score_percentile), ("max", max_score_percentile)):
        if value is not None and not 0 <= value <= 100:
            raise ValueError(f"{name}_score_percentile must be within [0, 100], got {value}")


def _columns(candidates: pa.Table) -> dict[str, np.ndarray]:
    """The columns the rules read, as numpy arrays; absent or null flags read as False.

    ``rule_score`` / ``rule_positive`` are what the score bounds, margins and ``top`` order
    compare: the cross-encoder's scores when the table has them (:mod:`negminer.mining.rescore`;
    a row it did not score reads NaN), else the cosines.
    """
    col = {name: candidates.column(name).to_numpy() for name in _NUMERIC}
    rescored = CROSS_ENCODER_COLUMNS[0] in candidates.column_names
    rule_columns = CROSS_ENCODER_COLUMNS if rescored else ("score", "positive_score")
    for key, name in zip(("rule_score", "rule_positive"), rule_columns, strict=True):
        col[key] = candidates.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
    col["rescored"] = np.array(rescored)
    for name in FLAG_COLUMNS:
        if name in candidates.column_names:
            flag = pc.fill_null(candidates.column(name).cast(pa.bool_()), False)
            col[name] = flag.to_numpy()
    return col


def calibrated_bounds(
    candidates: pa.Table,
    *,
    min_score_percentile: float | None,
    max_score_percentile: float | None,
) -> tuple[float | None, float | None]:
    """(min_score, max_score) given as percentiles of the anchors' positive scores.

    The distribution is one value per anchor in `candidates`: its ``positive_score`` (the
    lowest cosine to any of its positives), so a percentile setting carries over between
    models whose score scales differ.

    Example:
        >>> calibrated_bounds(cands, min_score_percentile=None, max_score_percentile=50)  # doctest: +SKIP
        (None, 0.5731)
    """
    if min_score_percentile is None and max_score_percentile is None:
        return None, None
    anchor = candidates.column("anchor_idx").to_numpy()
    _, first = np.unique(anchor, return_index=True)
    positive = candidates.column("positive_score").to_numpy()[first]
    return percentile_bounds_of(
        positive, min_score_percentile=min_score_percentile, max_score_percentile=max_score_percentile
    )


def percentile_bounds_of(
    positive_scores: np.ndarray,
    *,
    min_score_percentile: float | None,
    max_score_percentile: float | None,
) -> tuple[float | None, float | None]:
    """(min_score, max_score) at the given percentiles of `positive_scores` (one per anchor).

    Args:
        positive_scores: (n_anchors,) each anchor's ``positive_score``, any order; values
            that are not finite (anchors without a retrieved positive score) are ignored.
    """
    positive = np.asarray(positive_scores).astype(np.float64)
    positive = positive[np.isfinite(positive)]

    def at(percentile: float | None) -> float | None:
        if percentile is None or len(positive) == 0:
            return None
        return float(np.percentile(positive, percentile))

    return at(min_score_percentile), at(max_score_percentile)


def _drop_masks(
    col: dict[str, np.ndarray],
    *,
    range_min: int,
    range_max: int | None,
    min_score: float | None,
    max_score: float | None,
    percentile_bounds: tuple[float | None, float | None],
    absolute_margin: float | None,
    relative_margin: float | None,
    semi_hard_margin: float | None,
) -> dict[str, np.ndarray]:
    """reason -> boolean mask of the rows the rule drops (rules that are off are absent)."""
    score, pos, rank = col["rule_score"], col["rule_positive"], col["rank"]
    low, high = percentile_bounds
    masks = {
        "positive": col["is_positive"],
        "same_text_as_positive": col["same_text_as_positive"],
        "same_text_as_anchor": col["same_text_as_anchor"],
        **{reason: col[name] for name, reason in FLAG_COLUMNS.items() if name in col},
        "below_range_min": rank < range_min,
    }
    optional = {
        "above_range_max": (range_max, lambda v: rank >= v),
        "above_max_score": (max_score, lambda v: score > v),
        "below_min_score": (min_score, lambda v: score < v),
        "above_max_score_percentile": (high, lambda v: score > v),
        "below_min_score_percentile": (low, lambda v: score < v),
        # the same expressions as sentence-transformers, so float32 boundaries agree
        "absolute_margin": (absolute_margin, lambda v: score + v > pos),
        "relative_margin": (relative_margin, lambda v: score > relative_bound(pos, v)),
        "semi_hard_band": (semi_hard_margin, lambda v: (score >= pos) | (score + v < pos)),
    }
    for reason, (value, rule) in optional.items():
        if value is not None:
            masks[reason] = rule(value)
    return masks


def duplicate_text_mask(anchor: np.ndarray, group: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """True for each row whose (anchor, text group) a lower-ranked row already has.

    Args:
        anchor, group, rank: (n,) anchor_idx, text group of the candidate, raw rank.
    """
    order = np.lexsort((rank, group, anchor))
    a, g = anchor[order], group[order]
    repeat = np.r_[False, (a[1:] == a[:-1]) & (g[1:] == g[:-1])]
    mask = np.zeros(len(order), bool)
    mask[order] = repeat
    return mask


def _first_reason(masks: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Index into REASONS of the first reason that drops each row (SELECTED if none)."""
    reason = np.full(n, SELECTED, np.int64)
    for code in range(len(REASONS) - 1, -1, -1):
        mask = masks.get(REASONS[code])
        if mask is not None:
            reason = np.where(mask, code, reason)
    return reason


def relative_bound(positive_score: np.ndarray, margin: float) -> np.ndarray:
    """Highest allowed negative score: ``pos − |pos|·m`` (``pos·(1−m)``, or ``pos·(1+m)`` if < 0)."""
    positive_score = np.asarray(positive_score)
    return positive_score - np.abs(positive_score) * margin


def _priority(
    col: dict[str, np.ndarray],
    anchor_hash: np.ndarray,
    doc_hash: np.ndarray,
    sampling_strategy: str,
    seed: int,
    simans_a: float,
    simans_b: float,
) -> np.ndarray:
    """Sort key per row: the lowest keys of an anchor's eligible rows are its negatives."""
    if sampling_strategy == "top":
        if col["rescored"]:  # the cross-encoder's order, best first; ties (and unscored rows) by rank
            return np.nan_to_num(-col["rule_score"].astype(np.float64), nan=np.inf)
        return col["rank"].astype(np.int64)
    hashed = pair_priority(anchor_hash[col["anchor_idx"]], doc_hash[col["doc_idx"]], seed)
    if sampling_strategy == "random":
        return hashed
    return simans_keys(hashed, col["score"], col["positive_score"], a=simans_a, b=simans_b)


def simans_keys(hashed: np.ndarray, score: np.ndarray, positive_score: np.ndarray, *, a: float, b: float) -> np.ndarray:
    """Exponential-clock keys for weighted sampling without replacement (lowest first).

    With ``u`` uniform from `hashed` and weight ``w = exp(−a·(score − positive − b)²)``, the
    key ``log(−log u) − log w`` orders rows like ``E / w`` with ``E ~ Exp(1)``, which draws
    rows in proportion to their weights (Efraimidis–Spirakis), independent of row order.

    Args:
        hashed: (n,) uint64 from :func:`pair_priority`.
        score, positive_score: (n,) cosine scores.
        a, b: SimANS sharpness and offset.
    """
    uniform = ((hashed >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    distance = score.astype(np.float64) - positive_score.astype(np.float64) - b
    return np.log(-np.log(uniform)) + a * distance**2


def _slots(anchor: np.ndarray, priority: np.ndarray, eligible: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """1-based position of each eligible row among its anchor's eligible rows, by priority."""
    order = np.lexsort((rank, priority, ~eligible, anchor))
    sorted_anchor, sorted_eligible = anchor[order], eligible[order]
    starts = np.r_[True, sorted_anchor[1:] != sorted_anchor[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    position = np.arange(len(order)) - group_start + 1
    slot = np.zeros(len(order), np.int64)
    slot[order] = np.where(sorted_eligible, position, 0)
    return slot


def _selection(candidates: pa.Table, anchor: np.ndarray, reason: np.ndarray, slot: np.ndarray, k: int) -> Selection:
    names = pa.array(np.asarray(REASONS, dtype=object)[reason], pa.string())
    out = candidates.append_column("reason", names)
    out = out.append_column("negative_slot", pa.array(slot.astype(np.int16), mask=slot == 0))
    counts = np.bincount(reason, minlength=len(REASONS)).tolist()
    reason_counts = Counter(dict(zip(REASONS, counts, strict=True)))
    per_anchor = np.bincount(anchor[slot > 0], minlength=int(anchor.max(initial=-1)) + 1)
    short = int(np.sum(per_anchor[np.unique(anchor)] < k)) if len(anchor) else 0
    return Selection(out, {key: v for key, v in reason_counts.items() if v}, short)
