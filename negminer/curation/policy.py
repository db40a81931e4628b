"""Act on flags by policy and keep every flagged pair for audit.

Contract: a flag has a kind (:data:`KINDS`) and the action of that kind's policy
(:data:`ACTIONS`). ``drop`` removes the pair from the training view, ``quarantine`` keeps it
out of the training view until an audit decides, ``keep`` leaves it in and only records the
flag. A reviewer's ``is_positive`` on a dropped or quarantined given positive puts it back
(:func:`negminer.audit.feedback.apply_decisions`, ``held_out``). A candidate negative that
is dropped or quarantined is marked ``flagged_false_negative`` so selection skips it and
takes the next valid candidate; a given positive that is dropped or quarantined leaves the
training pairs (:func:`training_pairs`). The flagged table (``flagged.parquet``) has one row per (pair, kind): see
:func:`flagged_table`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("false_negative", "false_positive", "near_duplicate")
ACTIONS = ("drop", "quarantine", "keep")
Action = Literal["drop", "quarantine", "keep"]


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
    anchor_ids: list[str] | None = None,
    doc_ids: list[str] | None = None,
) -> pa.Table:
    """One row per flagged (pair, kind), most suspicious first within each kind.

    Args:
        flags: kind -> (n_rows,) bool.
        actions: kind -> action.
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
    anchor_ids: list[str] | None,
    doc_ids: list[str] | None,
) -> dict[str, pa.Array]:
    anchor = columns["anchor_idx"][index]
    doc = columns["doc_idx"][index]
    pair = columns["pair_idx"][index]
    out: dict[str, pa.Array] = {}
    if anchor_ids is not None:
        out["anchor_id"] = pa.array(anchor_ids, pa.string()).take(pa.array(anchor))
    if doc_ids is not None:
        out["doc_id"] = pa.array(doc_ids, pa.string()).take(pa.array(doc))
    out["anchor_idx"] = pa.array(anchor.astype(np.int32))
    out["doc_idx"] = pa.array(doc.astype(np.int32))
    out["pair_idx"] = pa.array(pair.astype(np.int32), mask=pair < 0)
    return out


def training_pairs(pairs: pa.Table, excluded_pair_idx: np.ndarray) -> pa.Table:
    """`pairs` without the pairs whose positive was dropped or quarantined.

    Example:
        >>> training_pairs(pairs, result.excluded_pairs)  # doctest: +SKIP
    """
    if len(excluded_pair_idx) == 0:
        return pairs
    gone = pc.is_in(pairs.column("pair_idx"), value_set=pa.array(excluded_pair_idx, pa.int32()))
    return pairs.filter(pc.invert(gone))
