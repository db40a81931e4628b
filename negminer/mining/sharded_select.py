"""Selection in shards of anchors: plan, select each shard into its parts, merge the parts exactly.

The same selection as :func:`negminer.mining.streaming.derive_files` (whose helpers it uses),
cut so that the shards can run in other processes: :func:`plan_selection` reads two columns of
the candidate file once (the percentile bounds need every anchor's positive score), three
twice (the difficulty thresholds: quantiles of every candidate's margin) and cuts it into
consecutive anchor ranges of at most ``shard_anchors`` anchors; :func:`select_shard`
selects one range's candidates and writes its parts of every table; :func:`merge_selection`
writes the tables from the parts. The merged files have the bytes of ``derive_files``'s:

* published candidates: the parts concatenated in anchor order (the candidate file lists
  anchors in ascending order; one that does not is one shard); the score quantiles are exact,
  from the two passes of :class:`negminer.mining.quantiles.StreamedQuantiles` over the parts;
* training views: their rows follow the pairs' order, which need not be the anchors' order, so
  each part's rows carry their place in the whole view (``_order``: the pair's position, or
  for ``labeled-pair`` the position of the anchor's first pair); the merge interleaves the
  parts by it, holding a bounded window of rows of each part;
* counts: summed, the counts by reason in the order they first appear.

Memory of a shard: its candidates in batches, its anchors' negatives and its pairs' view rows;
of the merge: about :data:`MERGE_ROWS` view rows (and one row group of candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negminer.config import SelectionConfig
from negminer.mining.difficulty import STAGE_STEMS, TIERS, DifficultyThresholds
from negminer.mining.formats import text_array
from negminer.mining.strategies import percentile_bounds_of
from negminer.mining.streaming import (
    QUANTILE_COLUMNS,
    _anchor_pass,
    anchor_batches,
    feed_score_quantiles,
    named_quantiles,
    run_thresholds,
    score_quantile_kinds,
    select_batches,
)
from negminer.mining.views import negative_grids, view_slices, view_stems
from negminer.storage.parquet_stream import StagedParquetWriter, staged_writers

ORDER = "_order"
# View rows the merge holds at once, over all parts (at least MIN_PART_ROWS per part).
MERGE_ROWS = 1 << 18
MIN_PART_ROWS = 1024


class ShardRange(NamedTuple):
    """Anchors ``[first, stop)`` and their candidate rows ``[row_first, row_stop)``."""

    first: int
    stop: int
    row_first: int
    row_stop: int


class SelectionPlan(NamedTuple):
    """What every shard shares: the percentile bounds, whether to read in batches, the ranges,
    the difficulty thresholds."""

    bounds: tuple[float | None, float | None]
    batched: bool
    shards: list[ShardRange]
    difficulty: DifficultyThresholds


class ShardSelection(NamedTuple):
    """One shard's rows per table and counters (reasons in first-seen order, zeros kept)."""

    rows: dict[str, int]
    negatives: int
    anchors_short: int
    reasons: list[tuple[str, int]]
    by_difficulty: dict[str, int]


def plan_selection(
    candidates_path: str | Path, *, n_anchors: int, shard_anchors: int, config: SelectionConfig, batch_rows: int
) -> SelectionPlan:
    """The percentile bounds and the anchor ranges of at most `shard_anchors` anchors (one or more).

    A file whose anchors are not in ascending order (rows of an anchor apart, or anchors out
    of order) is one shard; one whose anchors' rows are apart is read in one batch, as
    ``derive_files`` does.

    Example:
        >>> plan = plan_selection("curated.parquet", n_anchors=5, shard_anchors=2,
        ...                       config=SelectionConfig(), batch_rows=1 << 20)  # doctest: +SKIP
        >>> [(s.first, s.stop) for s in plan.shards]  # doctest: +SKIP
        [(0, 2), (2, 4), (4, 5)]
    """
    if shard_anchors < 1:
        raise ValueError(f"shard_anchors must be at least 1, got {shard_anchors}")
    scan = _anchor_pass(Path(candidates_path), n_anchors, batch_rows)
    bounds = percentile_bounds_of(
        scan.first_positive[scan.present],
        min_score_percentile=config.min_score_percentile,
        max_score_percentile=config.max_score_percentile,
    )
    bounds = tuple(None if b is None else float(b) for b in bounds)
    difficulty = run_thresholds(candidates_path, config, batch_rows)
    total = int(scan.rows.sum())
    if not scan.ascending:
        return SelectionPlan(bounds, scan.grouped, [ShardRange(0, n_anchors, 0, total)], difficulty)
    ends = np.r_[0, np.cumsum(scan.rows)]
    starts = range(0, max(n_anchors, 1), shard_anchors)
    shards = [
        ShardRange(a, min(a + shard_anchors, n_anchors), int(ends[a]), int(ends[min(a + shard_anchors, n_anchors)]))
        for a in starts
    ]
    return SelectionPlan(bounds, True, shards, difficulty)


def select_shard(
    candidates_path: str | Path,
    out_paths: dict[str, str | Path],
    shard: ShardRange,
    *,
    anchors: pa.Table,
    docs: pa.Table,
    pairs: pa.Table,
    config: SelectionConfig,
    plan: SelectionPlan,
    anchor_texts: pa.Array | pa.ChunkedArray | None = None,
    doc_texts: Callable[[np.ndarray], pa.Array] | None = None,
    transform: Callable[[pa.Table], pa.Table] | None = None,
    rescore: Callable[[pa.Table], pa.Table] | None = None,
    keys: dict[str, np.ndarray | None] | None = None,
    batch_rows: int,
) -> ShardSelection:
    """Select the candidates of one anchor range and write its parts of every table.

    Args:
        candidates_path, anchors, docs, config, transform: as in
            :func:`negminer.mining.streaming.derive_files`; `anchors` and `docs` need their
            ``text`` column only when `anchor_texts` / `doc_texts` are not given.
        out_paths: the parts of ``candidates``, ``triplets``, (``config.output_scores``)
            ``scored`` and (``config.output_curriculum``) the stages; the view parts have an
            ``_order`` column for :func:`merge_selection`.
        shard: the anchor range and its rows (from `plan`).
        pairs: every pair, in output order (its positions order the views).
        plan: :func:`plan_selection`'s result.
        anchor_texts: the texts of the shard's anchors (default: from `anchors`).
        doc_texts: the texts of the given (sorted, unique) doc_idx; only the documents the
            shard's views show are asked for (default: from `docs`).
        rescore: the cross-encoder's scores for the rules
            (:class:`negminer.mining.rescore.CrossEncoderRescorer`), when the config names one.
        keys: :func:`negminer.mining.streaming.selection_keys` of every anchor and doc, computed
            once for all shards (default: from `anchors` and `docs`, which then need ids and keys).
        batch_rows: candidate rows read at a time (rounded up to whole anchors).
    """
    n_local, k = shard.stop - shard.first, config.num_negatives
    grid = negative_grids(n_local, k)
    tally = select_batches(
        Path(candidates_path),
        out_paths["candidates"],
        anchors=anchors,
        docs=docs,
        config=config,
        bounds=plan.bounds,
        difficulty=plan.difficulty,
        grid=grid,
        transform=transform,
        batch_rows=batch_rows if plan.batched else None,
        rows=(shard.row_first, shard.row_stop),
        first_anchor=shard.first,
        rescore=rescore,
        keys=keys,
    )
    pair_anchor = pairs.column("anchor_idx").to_numpy().astype(np.int64)
    positions = np.flatnonzero((pair_anchor >= shard.first) & (pair_anchor < shard.stop))
    local = pairs.take(pa.array(positions, pa.int64()))
    local = local.set_column(
        local.schema.get_field_index("anchor_idx"), "anchor_idx", pa.array(pair_anchor[positions] - shard.first)
    )
    if "score" in local.column_names:
        pair_scores = local.column("score").to_numpy()
    else:
        pair_scores = _last_positive(candidates_path, shard)[local.column("anchor_idx").to_numpy()]
    if anchor_texts is None:
        anchor_texts = anchors.column("text").slice(shard.first, n_local)
    if doc_texts is None:
        doc_texts = docs.column("text").combine_chunks().take
    local, compact, shown = _shown_docs(local, grid)
    texts = (text_array(anchor_texts), text_array(doc_texts(shown)))
    views = _write_view_parts(
        out_paths,
        local,
        positions,
        texts,
        (compact, grid[1], grid[2]),
        pair_scores,
        config,
        pairs_per_slice=max(1, batch_rows // k),
    )
    return ShardSelection(
        {"candidates": tally["rows"], **views},
        tally["negatives"],
        tally["anchors_short"],
        list(tally["reasons"].items()),
        tally["by_difficulty"],
    )


def _shown_docs(pairs: pa.Table, grid: tuple[np.ndarray, ...]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The documents the views show (positives, chosen negatives), sorted; pairs and negatives
    with their doc_idx replaced by positions in that list."""
    pair_doc = pairs.column("doc_idx").to_numpy().astype(np.int64)
    chosen = grid[0] >= 0
    shown = np.unique(np.concatenate([pair_doc, grid[0][chosen]]))
    compact = np.full(grid[0].shape, -1, np.int64)
    compact[chosen] = np.searchsorted(shown, grid[0][chosen])
    column = pa.array(np.searchsorted(shown, pair_doc), pa.int64())
    return pairs.set_column(pairs.schema.get_field_index("doc_idx"), "doc_idx", column), compact, shown


def _last_positive(candidates_path: str | Path, shard: ShardRange) -> np.ndarray:
    """(anchors of the shard,) positive_score at each anchor's last row, NaN if it has none."""
    last = np.full(shard.stop - shard.first, np.nan, np.float32)
    rows = (shard.row_first, shard.row_stop)
    for table in anchor_batches(candidates_path, 1 << 20, columns=["anchor_idx", "positive_score"], rows=rows):
        anchor = table.column("anchor_idx").to_numpy().astype(np.int64) - shard.first
        last[anchor] = table.column("positive_score").to_numpy(zero_copy_only=False)
    return last


def _write_view_parts(
    out_paths: dict[str, str | Path],
    pairs: pa.Table,
    positions: np.ndarray,
    texts: tuple[pa.Array, pa.Array],
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    pair_scores: np.ndarray,
    config: SelectionConfig,
    *,
    pairs_per_slice: int,
) -> dict[str, int]:
    """The shard's rows of every view, each with its place in the whole view."""
    fmt = config.output_format
    step = (pairs.num_rows or 1) if fmt == "labeled-pair" else pairs_per_slice
    with staged_writers({stem: out_paths[stem] for stem in view_stems(config)}) as writers:
        for start in range(0, max(pairs.num_rows, 1), step):
            part = pairs.slice(start, step)
            order = _view_order(part, positions[start : start + step], grid[0], fmt)
            views = view_slices(part, texts, grid, pair_scores[start : start + step], config)
            for stem, (table, rows) in views.items():
                keys = order if rows is None else order[rows]
                writers[stem].write(_with_order(table, pa.array(keys, pa.int64())))
    return {stem: writer.rows for stem, writer in writers.items()}


def _with_order(view: pa.Table, order: pa.Array) -> pa.Table:
    if len(order) != view.num_rows:
        raise RuntimeError(f"view of {view.num_rows} rows got {len(order)} order keys")
    return view.append_column(ORDER, order)


def _view_order(pairs: pa.Table, positions: np.ndarray, negatives: np.ndarray, fmt: str) -> np.ndarray:
    """Each view row's key in the whole view: the position of its pair (of its anchor's first pair).

    Rows of one key are consecutive in one part, so a stable merge by key restores the view.
    """
    pair_anchor = pairs.column("anchor_idx").to_numpy().astype(np.int64)
    valid = negatives[pair_anchor] >= 0
    if fmt == "triplet":
        return np.repeat(positions, valid.sum(axis=1))
    if fmt == "n-tuple":
        return positions[valid.all(axis=1)]
    if fmt == "labeled-list":
        return positions[valid.any(axis=1)]
    # labeled-pair: per anchor (by its first pair) its positives, then its negatives.
    uniq, first = np.unique(pair_anchor, return_index=True)
    by_first = np.argsort(first, kind="stable")
    rows = np.bincount(pair_anchor, minlength=len(negatives))[uniq] + (negatives[uniq] >= 0).sum(axis=1)
    return np.repeat(positions[first[by_first]], rows[by_first])


def merge_selection(
    parts: list[dict[str, str | Path]], out_paths: dict[str, str | Path]
) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """Write every table from the shards' parts (in anchor order); (rows per table, score quantiles)."""
    rows, quantiles = _merge_candidates([part["candidates"] for part in parts], out_paths["candidates"])
    counts = {"candidates": rows}
    for stem in ("triplets", "scored", *STAGE_STEMS):
        if stem in parts[0]:
            counts[stem] = _merge_ordered([part[stem] for part in parts], out_paths[stem])
    return counts, quantiles


def _merge_candidates(parts: list[str | Path], out_path: str | Path) -> tuple[int, dict[str, dict[str, float]]]:
    """Concatenate the candidate parts; their score quantiles (first pass over the parts'
    score columns, second pass while the rows are copied)."""
    kinds = score_quantile_kinds()
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(columns=list(QUANTILE_COLUMNS)):
            feed_score_quantiles(kinds, "first", batch)
    with StagedParquetWriter(out_path) as writer:
        for part in parts:
            source = pq.ParquetFile(part)
            for group in range(source.num_row_groups):
                table = source.read_row_group(group)
                writer.write(table)
                feed_score_quantiles(kinds, "second", table)
        writer.commit()
    return writer.rows, named_quantiles(kinds)


def _merge_ordered(parts: list[str | Path], out_path: str | Path) -> int:
    """Interleave view parts (each sorted by ``_order``) into one view in ``_order`` order.

    Each round takes, from every part's window, the rows up to the smallest last key of the
    windows (no part holds a smaller key further on), sorts them stably and writes them.
    """
    window = max(MIN_PART_ROWS, MERGE_ROWS // max(len(parts), 1))
    sources = [_tables(part, window) for part in parts]
    buffers = [next(source, None) for source in sources]
    with StagedParquetWriter(out_path) as writer:
        if all(buffer is None for buffer in buffers):
            writer.write(pq.ParquetFile(parts[0]).schema_arrow.empty_table().drop_columns([ORDER]))
        while any(buffer is not None for buffer in buffers):
            bound = min(buffer.column(ORDER)[-1].as_py() for buffer in buffers if buffer is not None)
            taken = []
            for i, buffer in enumerate(buffers):
                if buffer is None:
                    continue
                n = int(np.searchsorted(buffer.column(ORDER).to_numpy(), bound, side="right"))
                taken.append(buffer.slice(0, n))
                rest = buffer.slice(n)
                buffers[i] = rest if rest.num_rows else next(sources[i], None)
            table = pa.concat_tables(taken)
            order = np.argsort(table.column(ORDER).to_numpy(), kind="stable")
            writer.write(table.take(pa.array(order)).drop_columns([ORDER]))
        writer.commit()
    return writer.rows


def _tables(path: str | Path, rows: int) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def merge_tier_counts(parts: list[dict[str, int]]) -> dict[str, int]:
    """Chosen negatives per tier summed over the shards (every tier named)."""
    return {tier: sum(part.get(tier, 0) for part in parts) for tier in TIERS}


def merge_reasons(parts: list[list[tuple[str, int]]]) -> dict[str, Any]:
    """Counts by reason summed over the shards, in first-seen order, without the zeros."""
    total: dict[str, int] = {}
    for part in parts:
        for reason, n in part:
            total[reason] = total.get(reason, 0) + n
    return {reason: n for reason, n in total.items() if n}
