"""Build the training view (``triplets.parquet``) and the scored view from chosen negatives.

Formats (sentence-transformers' ``output_format`` names and row layouts):

* ``triplet``: one row per (pair, negative), string columns ``anchor``, ``positive``,
  ``negative``.
* ``n-tuple``: one row per pair with ``negative_1..negative_n``; pairs whose anchor got fewer
  than ``num_negatives`` negatives are left out (counted by the caller).
* ``labeled-pair``: per anchor (in order of its first pair) one row per positive with
  ``label`` 1, then one row per negative with ``label`` 0; columns ``anchor``, ``document``,
  ``label`` (int64, as sentence-transformers). For cross-encoder losses such as BinaryCrossEntropyLoss.
* ``labeled-list``: one row per pair that got at least one negative: ``anchor``,
  ``documents`` = [positive, negative_1, …], ``labels`` = [1, 0, …]. For listwise losses.

Rows follow the input pair order, negatives their slot order, so output bytes are stable.
The training view holds only texts (and labels); :func:`scored_view` is the same table plus
the cosine scores: a ``scores`` list column ([positive, negatives…]) for ``triplet``,
``n-tuple`` and ``labeled-list``, a ``score`` column for ``labeled-pair``; given the
negatives' tiers, also a ``difficulty`` column: the row's tier, that of its hardest negative
(null on ``labeled-pair``'s positive rows). :func:`view_tiers` gives the same per-row tier
codes, which cut the training view into curriculum stages
(:mod:`negminer.mining.difficulty`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import OutputFormat

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


class _Rows(NamedTuple):
    """A view as positions: text columns as (texts array, indices) and the scores per row."""

    columns: dict[str, tuple[pa.Array, np.ndarray]]
    extra: dict[str, pa.Array]
    scores: pa.Array | None
    tiers: np.ndarray | None = None  # (rows,) tier code of each row's hardest negative


def fill_negative_grids(grids: tuple[np.ndarray, np.ndarray], chosen: pa.Table) -> None:
    """Put each chosen negative's doc_idx and score at (anchor_idx, negative_slot - 1) of the grids.

    Args:
        grids: (n_anchors, num_negatives) int64 doc_idx (-1 where missing) and float32 scores
            (NaN where missing), filled in place; selection fills them batch by batch.
        chosen: selected candidate rows with ``anchor_idx``, ``doc_idx``, ``score`` and a valid
            ``negative_slot`` (1-based).
    """
    doc_grid, score_grid = grids
    anchor = chosen.column("anchor_idx").to_numpy()
    slot = chosen.column("negative_slot").to_numpy().astype(np.int64) - 1
    doc_grid[anchor, slot] = chosen.column("doc_idx").to_numpy()
    score_grid[anchor, slot] = chosen.column("score").to_numpy()


def training_view(
    pairs: pa.Table,
    anchor_texts: pa.Array,
    doc_texts: pa.Array,
    negatives: np.ndarray,
    *,
    output_format: OutputFormat,
) -> pa.Table:
    """The text-only training table.

    Args:
        pairs: table with ``anchor_idx`` and ``doc_idx`` (the positive), in output order.
        anchor_texts: anchor text by anchor_idx.
        doc_texts: doc text by doc_idx.
        negatives: (n_anchors, num_negatives) doc_idx of chosen negatives, -1 where missing.
        output_format: ``triplet``, ``n-tuple``, ``labeled-pair`` or ``labeled-list``.

    Example:
        >>> training_view(pairs, anchors["text"], docs["text"], grid, output_format="triplet")  # doctest: +SKIP
    """
    rows = _rows(pairs, anchor_texts, doc_texts, negatives, output_format, None)
    return _table(rows, with_scores=False, output_format=output_format)


def scored_view(
    pairs: pa.Table,
    anchor_texts: pa.Array,
    doc_texts: pa.Array,
    negatives: np.ndarray,
    *,
    pair_scores: np.ndarray,
    negative_scores: np.ndarray,
    output_format: OutputFormat,
    negative_tiers: np.ndarray | None = None,
) -> pa.Table:
    """:func:`training_view` plus the cosine scores of its rows (``scores`` or ``score``).

    Args:
        pairs, anchor_texts, doc_texts, negatives, output_format: as in :func:`training_view`.
        pair_scores: (n_pairs,) cosine of each (anchor, positive) pair.
        negative_scores: (n_anchors, num_negatives) cosine of each chosen negative.
        negative_tiers: (n_anchors, num_negatives) int8 tier code of each chosen negative
            (:mod:`negminer.mining.difficulty`); adds the ``difficulty`` column.

    Example:
        >>> scored_view(pairs, a, d, grid, pair_scores=ps, negative_scores=ns,
        ...             output_format="triplet")  # doctest: +SKIP
    """
    scores = (np.asarray(pair_scores, np.float32), np.asarray(negative_scores, np.float32))
    rows = _rows(pairs, anchor_texts, doc_texts, negatives, output_format, scores, negative_tiers)
    table = _table(rows, with_scores=True, output_format=output_format)
    if negative_tiers is not None:
        from negminer.mining.difficulty import DIFFICULTY, tier_names

        table = table.append_column(DIFFICULTY, tier_names(rows.tiers))
    return table


def view_tiers(
    pairs: pa.Table, negatives: np.ndarray, negative_tiers: np.ndarray, *, output_format: OutputFormat
) -> np.ndarray:
    """(rows of :func:`training_view`,) int8 tier code of each row: that of its hardest negative.

    Args:
        pairs, negatives, output_format: as in :func:`training_view`.
        negative_tiers: (n_anchors, num_negatives) int8 tier codes, -1 where missing.

    Example:
        >>> view_tiers(pairs, grid, tiers, output_format="triplet")  # doctest: +SKIP
        array([2, 0, 1], dtype=int8)
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    pair_anchor = pairs.column("anchor_idx").to_numpy().astype(np.int64)
    return _row_tiers(pair_anchor, negatives, negative_tiers, output_format)


def _rows(
    pairs: pa.Table,
    anchor_texts: pa.Array,
    doc_texts: pa.Array,
    negatives: np.ndarray,
    output_format: str,
    scores: tuple[np.ndarray, np.ndarray] | None,
    tiers: np.ndarray | None = None,
) -> _Rows:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    pair_anchor = pairs.column("anchor_idx").to_numpy().astype(np.int64)
    pair_doc = pairs.column("doc_idx").to_numpy().astype(np.int64)
    texts = (text_array(anchor_texts), text_array(doc_texts))
    build = {
        "triplet": _triplet_rows,
        "n-tuple": _n_tuple_rows,
        "labeled-pair": _labeled_pair_rows,
        "labeled-list": _labeled_list_rows,
    }[output_format]
    rows = build(pair_anchor, pair_doc, negatives, texts, scores)
    if tiers is None:
        return rows
    return rows._replace(tiers=_row_tiers(pair_anchor, negatives, tiers, output_format))


def _row_tiers(pair_anchor: np.ndarray, negatives: np.ndarray, tiers: np.ndarray, output_format: str) -> np.ndarray:
    """Each view row's tier code, in the row order of the format's builder below."""
    per_pair = negatives[pair_anchor]
    valid = per_pair >= 0
    per_pair_tiers = np.where(valid, tiers[pair_anchor], -1).astype(np.int8)
    if output_format == "triplet":
        row, slot = np.nonzero(valid)
        return per_pair_tiers[row, slot]
    if output_format == "n-tuple":
        return per_pair_tiers[valid.all(axis=1)].max(axis=1, initial=-1)
    if output_format == "labeled-list":
        return per_pair_tiers[valid.any(axis=1)].max(axis=1, initial=-1)
    order = _anchor_order(pair_anchor, len(negatives))
    neg_anchor, neg_slot = np.nonzero(negatives >= 0)
    has_pairs = order[neg_anchor] >= 0
    neg_anchor, neg_slot = neg_anchor[has_pairs], neg_slot[has_pairs]
    codes = np.concatenate([np.full(len(pair_anchor), -1, np.int8), tiers[neg_anchor, neg_slot].astype(np.int8)])
    return codes[_labeled_pair_order(pair_anchor, neg_anchor, neg_slot, order)]


def text_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The texts as one ``large_string`` array: its 64-bit offsets hold a column over 2 GiB,
    which ``string`` cannot; the views cast the rows they take back to ``string``."""
    values = pc.cast(values, pa.large_string())
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _take_text(texts: pa.Array, indices: np.ndarray) -> pa.Array:
    return pc.cast(texts.take(pa.array(indices, pa.int64())), pa.string())


def _triplet_rows(pair_anchor, pair_doc, negatives, texts, scores) -> _Rows:
    anchors, docs = texts
    per_pair = negatives[pair_anchor]
    row, slot = np.nonzero(per_pair >= 0)
    columns = {
        "anchor": (anchors, pair_anchor[row]),
        "positive": (docs, pair_doc[row]),
        "negative": (docs, per_pair[row, slot]),
    }
    listed = None
    if scores is not None:
        pair_scores, negative_scores = scores
        matrix = np.stack([pair_scores[row], negative_scores[pair_anchor[row], slot]], axis=1)
        listed = _lists(matrix, np.ones_like(matrix, bool))
    return _Rows(columns, {}, listed)


def _n_tuple_rows(pair_anchor, pair_doc, negatives, texts, scores) -> _Rows:
    anchors, docs = texts
    per_pair = negatives[pair_anchor]
    full = np.all(per_pair >= 0, axis=1)
    columns = {"anchor": (anchors, pair_anchor[full]), "positive": (docs, pair_doc[full])}
    for k in range(per_pair.shape[1]):
        columns[f"negative_{k + 1}"] = (docs, per_pair[full, k])
    listed = None
    if scores is not None:
        pair_scores, negative_scores = scores
        matrix = np.column_stack([pair_scores[full], negative_scores[pair_anchor[full]]])
        listed = _lists(matrix, np.ones_like(matrix, bool))
    return _Rows(columns, {}, listed)


def _labeled_pair_rows(pair_anchor, pair_doc, negatives, texts, scores) -> _Rows:
    anchors, docs = texts
    order = _anchor_order(pair_anchor, len(negatives))
    neg_anchor, neg_slot = np.nonzero(negatives >= 0)
    has_pairs = order[neg_anchor] >= 0
    neg_anchor, neg_slot = neg_anchor[has_pairs], neg_slot[has_pairs]
    n_pos = len(pair_anchor)
    anchor_col = np.concatenate([pair_anchor, neg_anchor])
    rows = _labeled_pair_order(pair_anchor, neg_anchor, neg_slot, order)
    doc_col = np.concatenate([pair_doc, negatives[neg_anchor, neg_slot]])
    label = np.concatenate([np.ones(n_pos, np.int64), np.zeros(len(neg_anchor), np.int64)])
    columns = {"anchor": (anchors, anchor_col[rows]), "document": (docs, doc_col[rows])}
    score = None
    if scores is not None:
        pair_scores, negative_scores = scores
        values = np.concatenate([pair_scores, negative_scores[neg_anchor, neg_slot]])
        score = pa.array(values[rows], pa.float32())
    return _Rows(columns, {"label": pa.array(label[rows], pa.int64())}, score)


def _labeled_pair_order(
    pair_anchor: np.ndarray, neg_anchor: np.ndarray, neg_slot: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Row order of positives then negatives: by anchor (first pair), positives first, pair / slot order."""
    n_pos = len(pair_anchor)
    keys = (
        np.concatenate([np.arange(n_pos), neg_slot]),
        np.concatenate([np.zeros(n_pos, np.int64), np.ones(len(neg_anchor), np.int64)]),
        order[np.concatenate([pair_anchor, neg_anchor])],
    )
    return np.lexsort(keys)


def _anchor_order(pair_anchor: np.ndarray, n_anchors: int) -> np.ndarray:
    """Position of each anchor in order of its first pair (-1 for anchors without pairs)."""
    uniq, first = np.unique(pair_anchor, return_index=True)
    order = np.full(n_anchors, -1, np.int64)
    order[uniq[np.argsort(first, kind="stable")]] = np.arange(len(uniq))
    return order


def _labeled_list_rows(pair_anchor, pair_doc, negatives, texts, scores) -> _Rows:
    anchors, docs = texts
    per_pair = negatives[pair_anchor]
    keep = np.any(per_pair >= 0, axis=1)
    doc_matrix = np.column_stack([pair_doc[keep], per_pair[keep]])
    valid = doc_matrix >= 0
    documents = _lists_of(docs, doc_matrix, valid)
    labels = np.zeros(doc_matrix.shape, np.int64)
    labels[:, 0] = 1
    extra = {"documents": documents, "labels": _lists(labels, valid, pa.int64())}
    listed = None
    if scores is not None:
        pair_scores, negative_scores = scores
        matrix = np.column_stack([pair_scores[keep], negative_scores[pair_anchor[keep]]])
        listed = _lists(matrix, valid)
    return _Rows({"anchor": (anchors, pair_anchor[keep])}, extra, listed)


def _offsets(valid: np.ndarray) -> pa.Array:
    return pa.array(np.r_[0, np.cumsum(valid.sum(axis=1))], pa.int32())


def _list_type(value_type: pa.DataType) -> pa.DataType:
    # Parquet's name for list items, so a table reads back with the type it was written with.
    return pa.list_(pa.field("element", value_type))


def _lists(matrix: np.ndarray, valid: np.ndarray, value_type: pa.DataType = pa.float32()) -> pa.Array:
    """A list column from the valid cells of each row of `matrix`, left to right."""
    values = pa.array(matrix[valid], value_type)
    return pa.ListArray.from_arrays(_offsets(valid), values, type=_list_type(value_type))


def _lists_of(texts: pa.Array, indices: np.ndarray, valid: np.ndarray) -> pa.Array:
    values = _take_text(texts, indices[valid])
    return pa.ListArray.from_arrays(_offsets(valid), values, type=_list_type(pa.string()))


def _table(rows: _Rows, *, with_scores: bool, output_format: str) -> pa.Table:
    data: dict[str, pa.Array] = {name: _take_text(texts, idx) for name, (texts, idx) in rows.columns.items()}
    if output_format == "labeled-list":
        data["documents"] = rows.extra["documents"]
        data["labels"] = rows.extra["labels"]
    elif output_format == "labeled-pair":
        data["label"] = rows.extra["label"]
    if with_scores:
        data["score" if output_format == "labeled-pair" else "scores"] = rows.scores
    return pa.table(data)
