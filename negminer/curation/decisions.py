"""Apply reviewers' decisions to the next selection (``mine`` / ``refilter``).

Contract: :func:`apply_decisions` takes the candidate table (``anchor_idx``, ``doc_idx``, as
searched or as stored in a version), the effective decisions of the dataset (one row per
``(anchor_id, doc_id)``, see :func:`negminer.audit.queries.latest_decisions`) and the
version's ``anchors`` / ``docs`` / ``pairs`` tables, and returns:

* the candidates with a bool column ``excluded_by_audit`` (replacing one already there):
  ``select_negatives`` drops those rows with reason ``audit_decision``. With no decisions at
  all the tables pass through unchanged (no column is added);
* the pairs to train on: dropped pairs removed, given positives that curation held out of
  training (``held_out``: dropped or quarantined as false positives) put back when a reviewer
  confirmed them, and, with ``extra_positives=True``, a pair appended for each document
  confirmed relevant that was not yet a positive;
* the dropped ``pair_idx`` and counts for the manifest.

What each decision on ``(anchor, doc)`` does:

=============  ==================================================  ==================================
decision       doc is a candidate (not a positive)                 doc is a labelled positive
=============  ==================================================  ==================================
is_positive    never a negative again (+ extra positive if on)     stays or is put back
is_negative    eligible as a negative; curation's flag cleared     the pair is dropped (a relabelled
                                                                   one is a negative again)
drop_pair      never a negative again                              the pair is dropped
skip           nothing                                             nothing
=============  ==================================================  ==================================

:func:`unflag_decided` removes pairs a reviewer already decided from a new flagged table, so
a confirmed negative is not flagged again. :class:`BatchedFeedback` applies the same
decisions to a candidate file read in batches (:func:`negminer.mining.streaming.derive_files`).

The decisions themselves are read from the audit database by
:func:`negminer.audit.feedback.load_decisions`; nothing here touches the database.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.errors import InputError

logger = logging.getLogger(__name__)

EXCLUDED_COLUMN = "excluded_by_audit"
CURATION_FLAG_COLUMN = "flagged_false_negative"
AUDIT_REASON = "audit_decision"
_DECISION_COLUMNS = ("anchor_id", "doc_id", "decision")
_ZERO_COUNTS = (
    "decisions",
    "is_positive",
    "is_negative",
    "drop_pair",
    "skip",
    "unmatched",
    "applied",
    "excluded_candidates",
    "unflagged_candidates",
    "dropped_pairs",
    "restored_pairs",
    "extra_positives",
)


class Feedback(NamedTuple):
    """Result of :func:`apply_decisions`."""

    candidates: pa.Table
    pairs: pa.Table
    dropped_pair_idx: np.ndarray
    counts: dict[str, int]


class _Keys(NamedTuple):
    """Decisions resolved to (anchor_idx * n_docs + doc_idx) keys, by effect."""

    exclude: np.ndarray
    drop: np.ndarray
    extra: np.ndarray
    confirm: np.ndarray
    restore: np.ndarray
    counts: dict[str, int]


def apply_decisions(
    candidates: pa.Table,
    decisions: pa.Table,
    *,
    anchors: pa.Table,
    docs: pa.Table,
    pairs: pa.Table,
    extra_positives: bool,
    held_out: pa.Table | None = None,
) -> Feedback:
    """Apply reviewers' decisions to a candidate table and the training pairs.

    Args:
        candidates: (n,) candidate rows with ``anchor_idx`` and ``doc_idx``.
        decisions: effective decisions, columns ``anchor_id``, ``doc_id``, ``decision``; when
            a pair appears twice the last row wins.
        anchors: the version's anchors (``anchor_id``; ``anchor_idx`` or row position).
        docs: the version's docs (``doc_id``; ``doc_idx`` or row position).
        pairs: the version's pairs (``pair_idx``, ``anchor_idx``, ``doc_idx``).
        extra_positives: turn documents confirmed relevant into extra positive pairs
            (``MineConfig.audit_extra_positives``).
        held_out: given positives that curation left out of `pairs` (``pair_idx``,
            ``anchor_idx``, ``doc_idx``; other columns of `pairs` are filled in or null): those
            a reviewer confirmed ``is_positive`` go back into the training pairs.

    Returns:
        Feedback(candidates + ``excluded_by_audit``, pairs to train on, dropped pair_idx
        (sorted), counts: ``decisions``, one per decision kind, ``unmatched`` (anchor or doc
        not in this version), ``excluded_candidates``, ``unflagged_candidates`` (curation's
        ``flagged_false_negative`` cleared by a confirmed negative), ``dropped_pairs``,
        ``restored_pairs``, ``extra_positives``, ``applied`` (matched decisions other than
        skip)).

    Example:
        >>> decisions = load_decisions("datasets", "scifact")  # doctest: +SKIP
        >>> fb = apply_decisions(cands, decisions, anchors=a, docs=d, pairs=p,
        ...                      extra_positives=False)  # doctest: +SKIP
        >>> select_negatives(fb.candidates, ...)  # doctest: +SKIP
    """
    _check_columns(decisions, _DECISION_COLUMNS, "decisions")
    _check_columns(candidates, ("anchor_idx", "doc_idx"), "candidates")
    _check_columns(pairs, ("pair_idx", "anchor_idx", "doc_idx"), "pairs")
    if decisions.num_rows == 0:  # nothing reviewed: the tables pass through untouched
        return Feedback(candidates, pairs, np.empty(0, np.int64), dict.fromkeys(_ZERO_COUNTS, 0))
    anchors, docs = _with_positions(anchors, "anchor_idx"), _with_positions(docs, "doc_idx")
    n_docs = int(pc.max(docs.column("doc_idx")).as_py() or 0) + 1 if docs.num_rows else 1
    pair_keys = _keys(pairs.column("anchor_idx"), pairs.column("doc_idx"), n_docs)
    held_out = pairs.schema.empty_table() if held_out is None else as_pair_rows(held_out, pairs.schema)
    held_keys = _keys(held_out.column("anchor_idx"), held_out.column("doc_idx"), n_docs)
    keys = _resolve(decisions, anchors=anchors, docs=docs, pair_keys=pair_keys, held_keys=held_keys, n_docs=n_docs)
    candidate_keys = _keys(candidates.column("anchor_idx"), candidates.column("doc_idx"), n_docs)
    excluded = np.isin(candidate_keys, keys.exclude)
    if EXCLUDED_COLUMN in candidates.column_names:
        candidates = candidates.drop_columns([EXCLUDED_COLUMN])
    candidates = candidates.append_column(EXCLUDED_COLUMN, pa.array(excluded, pa.bool_()))
    candidates, unflagged = _clear_confirmed_flags(candidates, np.isin(candidate_keys, keys.confirm))
    dropped = np.isin(pair_keys, keys.drop)
    dropped_idx = np.sort(pairs.column("pair_idx").to_numpy()[dropped])
    kept = pairs.filter(pa.array(~dropped))
    restored = held_out.filter(pa.array(np.isin(held_keys, keys.restore)))
    extra = _extra_pairs(pairs, keys.extra if extra_positives else np.empty(0, np.int64), n_docs)
    counts = {
        **keys.counts,
        "excluded_candidates": int(excluded.sum()),
        "unflagged_candidates": unflagged,
        "dropped_pairs": len(dropped_idx),
        "restored_pairs": restored.num_rows,
        "extra_positives": extra.num_rows,
    }
    logger.info("audit decisions applied: %s", counts)
    return Feedback(candidates, pa.concat_tables([kept, restored, extra]), dropped_idx, counts)


def as_pair_rows(held_out: pa.Table, schema: pa.Schema) -> pa.Table:
    """Held-out pairs (at least ``pair_idx``, ``anchor_idx``, ``doc_idx``) in the pairs' `schema`:
    the columns they lack are null."""
    _check_columns(held_out, ("pair_idx", "anchor_idx", "doc_idx"), "held-out pairs")
    arrays = [
        held_out.column(f.name).cast(f.type) if f.name in held_out.column_names else pa.nulls(held_out.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _clear_confirmed_flags(candidates: pa.Table, confirmed: np.ndarray) -> tuple[pa.Table, int]:
    """Clear curation's ``flagged_false_negative`` where a reviewer confirmed the negative."""
    if CURATION_FLAG_COLUMN not in candidates.column_names:
        return candidates, 0
    position = candidates.column_names.index(CURATION_FLAG_COLUMN)
    flag = pc.fill_null(candidates.column(CURATION_FLAG_COLUMN).cast(pa.bool_()), False).to_numpy(zero_copy_only=False)
    cleared = flag & confirmed
    return candidates.set_column(position, CURATION_FLAG_COLUMN, pa.array(flag & ~confirmed)), int(cleared.sum())


def _check_columns(table: pa.Table, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{what} table lacks column(s) {', '.join(missing)}")


def _with_positions(table: pa.Table, idx_column: str) -> pa.Table:
    """`table` with its `idx_column`; when absent, row positions are the indices."""
    if idx_column in table.column_names:
        return table
    return table.append_column(idx_column, pa.array(np.arange(table.num_rows, dtype=np.int32)))


def _keys(anchor_idx: pa.ChunkedArray, doc_idx: pa.ChunkedArray, n_docs: int) -> np.ndarray:
    anchor = anchor_idx.to_numpy().astype(np.int64)
    return anchor * n_docs + doc_idx.to_numpy().astype(np.int64)


def _resolve(
    decisions: pa.Table,
    *,
    anchors: pa.Table,
    docs: pa.Table,
    pair_keys: np.ndarray,
    held_keys: np.ndarray,
    n_docs: int,
) -> _Keys:
    """Map decisions' ids to keys and sort them by effect; unknown ids are counted, not fatal."""
    anchor_of = _index_of(anchors, "anchor_id", "anchor_idx", decisions.column("anchor_id"))
    doc_of = _index_of(docs, "doc_id", "doc_idx", decisions.column("doc_id"))
    latest: dict[tuple[str, str], str] = {}
    for anchor_id, doc_id, decision in zip(*(decisions.column(c).to_pylist() for c in _DECISION_COLUMNS), strict=True):
        latest[(anchor_id, doc_id)] = decision
    counts = {"decisions": len(latest), "is_positive": 0, "is_negative": 0, "drop_pair": 0, "skip": 0, "unmatched": 0}
    effects: dict[str, list[int]] = {"exclude": [], "drop": [], "extra": [], "confirm": [], "restore": []}
    positives = set(pair_keys.tolist())
    held = set(held_keys.tolist()) - positives
    for (anchor_id, doc_id), decision in latest.items():
        if decision not in ("is_positive", "is_negative", "drop_pair", "skip"):
            raise InputError(f"unknown decision {decision!r} for pair ({anchor_id!r}, {doc_id!r})")
        if anchor_id not in anchor_of or doc_id not in doc_of:
            counts["unmatched"] += 1
            continue
        counts[decision] += 1
        key = anchor_of[anchor_id] * n_docs + doc_of[doc_id]
        for effect in _effects(decision, is_pair=key in positives, is_held_out=key in held):
            effects[effect].append(key)
    counts["applied"] = counts["decisions"] - counts["unmatched"] - counts["skip"]
    arrays = {name: np.unique(np.asarray(keys, np.int64)) for name, keys in effects.items()}
    return _Keys(arrays["exclude"], arrays["drop"], arrays["extra"], arrays["confirm"], arrays["restore"], counts)


def _effects(decision: str, *, is_pair: bool, is_held_out: bool) -> tuple[str, ...]:
    """What a decision does to a (anchor, doc): see the module docstring's table."""
    if decision == "drop_pair":
        return ("drop", "exclude")
    if decision == "is_positive":
        if is_held_out:
            return ("restore",)
        return () if is_pair else ("exclude", "extra")
    if decision == "is_negative":
        return ("drop", "confirm") if is_pair else ("confirm",)  # a relabelled pair's candidate: a negative again
    return ()


def _index_of(table: pa.Table, id_column: str, idx_column: str, wanted: pa.ChunkedArray) -> dict[str, int]:
    """id -> idx for the ids in `wanted` (only those rows are converted to Python)."""
    ids = table.column(id_column)
    found = table.filter(pc.is_in(ids, value_set=pc.cast(wanted, ids.type).combine_chunks()))
    return dict(zip(found.column(id_column).to_pylist(), found.column(idx_column).to_pylist(), strict=True))


def _extra_pairs(pairs: pa.Table, keys: np.ndarray, n_docs: int) -> pa.Table:
    """New positive pairs for `keys`, numbered after the existing pair_idx, other columns null."""
    start = int(pc.max(pairs.column("pair_idx")).as_py() or 0) + 1 if pairs.num_rows else 0
    columns = {
        "pair_idx": np.arange(start, start + len(keys)),
        "anchor_idx": keys // n_docs,
        "doc_idx": keys % n_docs,
    }
    arrays = [
        pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(len(keys), f.type) for f in pairs.schema
    ]
    return pa.Table.from_arrays(arrays, schema=pairs.schema)


def unflag_decided(flagged: pa.Table, decisions: pa.Table) -> tuple[pa.Table, int]:
    """Remove flagged rows whose pair already has a decision other than ``skip``.

    Args:
        flagged: a new flagged table (``anchor_id``, ``doc_id``, ...).
        decisions: effective decisions (``anchor_id``, ``doc_id``, ``decision``).

    Returns:
        (flagged rows still to review, number removed).
    """
    _check_columns(flagged, ("anchor_id", "doc_id"), "flagged")
    _check_columns(decisions, _DECISION_COLUMNS, "decisions")
    decided = decisions.filter(pc.not_equal(decisions.column("decision"), "skip"))
    decided_keys = pc.binary_join_element_wise(decided.column("anchor_id"), decided.column("doc_id"), "\x1f")
    flagged_keys = pc.binary_join_element_wise(
        pc.cast(flagged.column("anchor_id"), pa.string()), pc.cast(flagged.column("doc_id"), pa.string()), "\x1f"
    )
    resolved = pc.is_in(flagged_keys, value_set=decided_keys.combine_chunks())
    kept = flagged.filter(pc.invert(resolved))
    return kept, flagged.num_rows - kept.num_rows


class BatchedFeedback:
    """Reviewers' decisions applied batch by batch (:func:`apply_decisions`).

    The decisions are resolved against the pairs, which every batch shares; the per-row
    counts (``excluded_candidates``, ``unflagged_candidates``) are summed over the batches.
    Pass it as ``transform`` to :func:`negminer.mining.streaming.derive_files`, with
    :attr:`pairs` as its pairs; :attr:`counts` holds :func:`apply_decisions`' counts once
    every batch has passed.

    Example:
        >>> feedback = BatchedFeedback(decisions, schema=schema, anchors=a, docs=d, pairs=p,
        ...                            extra_positives=False)  # doctest: +SKIP
        >>> derive_files(path, out, anchors=a, docs=d, pairs=feedback.pairs, config=mine,
        ...              transform=feedback)  # doctest: +SKIP
    """

    # Counts summed over the batches (and over the shards of a sharded selection).
    PER_ROW = ("excluded_candidates", "unflagged_candidates")

    def __init__(
        self,
        decisions: pa.Table,
        *,
        schema: pa.Schema,
        anchors: pa.Table,
        docs: pa.Table,
        pairs: pa.Table,
        extra_positives: bool,
        held_out: pa.Table | None = None,
    ) -> None:
        self._apply = lambda table: apply_decisions(
            table,
            decisions,
            anchors=anchors,
            docs=docs,
            pairs=pairs,
            extra_positives=extra_positives,
            held_out=held_out,
        )
        self._active = decisions.num_rows > 0
        first = self._apply(schema.empty_table())
        self.pairs = first.pairs
        self.counts = dict(first.counts)

    def __call__(self, candidates: pa.Table) -> pa.Table:
        if not self._active:
            return candidates
        result = self._apply(candidates)
        for key in self.PER_ROW:
            self.counts[key] += result.counts[key]
        return result.candidates
