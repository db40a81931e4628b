"""Act on flags by policy and keep every flagged pair for audit.

Contract: a flag has a kind (:data:`KINDS`) and the action of that kind's policy
(:data:`ACTIONS`). ``drop`` removes the pair from the training view, ``quarantine`` keeps it
out of the training view until an audit decides, ``keep`` leaves it in and only records the
flag; ``relabel`` (false negatives only) drops the candidate as a negative and adds it as an
extra positive pair of its anchor (:func:`relabelled_pairs`), which a reviewer's
``is_negative`` undoes. A reviewer's ``is_positive`` on a dropped or quarantined given positive puts it back
(:func:`negminer.curation.decisions.apply_decisions`, ``held_out``). A candidate negative that
is dropped or quarantined is marked ``flagged_false_negative`` so selection skips it and
takes the next valid candidate; a given positive that is dropped or quarantined leaves the
training pairs (:func:`training_pairs`). The flagged table (``flagged.parquet``) has one row
per (pair, kind): see :func:`flagged_table`. :func:`apply_policies` turns scored rows
(:class:`Scored`, from :func:`negminer.curation.curate.score_pairs`) into the
:class:`CurationResult` that :func:`negminer.curation.curate_candidates` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import CurateConfig
from negminer.curation.confident import few_candidates_relevant
from negminer.curation.rows import PairRows

KINDS = ("false_negative", "false_positive", "near_duplicate")
ACTIONS = ("drop", "quarantine", "keep", "relabel")
IdSource = list[str] | pa.Array | pa.ChunkedArray  # ids by *_idx: a list, or Arrow strings (no Python copies)
Action = Literal["drop", "quarantine", "keep", "relabel"]


class CurationResult(NamedTuple):
    """What :func:`curate_candidates` hands to selection, the version writer and the audit."""

    candidates: pa.Table
    false_positive_pairs: np.ndarray  # int64 pair_idx flagged false_positive
    false_positive_action: str
    excluded_pairs: np.ndarray  # int64 pair_idx to leave out of the training view
    flagged: pa.Table
    pair_scores: pa.Table  # pair_idx, relevance, quality of every given pair
    counts: dict[str, int]
    noise: dict[str, Any]


class Scored(NamedTuple):
    """Rows, their features and the verdicts, before they are turned into tables."""

    rows: PairRows
    features: dict[str, np.ndarray]
    relevance: np.ndarray  # the candidate-side model's relevance of every row
    candidate_relevance: np.ndarray  # candidate-side model for every row (the false-negative rule)
    quality: np.ndarray
    flags: dict[str, np.ndarray]
    noise: dict[str, Any]
    skipped: str | None = None  # why no model judged the rows (see _fold_shortfall); None when they were
    confidence: np.ndarray | None = None  # given positives: confidence of being a random document (NaN elsewhere)


def resolved_false_negative_action(config: CurateConfig, noise: Mapping[str, Any] | None) -> Action:
    """``false_negative_action``, with ``auto`` resolved from curation's estimate of the relevant candidates.

    Auto drops the flagged candidates when at least ``false_negative_drop_from`` of the
    candidates are estimated relevant, and keeps them (flagged, queued for review) below it:
    when unlabelled positives are that rare, most flags are topically close negatives, the
    most useful rows to train on (docs/benchmarks.md). Without an estimate it drops.

    Example:
        >>> resolved_false_negative_action(CurateConfig(), {"negatives_relevant": 0.04})
        'keep'
    """
    action = config.false_negative_action
    if action != "auto":
        return action
    return "keep" if few_candidates_relevant(noise, config.false_negative_drop_from) else "drop"


def applied_actions(config: CurateConfig, noise: Mapping[str, Any] | None) -> dict[str, str]:
    """Each ``*_action`` setting as curation applies it, ``auto`` resolved: the manifest's ``policies``.

    Example:
        >>> applied_actions(CurateConfig(), {"negatives_relevant": 0.04})["false_negative_action"]
        'keep'
    """
    return policies_record(kind_actions(config, noise), config)


def policies_record(actions: Mapping[str, Action], config: CurateConfig) -> dict[str, str]:
    """The manifest's ``policies`` from :func:`kind_actions`' per-kind map."""
    by_kind = {f"{kind}_action": action for kind, action in actions.items()}
    return {**by_kind, "false_positive_uncertain_action": config.false_positive_uncertain_action}


def kind_actions(config: CurateConfig, noise: Mapping[str, Any] | None) -> dict[str, Action]:
    """The action of each flag kind (``false_negative``, ``false_positive``, ``near_duplicate``),
    ``auto`` resolved; confident and uncertain false positives are split later by confidence."""
    return {
        "false_negative": resolved_false_negative_action(config, noise),
        "false_positive": config.false_positive_action,
        "near_duplicate": config.near_duplicate_action,
    }


def excludes(action: Action) -> bool:
    """Whether `action` keeps the pair out of the training view."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    return action != "keep"


def flagged_table(
    flags: dict[str, np.ndarray],
    actions: dict[str, Action],
    columns: dict[str, np.ndarray],
    features: dict[str, np.ndarray],
    *,
    anchor_ids: IdSource | None = None,
    doc_ids: IdSource | None = None,
    row_actions: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """One row per flagged (pair, kind), most suspicious first within each kind.

    Args:
        flags: kind -> (n_rows,) bool.
        actions: kind -> action.
        row_actions: kind -> (n_rows,) action of each row, where a kind's rows differ
            (false positives: by confidence); overrides `actions` for that kind.
        columns: per-row arrays ``anchor_idx``, ``doc_idx``, ``pair_idx`` (-1 for candidates),
            ``label``, ``rank``, ``quality`` and ``relevance``.
        features: per-row feature columns, stored as ``feature_<name>``.
        anchor_ids, doc_ids: optional ids by *_idx, stored as ``anchor_id`` / ``doc_id``.

    Returns:
        Table with ``kind``, ``action``, the columns, the ids and the features.
    """
    parts = []
    for kind in KINDS:
        rows = np.nonzero(flags.get(kind, np.zeros(0, bool)))[0]
        rows = rows[np.lexsort((rows, columns["quality"][rows]))]
        parts.append((kind, rows))
    index = np.concatenate([rows for _, rows in parts]).astype(np.int64)
    kinds = np.concatenate([np.full(len(rows), kind, dtype=object) for kind, rows in parts])
    acts = np.asarray([actions[k] for k in kinds], dtype=object)
    offset = 0
    for kind, rows in parts:
        if row_actions is not None and kind in row_actions:
            acts[offset : offset + len(rows)] = row_actions[kind][rows]
        offset += len(rows)
    table = {"kind": pa.array(kinds, pa.string()), "action": pa.array(acts, pa.string())}
    table.update(_id_columns(columns, index, anchor_ids, doc_ids))
    for name in ("label", "rank", "quality", "relevance"):
        table[name] = pa.array(columns[name][index])
    for name, values in features.items():
        table[f"feature_{name}"] = pa.array(values[index].astype(np.float32))
    return pa.table(table)


def _id_columns(
    columns: dict[str, np.ndarray],
    index: np.ndarray,
    anchor_ids: IdSource | None,
    doc_ids: IdSource | None,
) -> dict[str, pa.Array]:
    anchor = columns["anchor_idx"][index]
    doc = columns["doc_idx"][index]
    pair = columns["pair_idx"][index]
    out: dict[str, pa.Array] = {}
    if anchor_ids is not None:
        out["anchor_id"] = _as_arrow(anchor_ids).take(pa.array(anchor))
    if doc_ids is not None:
        out["doc_id"] = _as_arrow(doc_ids).take(pa.array(doc))
    out["anchor_idx"] = pa.array(anchor.astype(np.int32))
    out["doc_idx"] = pa.array(doc.astype(np.int32))
    out["pair_idx"] = pa.array(pair.astype(np.int32), mask=pair < 0)
    return out


def _as_arrow(ids: IdSource) -> pa.Array | pa.ChunkedArray:
    return ids if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(ids, pa.string())


def training_pairs(pairs: pa.Table, excluded_pair_idx: np.ndarray) -> pa.Table:
    """`pairs` without the pairs whose positive was dropped or quarantined.

    Example:
        >>> training_pairs(pairs, result.excluded_pairs)  # doctest: +SKIP
    """
    if len(excluded_pair_idx) == 0:
        return pairs
    gone = pc.is_in(pairs.column("pair_idx"), value_set=pa.array(excluded_pair_idx, pa.int32()))
    return pairs.filter(pc.invert(gone))


def relabelled_pairs(flagged: pa.Table, pairs: pa.Table) -> pa.Table:
    """The extra positive pairs of the candidates flagged ``false_negative`` with action ``relabel``.

    One pair per (anchor, document), in (anchor_idx, doc_idx) order, numbered after the largest
    ``pair_idx`` of the given `pairs` (all of them, so a held-out pair keeps its number); the
    pairs' other columns are null.

    Example:
        >>> relabelled_pairs(flagged, pairs).column_names == pairs.column_names  # doctest: +SKIP
        True
    """
    mask = pc.and_(pc.equal(flagged.column("kind"), "false_negative"), pc.equal(flagged.column("action"), "relabel"))
    chosen = flagged.filter(mask)
    anchor = chosen.column("anchor_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    doc = chosen.column("doc_idx").to_numpy(zero_copy_only=False).astype(np.int64)
    unique = np.unique(np.stack([anchor, doc], axis=1), axis=0) if len(anchor) else np.empty((0, 2), np.int64)
    start = int(pc.max(pairs.column("pair_idx")).as_py() or 0) + 1 if pairs.num_rows else 0
    columns = {
        "pair_idx": np.arange(start, start + len(unique)),
        "anchor_idx": unique[:, 0],
        "doc_idx": unique[:, 1],
    }
    arrays = [
        pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(len(unique), f.type) for f in pairs.schema
    ]
    return pa.Table.from_arrays(arrays, schema=pairs.schema)


def curated_training_pairs(pairs: pa.Table, excluded_pair_idx: np.ndarray, flagged: pa.Table) -> pa.Table:
    """What curation hands selection to train on: :func:`training_pairs` plus :func:`relabelled_pairs`."""
    return pa.concat_tables([training_pairs(pairs, excluded_pair_idx), relabelled_pairs(flagged, pairs)])


def apply_policies(
    scored: Scored,
    candidates: pa.Table,
    *,
    config: CurateConfig = CurateConfig(),
    anchor_ids: IdSource | None = None,
    doc_ids: IdSource | None = None,
) -> CurationResult:
    """Turn scored flags into actions: the annotated candidates, excluded pairs, flagged table.

    Only the ``*_action`` settings of `config` matter here, so other policies can be applied
    to the same :class:`Scored` without scoring again.

    Example:
        >>> result = apply_policies(scored, cands, config=CurateConfig(false_negative_action="keep"))
        ...                                                             # doctest: +SKIP
    """
    rows, flags = scored.rows, scored.flags
    actions = kind_actions(config, scored.noise)
    exclude_row = np.zeros(len(rows.label), bool)
    for kind in ("false_negative", "near_duplicate"):
        if excludes(actions[kind]):
            exclude_row |= flags[kind]
    fp_pairs = np.sort(rows.pair_idx[flags["false_positive"]])
    fp_action = false_positive_actions(scored.confidence, len(rows.label), config)
    held = flags["false_positive"] & np.isin(fp_action, [a for a in ACTIONS if excludes(a)])
    excluded_pairs = np.sort(rows.pair_idx[held])
    out = _annotate(candidates, rows, scored.relevance, exclude_row)
    columns = {
        "anchor_idx": rows.anchor,
        "doc_idx": rows.doc,
        "pair_idx": rows.pair_idx,
        "label": rows.label,
        "rank": rows.rank,
        "quality": scored.quality,
        "relevance": scored.relevance,
    }
    flagged = flagged_table(
        flags,
        actions,
        columns,
        scored.features,
        anchor_ids=anchor_ids,
        doc_ids=doc_ids,
        row_actions={"false_positive": fp_action},
    )
    counts = {
        "rows_scored": len(rows.label),
        "pairs_scored": int(np.sum(rows.label == 1)),
        **{kind: int(flag.sum()) for kind, flag in flags.items()},
        "negatives_excluded": int(exclude_row.sum()),
        "relabelled": int(np.sum(flags["false_negative"])) if actions["false_negative"] == "relabel" else 0,
        "pairs_excluded": len(excluded_pairs),
        "false_positive_confident": int(np.sum(flags["false_positive"] & (fp_action == actions["false_positive"]))),
        "false_positive_kept": int(np.sum(flags["false_positive"] & ~held)),
        "false_positive_excluded": int(held.sum()),
        "skipped": int(scored.skipped is not None),
    }
    is_pair = rows.label == 1
    pair_scores = pa.table(
        {
            "pair_idx": pa.array(rows.pair_idx[is_pair].astype(np.int32)),
            # NaN (not judged) becomes null
            "relevance": pa.array(scored.relevance[is_pair].astype(np.float32), from_pandas=True),
            "quality": pa.array(scored.quality[is_pair].astype(np.float32), from_pandas=True),
        }
    )
    return CurationResult(
        out, fp_pairs, actions["false_positive"], excluded_pairs, flagged, pair_scores, counts, scored.noise
    )


def false_positive_actions(confidence: np.ndarray | None, n_rows: int, config: CurateConfig) -> np.ndarray:
    """(n_rows,) the action of a false_positive flag on each row: ``false_positive_action`` at or above
    ``false_positive_confidence``, ``false_positive_uncertain_action`` below it (and where unknown).

    Example:
        >>> false_positive_actions(np.array([0.95, 0.2]), 2, CurateConfig()).tolist()
        ['quarantine', 'keep']
    """
    sure = (
        np.zeros(n_rows, bool) if confidence is None else np.nan_to_num(confidence) >= config.false_positive_confidence
    )
    return np.where(sure, config.false_positive_action, config.false_positive_uncertain_action).astype(object)


def _annotate(candidates: pa.Table, rows: PairRows, relevance: np.ndarray, exclude_row: np.ndarray) -> pa.Table:
    """The candidate table plus ``relevance`` and ``flagged_false_negative``."""
    n = candidates.num_rows
    rel = np.zeros(n, np.float32)
    has = np.zeros(n, bool)
    flagged = np.zeros(n, bool)
    retrieved = rows.candidate_row >= 0
    rel[rows.candidate_row[retrieved]] = relevance[retrieved]
    has[rows.candidate_row[retrieved]] = np.isfinite(relevance[retrieved])  # NaN: not judged
    flagged[rows.candidate_row[retrieved]] = exclude_row[retrieved]
    out = candidates.append_column("relevance", pa.array(rel, mask=~has))
    return out.append_column("flagged_false_negative", pa.array(flagged))
