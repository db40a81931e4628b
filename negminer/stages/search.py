"""Search stage: `search_depth` candidates per anchor, searched in shards of anchors, merged.

Each anchor is searched in exactly one shard against the whole index, so the merged table
equals a single search row for row. A shard's part is named by its anchor range, so a run
resumed with another shard size reuses only the parts of its own shards.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow.parquet as pq

from negminer.config import IndexConfig, RetrievalConfig
from negminer.mining.allocator import releases_memory
from negminer.stages.index import index_stage, open_index
from negminer.stages.refs import Bm25Ref, DocRange, IndexRef, SearchPartRef, SearchRef, SecondDenseRef
from negminer.stages.workdir import doc_keys_file, finish, finished

if TYPE_CHECKING:
    from negminer.mining.search import Hybrid


def search_shards(n_anchors: int, *, config: RetrievalConfig) -> list[DocRange]:
    """Consecutive anchor ranges of at most ``config.search_shard_size`` anchors (always one or more).

    Example:
        >>> [(s.first, s.stop) for s in search_shards(5, config=RetrievalConfig(search_shard_size=2))]
        [(0, 2), (2, 4), (4, 5)]
    """
    return consecutive_ranges(n_anchors, config.search_shard_size)


def consecutive_ranges(n: int, size: int) -> list[DocRange]:
    """Ranges ``[first, stop)`` of at most `size` rows covering `n` rows (one empty range when `n` is 0)."""
    starts = range(0, max(n, 1), size)
    return [DocRange(shard=i, first=first, stop=min(first + size, n)) for i, first in enumerate(starts)]


class _Sources(NamedTuple):
    """The candidate sources a search reads besides the first model's index (None: not in ``mine.sources``)."""

    bm25: Bm25Ref | None
    second: SecondDenseRef | None


def _stem(config: RetrievalConfig, index: IndexRef, second: SecondDenseRef | None) -> str:
    """Names the candidate table: depth and index, plus the sources and fusion of a hybrid search."""
    stem = f"d{config.search_depth}-{index.key}"
    if not config.hybrid:
        return stem
    from negminer.stages.bm25 import bm25_key

    key = {"sources": config.sources, "fusion": config.fusion, "rrf_k": config.rrf_k, "bm25": bm25_key()}
    if second is not None:  # the second model's vectors (their folder's name) and index
        key["dense2"] = [Path(second.work_dir).name, second.index.key]
    return f"{stem}-h{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]}"


def _sources(work_dir: Path, config: RetrievalConfig, bm25: Bm25Ref | None, second: SecondDenseRef | None) -> _Sources:
    """The sources ``config.sources`` names: the BM25 index (built here when not given) and dense2's reference."""
    if "bm25" in config.sources and bm25 is None:
        from negminer.stages.bm25 import bm25_stage

        bm25 = bm25_stage(work_dir, config=config)
    return _Sources(bm25 if "bm25" in config.sources else None, _second(config, second))


def _sources_entry(config: RetrievalConfig, sources: _Sources, counts: dict[str, int]) -> dict | None:
    """The manifest's ``sources``: what proposed the candidates and how they were fused."""
    if not config.hybrid:
        return None
    entry = {
        "sources": list(config.sources),
        "fusion": config.fusion,
        "rrf_k": config.rrf_k,
        "rows_by_source": dict(sorted(counts.items())),
        "bm25": sources.bm25.summary() if sources.bm25 else None,
    }
    if sources.second is not None:
        entry["dense2"] = sources.second.summary()
    return entry


def _second(config: RetrievalConfig, second: SecondDenseRef | None) -> SecondDenseRef | None:
    """The dense2 source's reference, which a search naming dense2 must be given (see stages/second_dense.py)."""
    if "dense2" not in config.sources:
        return None
    if second is None:
        raise ValueError("mine.sources names dense2: pass second_dense_stage's reference as `second`")
    return second


def _marker(work_dir: Path, stem: str) -> Path:
    return work_dir / f"search-{stem}.json"


def _part_path(work_dir: Path, stem: str, shard: DocRange) -> Path:
    return work_dir / f"candidates-{stem}.part{shard.first:08d}-{shard.stop:08d}.parquet"


def _search(
    work_dir: Path,
    out_path: Path,
    *,
    config: RetrievalConfig,
    index_config: IndexConfig,
    index: IndexRef,
    sources: _Sources,
    anchor_range: tuple[int, int] | None = None,
):
    from negminer.mining.search import search_candidates

    pairs = pq.read_table(work_dir / "pairs.parquet")
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["text_key"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["text_key"])
    return search_candidates(
        np.load(work_dir / "anchors.npy", mmap_mode="r"),
        np.load(work_dir / "docs.npy", mmap_mode="r"),
        out_path,
        pair_anchor=pairs.column("anchor_idx").to_numpy(),
        pair_doc=pairs.column("doc_idx").to_numpy(),
        doc_text_keys=docs.column("text_key"),
        anchor_text_keys=anchors.column("text_key"),
        search_depth=config.search_depth,
        batch_size=config.search_batch_size,
        index=open_index(index, index_config, loaded_in_turn=sources.second is not None)
        if "dense" in config.sources
        else None,
        anchor_range=anchor_range,
        hybrid=_hybrid(work_dir, config, sources, index_config),
    )


def _hybrid(work_dir: Path, config: RetrievalConfig, sources: _Sources, index_config: IndexConfig) -> Hybrid | None:
    from negminer.mining.bm25 import Bm25Shard, text_batches
    from negminer.mining.search import Hybrid, SecondView

    if not config.hybrid:
        return None
    bm25, view = sources.bm25, None
    if sources.second is not None:
        folder = Path(sources.second.work_dir)
        view = SecondView(
            anchor_vectors=np.load(folder / "anchors.npy", mmap_mode="r"),
            doc_vectors=np.load(folder / "docs.npy", mmap_mode="r"),
            index=open_index(sources.second.index, index_config, loaded_in_turn=True),
        )
    return Hybrid(
        second=view,
        sources=config.sources,
        fusion=config.fusion,
        rrf_k=config.rrf_k,
        bm25_shards=[Bm25Shard(s.path, s.first, s.stop) for s in bm25.shards] if bm25 else [],
        anchor_texts=lambda first, stop: text_batches(work_dir / "anchors.parquet", first=first, stop=stop),
        doc_keys=np.load(bm25.doc_keys if bm25 else doc_keys_file(work_dir), mmap_mode="r"),
    )


def search_stage(
    work_dir: str | Path,
    *,
    config: RetrievalConfig,
    index_config: IndexConfig,
    index: IndexRef | None = None,
    bm25: Bm25Ref | None = None,
    second: SecondDenseRef | None = None,
) -> SearchRef:
    """Retrieve `search_depth` candidates per anchor into ``candidates-d<depth>-<index key>.parquet``.

    `index` is the index stage's reference; without it the index is built here, and so is
    the BM25 index (`bm25`) when ``config.sources`` names bm25. The flow runs the same search
    as shards (:func:`search_shard_stage`, :func:`search_merge_stage`).
    """
    work_dir = Path(work_dir)
    index = index or index_stage(work_dir, config=index_config, retrieval=config)
    stem = _stem(config, index, _second(config, second))
    if ref := finished(_marker(work_dir, stem), SearchRef):
        return ref
    sources = _sources(work_dir, config, bm25, second)
    result = _search(
        work_dir,
        work_dir / f"candidates-{stem}.parquet",
        config=config,
        index_config=index_config,
        index=index,
        sources=sources,
    )
    ref = SearchRef(
        candidates=str(result.path),
        rows=result.rows,
        depth=result.depth,
        index=index.summary(),
        seconds=round(result.seconds, 3),
        sources=_sources_entry(config, sources, result.source_counts or {}),
    )
    return finish(_marker(work_dir, stem), ref)


@releases_memory
def search_shard_stage(
    work_dir: str | Path,
    shard: DocRange,
    *,
    config: RetrievalConfig,
    index_config: IndexConfig,
    index: IndexRef,
    bm25: Bm25Ref | None = None,
    second: SecondDenseRef | None = None,
) -> SearchPartRef:
    """Search one shard of anchors (:func:`search_shards`) into its part of the candidate table.

    Idempotent: a finished part of the same anchor range, or a finished merged table, is not
    searched again.
    """
    work_dir = Path(work_dir)
    stem = _stem(config, index, _second(config, second))
    part = _part_path(work_dir, stem, shard)
    if _marker(work_dir, stem).exists():
        return SearchPartRef(shard=shard.shard, rows=None, merged=True)
    if ref := finished(part.with_suffix(".json"), SearchPartRef):
        return ref
    result = _search(
        work_dir,
        part,
        config=config,
        index_config=index_config,
        index=index,
        sources=_sources(work_dir, config, bm25, second),
        anchor_range=(shard.first, shard.stop),
    )
    ref = SearchPartRef(
        shard=shard.shard,
        first=shard.first,
        stop=shard.stop,
        path=str(part),
        rows=result.rows,
        depth=result.depth,
        seconds=round(result.seconds, 3),
        source_counts=result.source_counts,
    )
    return finish(part.with_suffix(".json"), ref)


@releases_memory
def search_merge_stage(
    work_dir: str | Path,
    shards: list[DocRange],
    *,
    config: RetrievalConfig,
    index_config: IndexConfig,
    index: IndexRef,
    bm25: Bm25Ref | None = None,
    second: SecondDenseRef | None = None,
) -> SearchRef:
    """Concatenate the shards' parts, in anchor order, into the candidate table of :func:`search_stage`.

    Parts still missing (a lost worker) are searched here. Runs on the same inputs share the
    work folder and may run at once: a run that finds the merge done by another (before or
    after its shards, or its parts removed by that merge) returns that merge's reference.
    """
    work_dir = Path(work_dir)
    stem = _stem(config, index, _second(config, second))
    if ref := finished(_marker(work_dir, stem), SearchRef):
        return ref
    sources = _sources(work_dir, config, bm25, second)
    options = {"config": config, "index_config": index_config, "index": index, **sources._asdict()}
    parts = [search_shard_stage(work_dir, shard, **options) for shard in shards]
    ref = finished(_marker(work_dir, stem), SearchRef) or _merge_parts(work_dir, stem, parts, index, config, sources)
    _remove_parts(work_dir, stem)
    return ref


def _merge_parts(
    work_dir: Path,
    stem: str,
    parts: list[SearchPartRef],
    index: IndexRef,
    config: RetrievalConfig,
    sources: _Sources,
) -> SearchRef:
    """Merge the shards' parts into the candidate table and record it (``search-<stem>.json``).

    A part missing while it is read was removed by a concurrent run's finished merge: its
    reference is returned; without one the error stands.
    """
    from negminer.mining.search import merge_candidate_files

    start = time.perf_counter()
    path = work_dir / f"candidates-{stem}.parquet"
    try:
        rows = merge_candidate_files([part.path for part in parts], path)
    except FileNotFoundError:
        if ref := finished(_marker(work_dir, stem), SearchRef):
            return ref
        raise
    seconds = time.perf_counter() - start + sum(part.seconds for part in parts)
    counts: dict[str, int] = {}
    for part in parts:
        for source, n in (part.source_counts or {}).items():
            counts[source] = counts.get(source, 0) + n
    ref = SearchRef(
        candidates=str(path),
        rows=rows,
        depth=parts[0].depth,
        index=index.summary(),
        seconds=round(seconds, 3),
        sources=_sources_entry(config, sources, counts),
    )
    return finish(_marker(work_dir, stem), ref)


def _remove_parts(work_dir: Path, stem: str) -> None:
    """Remove the search's parts once merged, those of other shard sizes (an earlier, killed run) too."""
    for path in work_dir.glob(f"candidates-{stem}.part*"):
        if path.suffix in (".parquet", ".json"):
            path.unlink(missing_ok=True)
