"""Selection in bounded memory: a candidate file derived in batches of whole anchors.

:func:`derive_files` is the one selection: ``mine`` (the select stage) and ``refilter`` (a new
version from an old version's candidate table, without embedding or searching again) both
call it, so both give the same bytes for the same candidates and settings. It writes the
tables of a dataset version while holding one batch of candidates at a time, plus arrays with
one entry per anchor (its positive score, its chosen negatives: ``n_anchors ×
num_negatives``), the pairs, and the anchor and doc texts the training view is made of. The
output does not depend on the batch size: one batch or many give the same Parquet bytes.

Tables it writes: ``triplets`` (the training view, :mod:`negminer.mining.formats`),
``candidates`` (every retrieved candidate with ``anchor_id``, ``doc_id``, raw ``rank``,
``score``, ``positive_score``, ``score_minus_positive``, ``reason``, ``negative_slot`` and
``difficulty``), with ``output_scores`` ``scored`` (the training view plus scores and
difficulty) and with ``output_curriculum`` the curriculum stages
(:data:`negminer.mining.difficulty.STAGE_STEMS`: the training view's rows by difficulty).

What needs the whole table, and how it is had without holding it:

* percentile bounds (``min_score_percentile`` / ``max_score_percentile``): percentiles of one
  positive score per anchor, gathered in a first pass over two columns;
* difficulty thresholds: exact quantiles of the margins, two passes over three columns
  (:func:`negminer.mining.difficulty.file_thresholds`);
* ``score_quantiles``: exact, in two passes over the written candidates
  (:class:`negminer.mining.quantiles.StreamedQuantiles`);
* counts: summed over batches (an anchor's rows are never split between batches);
* audit decisions: resolved against the pairs once, applied to each batch
  (:class:`negminer.curation.decisions.BatchedFeedback`, passed as ``transform``);
* the views: built from the pairs and the per-anchor negatives, in slices of pairs; the
  ``labeled-pair`` format groups rows by anchor and is built in one piece.

Candidate files list each anchor's rows together (search writes them by anchor; curation,
audit and selection keep the row order). A file that does not is selected in one batch,
with a warning.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import SelectionConfig
from negminer.mining.derive import DERIVED_COLUMNS, QUANTILES, SELECT_OPTIONS, text_groups, with_ids
from negminer.mining.difficulty import (
    TIERS,
    DifficultyThresholds,
    candidate_tiers,
    file_thresholds,
    fill_tier_grid,
    tier_counts,
    with_difficulty,
)
from negminer.mining.formats import fill_negative_grids
from negminer.mining.quantiles import StreamedQuantiles
from negminer.mining.rescore import load_rescorer, texts_of
from negminer.mining.strategies import percentile_bounds_of, select_negatives, stable_hash64
from negminer.mining.views import negative_grids, write_views
from negminer.storage.parquet_stream import StagedParquetWriter, read_row_range

logger = logging.getLogger(__name__)

# Candidate rows read per batch (a batch is extended to the end of its last anchor).
BATCH_ROWS = 1 << 20


class DerivedFiles(NamedTuple):
    """Result of :func:`derive_files`: written paths and rows per table stem, and the manifest's figures."""

    paths: dict[str, Path]
    rows: dict[str, int]
    counts: dict[str, Any]
    score_quantiles: dict[str, dict[str, float]]
    selection: dict[str, Any]


class _AnchorPass(NamedTuple):
    grouped: bool
    first_positive: np.ndarray  # (n_anchors,) positive_score at the anchor's first row, NaN if absent
    last_positive: np.ndarray  # (n_anchors,) positive_score at the anchor's last row, NaN if absent
    present: np.ndarray  # (n_anchors,) bool
    rows: np.ndarray  # (n_anchors,) int64 candidate rows of each anchor
    ascending: bool  # rows ordered by anchor_idx (so an anchor range is a row range)


def derive_files(
    candidates_path: str | Path,
    out_paths: dict[str, str | Path],
    *,
    anchors: pa.Table,
    docs: pa.Table,
    pairs: pa.Table,
    config: SelectionConfig,
    transform: Callable[[pa.Table], pa.Table] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> DerivedFiles:
    """Select negatives from the candidate file in batches and write the version's tables.

    Args:
        candidates_path: candidate table (:mod:`negminer.mining.search`, possibly curated or
            already published), each anchor's rows together.
        out_paths: where to write ``candidates`` (the published candidates), ``triplets``,
            with ``config.output_scores`` ``scored`` and with ``config.output_curriculum`` the
            stages (:data:`negminer.mining.difficulty.STAGE_STEMS`); each appears only when complete.
        anchors: ``anchor_id`` and ``text`` by anchor_idx.
        docs: ``doc_id`` and ``text`` by doc_idx; with ``text_key`` (normalised-text key),
            an anchor never gets two documents of the same text as negatives.
        pairs: ``anchor_idx``, ``doc_idx`` in output order (after audit decisions, when there
            are any); an optional ``score`` column (the pair's cosine) feeds the scored view,
            else the anchor's lowest positive score.
        config: the selection settings (``MineConfig.selection``, or a whole ``MineConfig``).
        transform: applied to each candidate batch before selection, e.g.
            :class:`negminer.curation.decisions.BatchedFeedback`.
        batch_rows: candidate rows read at a time (rounded up to whole anchors).

    Returns:
        DerivedFiles(paths, rows per stem, counts, score quantiles, effective thresholds).

    Example:
        >>> out = {"candidates": "selected.parquet", "triplets": "triplets.parquet"}
        >>> derived = derive_files("candidates.parquet", out, anchors=a, docs=d, pairs=p,
        ...                        config=MineConfig())  # doctest: +SKIP
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    candidates_path = Path(candidates_path)
    n_anchors, k = anchors.num_rows, config.num_negatives
    first = _anchor_pass(candidates_path, n_anchors, batch_rows)
    if not first.grouped:
        logger.warning("%s: anchors' rows are not together; selecting it in one batch", candidates_path)
    bounds = percentile_bounds_of(
        first.first_positive[first.present],
        min_score_percentile=config.min_score_percentile,
        max_score_percentile=config.max_score_percentile,
    )
    difficulty = run_thresholds(candidates_path, config, batch_rows)
    grids = negative_grids(n_anchors, k)
    tally = select_batches(
        candidates_path,
        out_paths["candidates"],
        anchors=anchors,
        docs=docs,
        config=config,
        bounds=bounds,
        difficulty=difficulty,
        grid=grids,
        transform=transform,
        batch_rows=batch_rows if first.grouped else None,
        rescore=load_rescorer(
            config,
            pairs=pairs,
            anchor_texts=texts_of(anchors.column("text")),
            doc_texts=texts_of(docs.column("text")),
        ),
    )
    rows = {"candidates": tally["rows"]}
    rows.update(
        write_views(
            out_paths,
            pairs,
            anchors,
            docs,
            grids,
            first.last_positive,
            config,
            pairs_per_slice=max(1, batch_rows // k),
        )
    )
    counts = {
        "triplet_rows": rows["triplets"],
        "negatives": tally["negatives"],
        "negatives_by_difficulty": tally["by_difficulty"],
        "anchors_short": tally["anchors_short"],
        "dropped_by_reason": {reason: n for reason, n in tally["reasons"].items() if n},
    }
    thresholds = {
        "min_score_from_percentile": bounds[0],
        "max_score_from_percentile": bounds[1],
        "difficulty_thresholds": difficulty.to_json(),
    }
    quantiles = streamed_score_quantiles(out_paths["candidates"], batch_rows=batch_rows)
    paths = {stem: Path(out_paths[stem]) for stem in rows}
    return DerivedFiles(paths, rows, counts, quantiles, thresholds)


def run_thresholds(candidates_path: str | Path, config: SelectionConfig, batch_rows: int) -> DifficultyThresholds:
    """The run's difficulty thresholds from every candidate of the file (before selection)."""
    return file_thresholds(
        candidates_path,
        medium_quantile=config.difficulty_medium_quantile,
        hard_quantile=config.difficulty_hard_quantile,
        batch_rows=batch_rows,
    )


def _anchor_pass(path: Path, n_anchors: int, batch_rows: int) -> _AnchorPass:
    """Each anchor's positive score and rows, and whether each anchor's rows are together."""
    first_pos = np.full(n_anchors, np.nan, np.float32)
    last_pos = np.full(n_anchors, np.nan, np.float32)
    present = np.zeros(n_anchors, bool)
    counts = np.zeros(n_anchors, np.int64)
    grouped, ascending, previous = True, True, -1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["anchor_idx", "positive_score"]):
        anchor = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
        score = batch.column(1).to_numpy(zero_copy_only=False)
        if len(anchor) == 0:
            continue
        starts = np.r_[anchor[0] != previous, anchor[1:] != anchor[:-1]]
        runs = anchor[starts]
        if grouped and (len(np.unique(runs)) != len(runs) or present[runs].any()):
            grouped = False
        ascending = ascending and anchor[0] >= previous and bool(np.all(anchor[1:] >= anchor[:-1]))
        counts += np.bincount(anchor, minlength=n_anchors)
        uniq, at = np.unique(anchor, return_index=True)
        new = ~present[uniq]
        first_pos[uniq[new]] = score[at[new]]
        last_pos[anchor] = score
        present[uniq] = True
        previous = anchor[-1]
    return _AnchorPass(grouped, first_pos, last_pos, present, counts, grouped and ascending)


def anchor_batches(
    path: str | Path,
    batch_rows: int | None,
    *,
    columns: list[str] | None = None,
    rows: tuple[int, int] | None = None,
) -> Iterator[pa.Table]:
    """The candidate file in tables of about `batch_rows` rows that never split an anchor.

    None reads the whole file (or row range) as one table. A file or range without rows gives
    one empty table. `columns` (``anchor_idx`` among them) reads only those; `rows`
    (``[first, stop)``, of whole anchors) reads only those rows, only their row groups.
    """
    parquet = pq.ParquetFile(path)
    if rows is not None and rows[0] >= rows[1]:
        yield parquet.schema_arrow.empty_table().select(columns or parquet.schema_arrow.names)
        return
    if batch_rows is None or parquet.metadata.num_rows == 0:
        yield parquet.read(columns=columns) if rows is None else read_row_range(path, *rows, columns=columns)
        return
    pending: pa.Table | None = None
    for batch in _row_batches(parquet, batch_rows, columns, rows):
        table = pa.Table.from_batches([batch])
        table = table if pending is None else pa.concat_tables([pending, table])
        anchor = table.column("anchor_idx").to_numpy()
        cut = int(np.flatnonzero(anchor != anchor[-1])[-1]) + 1 if (anchor != anchor[-1]).any() else 0
        pending = table.slice(cut)
        if cut:
            yield table.slice(0, cut)
    if pending is not None and pending.num_rows:
        yield pending


def _row_batches(
    parquet: pq.ParquetFile, batch_rows: int, columns: list[str] | None, rows: tuple[int, int] | None
) -> Iterator[pa.RecordBatch]:
    """Record batches of the file, or of its rows ``[first, stop)`` (only the row groups holding them)."""
    if rows is None:
        yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)
        return
    first, stop = rows
    groups, begin, offset = [], None, 0
    for group in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + n > first:
            groups.append(group)
            begin = offset if begin is None else begin
        offset += n
    position = begin or 0
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
        low, high = max(first - position, 0), min(stop - position, batch.num_rows)
        if high > low:
            yield batch.slice(low, high - low)
        position += batch.num_rows
        if position >= stop:
            return


def select_batches(
    candidates_path: Path,
    out_path: str | Path,
    *,
    anchors: pa.Table,
    docs: pa.Table,
    config: SelectionConfig,
    bounds: tuple[float | None, float | None],
    difficulty: DifficultyThresholds,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    transform: Callable[[pa.Table], pa.Table] | None,
    batch_rows: int | None,
    rows: tuple[int, int] | None = None,
    first_anchor: int = 0,
    rescore: Callable[[pa.Table], pa.Table] | None = None,
    keys: dict[str, np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Select each batch, write the published candidates, fill the per-anchor negatives.

    `grid` is :func:`negative_grids`'s (doc_idx, score, tier code), filled in place. `rescore`
    (:class:`negminer.mining.rescore.CrossEncoderRescorer`) adds the cross-encoder's columns to
    each batch after `transform`, once the columns of an earlier selection are dropped. `keys`
    (:func:`selection_keys`, e.g. memory-mapped) saves computing them from `anchors` and `docs`. `rows`
    limits it to candidate rows ``[first, stop)`` (whole anchors); the grids' row 0 is then
    anchor `first_anchor`. The counts by reason keep the reasons that counted none.
    """
    options = config.model_dump(include=SELECT_OPTIONS)
    hashes = keys if keys is not None else selection_keys(anchors, docs)
    reasons: Counter[str] = Counter()
    by_difficulty: Counter[str] = Counter({tier: 0 for tier in TIERS})
    tally = {"rows": 0, "negatives": 0, "anchors_short": 0}
    with StagedParquetWriter(out_path) as writer:
        for batch in anchor_batches(candidates_path, batch_rows, rows=rows):
            batch = transform(batch) if transform is not None else batch
            base = batch.drop_columns([c for c in DERIVED_COLUMNS if c in batch.column_names])
            base = rescore(base) if rescore is not None else base
            selection = select_negatives(base, **hashes, percentile_bounds=bounds, **options)
            published = with_ids(selection.candidates, anchors, docs)
            codes = candidate_tiers(published, difficulty)
            published = with_difficulty(published, codes)
            writer.write(published)
            is_chosen = pc.is_valid(published.column("negative_slot"))
            chosen = published.filter(is_chosen)
            chosen_codes = codes[is_chosen.to_numpy(zero_copy_only=False)]
            by_difficulty.update(tier_counts(chosen_codes))
            if first_anchor:
                local = pc.subtract(
                    chosen.column("anchor_idx"), pa.scalar(first_anchor, chosen.schema.field("anchor_idx").type)
                )
                chosen = chosen.set_column(chosen.schema.get_field_index("anchor_idx"), "anchor_idx", local)
            fill_negative_grids(grid[:2], chosen)
            slots = chosen.column("negative_slot").to_numpy()
            fill_tier_grid(grid[2], chosen.column("anchor_idx").to_numpy(), slots, chosen_codes)
            reasons.update(selection.reason_counts)
            tally["rows"] += published.num_rows
            tally["negatives"] += chosen.num_rows
            tally["anchors_short"] += selection.anchors_short
        writer.commit()
    return {**tally, "reasons": dict(reasons), "by_difficulty": dict(by_difficulty)}


def selection_keys(anchors: pa.Table, docs: pa.Table) -> dict[str, np.ndarray | None]:
    """What :func:`select_negatives` takes besides the rows: the ids' seeded-sampling hashes and
    each doc's text group (None without ``text_key``)."""
    return {
        "anchor_hash": stable_hash64(anchors.column("anchor_id").to_pylist()),
        "doc_hash": stable_hash64(docs.column("doc_id").to_pylist()),
        "doc_text_group": text_groups(docs),
    }


def streamed_score_quantiles(path: str | Path, *, batch_rows: int = BATCH_ROWS) -> dict[str, dict[str, float]]:
    """Quantiles (:data:`negminer.mining.derive.QUANTILES`) of a published candidate file's scores.

    Exact (``numpy.quantile``), read in two passes of `batch_rows` rows: the chosen negatives'
    scores (``negative``), every candidate's (``candidate``) and the retrieved positives'
    (``positive_retrieved``); a kind without values maps to ``{}``.
    """
    kinds = score_quantile_kinds()
    for step in ("first", "second"):
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(QUANTILE_COLUMNS))
        for batch in batches:
            feed_score_quantiles(kinds, step, batch)
    return named_quantiles(kinds)


# The published candidates' columns the score quantiles are read from.
QUANTILE_COLUMNS = ("score", "is_positive", "negative_slot")


def score_quantile_kinds() -> dict[str, StreamedQuantiles]:
    """One :class:`StreamedQuantiles` per kind of score the manifest reports."""
    return {name: StreamedQuantiles(QUANTILES) for name in ("negative", "candidate", "positive_retrieved")}


def feed_score_quantiles(kinds: dict[str, StreamedQuantiles], step: str, batch: pa.RecordBatch | pa.Table) -> None:
    """Pass `step` (``first`` or ``second``) of every kind over a batch of published candidates."""
    score = batch.column("score").to_numpy(zero_copy_only=False)
    chosen = pc.is_valid(batch.column("negative_slot")).to_numpy(zero_copy_only=False)
    positive = batch.column("is_positive").to_numpy(zero_copy_only=False)
    for name, values in (
        ("negative", score[chosen]),
        ("candidate", score),
        ("positive_retrieved", score[positive]),
    ):
        getattr(kinds[name], step)(values)


def named_quantiles(kinds: dict[str, StreamedQuantiles]) -> dict[str, dict[str, float]]:
    """The manifest's ``score_quantiles`` once both passes are done."""
    return {name: _named(q) for name, q in kinds.items()}


def _named(quantiles: StreamedQuantiles) -> dict[str, float]:
    values = quantiles.values()
    if not values:
        return {}
    return {f"q{round(p * 100):02d}": round(v, 4) for p, v in zip(quantiles.probabilities, values, strict=True)}
