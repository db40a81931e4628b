"""The views of a selection: the training view, the scored view and the curriculum stages.

Built slice by slice of the pairs from the per-anchor grids of chosen negatives
(:func:`negative_grids`: doc_idx, score, tier code), by :func:`write_views` in one process
(:func:`negminer.mining.streaming.derive_files`) or per shard
(:mod:`negminer.mining.sharded_select`), from the same :func:`view_slices`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from negminer.config import SelectionConfig
from negminer.mining.difficulty import STAGE_STEMS
from negminer.mining.formats import scored_view, text_array, training_view, view_tiers
from negminer.storage.parquet_stream import staged_writers


def negative_grids(n_anchors: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty (n_anchors, k) grids of chosen negatives: doc_idx (-1), score (NaN), tier code (-1)."""
    return (
        np.full((n_anchors, k), -1, np.int64),
        np.full((n_anchors, k), np.nan, np.float32),
        np.full((n_anchors, k), -1, np.int8),
    )


def write_views(
    out_paths: dict[str, str | Path],
    pairs: pa.Table,
    anchors: pa.Table,
    docs: pa.Table,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    lowest_positive: np.ndarray,
    config: SelectionConfig,
    *,
    pairs_per_slice: int,
) -> dict[str, int]:
    """Write the training view (and the scored view, the curriculum stages) slice by slice of the pairs."""
    texts = (text_array(anchors.column("text")), text_array(docs.column("text")))
    step = (pairs.num_rows or 1) if config.output_format == "labeled-pair" else pairs_per_slice
    if "score" in pairs.column_names:
        pair_scores = pairs.column("score").to_numpy()
    else:
        pair_scores = lowest_positive[pairs.column("anchor_idx").to_numpy()]
    with staged_writers({stem: out_paths[stem] for stem in view_stems(config)}) as writers:
        for start in range(0, max(pairs.num_rows, 1), step):
            part = pairs.slice(start, step)
            for stem, (table, _) in view_slices(part, texts, grid, pair_scores[start : start + step], config).items():
                writers[stem].write(table)
    return {stem: writer.rows for stem, writer in writers.items()}


def view_stems(config: SelectionConfig) -> list[str]:
    """The views `config` asks for: ``triplets``, then ``scored`` and the curriculum stages."""
    return [
        "triplets",
        *(["scored"] if config.output_scores else []),
        *(STAGE_STEMS if config.output_curriculum else ()),
    ]


def view_slices(
    pairs: pa.Table,
    texts: tuple[pa.Array, pa.Array],
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    pair_scores: np.ndarray,
    config: SelectionConfig,
) -> dict[str, tuple[pa.Table, np.ndarray | None]]:
    """Each view's rows for one slice of pairs: stem -> (table, the training view's rows it holds; None: all).

    A curriculum stage holds the training view's rows of its tier (their hardest negative's).
    """
    fmt = config.output_format
    view = training_view(pairs, *texts, grid[0], output_format=fmt)
    out: dict[str, tuple[pa.Table, np.ndarray | None]] = {"triplets": (view, None)}
    if config.output_scores:
        scored = scored_view(
            pairs,
            *texts,
            grid[0],
            pair_scores=pair_scores,
            negative_scores=grid[1],
            output_format=fmt,
            negative_tiers=grid[2],
        )
        out["scored"] = (scored, None)
    if config.output_curriculum:
        codes = view_tiers(pairs, grid[0], grid[2], output_format=fmt)
        for code, stem in enumerate(STAGE_STEMS):
            rows = np.flatnonzero(codes == code)
            out[stem] = (view.take(pa.array(rows, pa.int64())), rows)
    return out
