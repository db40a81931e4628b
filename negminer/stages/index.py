"""Index stage: a FAISS index over ``docs.npy``, one file or one per doc range (shards).

An approximate index is tuned on a seeded sample of the anchors to reach the configured
recall. When the dataset's LATEST run indexed a prefix of this run's docs, its index is
extended (or its shards taken over) instead of rebuilt: :mod:`negminer.stages.reuse`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from negminer.config import IndexConfig, RetrievalConfig
from negminer.errors import StorageError
from negminer.mining.allocator import releases_memory
from negminer.stages.refs import DocRange, ExtendedFrom, IndexRef, IndexShardRef
from negminer.stages.reuse import parent_index, parent_shard
from negminer.stages.workdir import finish, finished


def index_key(config: IndexConfig, retrieval: RetrievalConfig) -> str:
    """Names the index files: the index settings plus what tunes it (search depth, seed)."""
    key = {"index": config.model_dump(mode="json"), "search_depth": retrieval.search_depth, "seed": retrieval.seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def index_shards(n_docs: int, *, config: IndexConfig) -> list[DocRange]:
    """The doc ranges that get an index each; empty when the pool gets one index.

    Example:
        >>> [(s.first, s.stop) for s in index_shards(5, config=IndexConfig(shard_docs=2))]
        [(0, 2), (2, 4), (4, 5)]
    """
    from negminer.mining.index import doc_ranges

    if config.shard_docs is None or n_docs <= config.shard_docs:
        return []
    ranges = doc_ranges(n_docs, config.shard_docs)
    return [DocRange(shard=i, first=first, stop=stop) for i, (first, stop) in enumerate(ranges)]


def _recall_queries(work_dir: Path, config: IndexConfig, seed: int) -> np.ndarray:
    """The seeded sample of anchors an approximate index is tuned on."""
    anchor_vectors = np.load(work_dir / "anchors.npy", mmap_mode="r")
    sample = np.random.default_rng(seed).permutation(len(anchor_vectors))[: config.recall_sample]
    return anchor_vectors[np.sort(sample)]


def _build_options(config: IndexConfig, seed: int) -> dict[str, Any]:
    return {
        "kind": config.kind,
        "exact_max_docs": config.exact_max_docs,
        "min_recall": config.min_recall,
        "use_gpu": config.use_gpu,
        "seed": seed,
    }


@releases_memory
def index_stage(
    work_dir: str | Path, *, config: IndexConfig, retrieval: RetrievalConfig, parent: str | Path | None = None
) -> IndexRef:
    """Build the search index over docs.npy into ``index-<key>.faiss``, or extend the parent's.

    `parent` is the work folder of the dataset's LATEST version. When its docs are the first
    docs of this run (same texts in the same order, embedded through the same store) and the
    index type is unchanged, its index is loaded and only the new docs are added; a flat index
    extended so is identical to a rebuilt one. Otherwise the index is built from scratch.
    """
    from negminer.mining.index import build_search_index, choose_factory, extend_search_index, save_index

    work_dir = Path(work_dir)
    key = index_key(config, retrieval)
    if ref := finished(work_dir / f"index-{key}.json", IndexRef):
        return ref
    parent_dir = Path(parent) if parent else None
    doc_vectors = np.load(work_dir / "docs.npy", mmap_mode="r")
    k = min(retrieval.search_depth, len(doc_vectors))
    if shards := index_shards(len(doc_vectors), config=config):  # each shard draws its own recall sample
        ref = _sharded_index(work_dir, key, shards, k, config, retrieval, parent_dir)
        return finish(work_dir / f"index-{key}.json", ref)
    queries = _recall_queries(work_dir, config, retrieval.seed)
    factory = choose_factory(*doc_vectors.shape, kind=config.kind, exact_max_docs=config.exact_max_docs)
    base = parent_index(work_dir, parent_dir, key=key, factory=factory)
    if base is None:
        index, report = build_search_index(
            doc_vectors, sample_queries=queries, k=k, **_build_options(config, retrieval.seed)
        )
    else:
        index, report = extend_search_index(
            base[0],
            doc_vectors,
            first_new=base[0].ntotal,
            factory=factory,
            sample_queries=queries,
            k=k,
            min_recall=config.min_recall,
        )
    path = save_index(index, work_dir / f"index-{key}.faiss")
    _check_written(path, report.factory)
    ref = IndexRef(
        key=key,
        path=str(path),
        rows=len(doc_vectors),
        **{f: v for f, v in report._asdict().items() if f != "seconds"},
        extended_from=None if base is None else ExtendedFrom(work=base[1], rows=base[0].ntotal),
        seconds=round(report.seconds, 3),
    )
    return finish(work_dir / f"index-{key}.json", ref)


@releases_memory
def index_shard_stage(
    work_dir: str | Path,
    shard: DocRange,
    *,
    config: IndexConfig,
    retrieval: RetrievalConfig,
    parent: str | Path | None = None,
) -> IndexShardRef:
    """Build and save the index of one doc range (:func:`index_shards`), tuned on its own.

    Idempotent: a shard whose index is saved is not built again. The flow maps this over the
    shards (on Dask workers, one per task); :func:`index_stage` then collects them. When
    `parent` indexed the same doc range over the same docs, its shard is taken over (hard
    link) instead of built: an incremental run that appends docs builds only the ranges that changed.
    """
    from negminer.mining.index import FLAT, build_index_shard, retune_index

    work_dir = Path(work_dir)
    path = work_dir / f"index-{index_key(config, retrieval)}.s{shard.shard:05d}.faiss"
    if ref := finished(path.with_suffix(".json"), IndexShardRef):
        return ref
    start = time.perf_counter()
    doc_vectors = np.load(work_dir / "docs.npy", mmap_mode="r")
    k = min(retrieval.search_depth, len(doc_vectors))
    if taken := parent_shard(work_dir, Path(parent) if parent else None, shard, k=k, path=path):
        if taken.factory != FLAT:  # tuned on the parent's anchors: tune on this run's, as a build here would
            params, recall = retune_index(
                path,
                doc_vectors[shard.first : shard.stop],
                _recall_queries(work_dir, config, retrieval.seed),
                k=min(k, shard.stop - shard.first),
                min_recall=config.min_recall,
            )
            taken = taken.model_copy(update={"params": params, "recall": recall})
        return finish(path.with_suffix(".json"), taken.model_copy(update={"seconds": _since(start)}))
    _, report = build_index_shard(
        doc_vectors,
        shard.first,
        shard.stop,
        path,
        sample_queries=_recall_queries(work_dir, config, retrieval.seed),
        k=k,
        **_build_options(config, retrieval.seed),
    )
    _check_written(path, report.factory)
    ref = IndexShardRef(
        **{f: v for f, v in report._asdict().items() if f != "seconds"},
        path=str(path),
        first=shard.first,
        stop=shard.stop,
        reused_from=None,
        seconds=_since(start),
    )
    return finish(path.with_suffix(".json"), ref)


def _check_written(path: Path, factory: str) -> None:
    """Raise StorageError, and remove the file, unless the index just written to `path` reads back whole.

    FAISS does not raise when writing its last buffered bytes fails (a disk that fills up as
    the file is closed): it prints ``close error`` and leaves a truncated index, which the
    stage's marker would then name, so that every rerun failed in the search. The check maps
    the file instead of reading it (FAISS's ``IO_FLAG_MMAP_IFC`` for a flat index,
    ``IO_FLAG_MMAP`` for the others): for flat and IVF indexes milliseconds and no memory,
    whatever their size.
    """
    import faiss

    from negminer.mining.index import FLAT

    flag = faiss.IO_FLAG_MMAP_IFC if factory == FLAT else faiss.IO_FLAG_MMAP
    try:
        faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as err:
        path.unlink(missing_ok=True)
        raise StorageError(
            f"{path}: the index file written is incomplete (is the disk full?); "
            "free space and rerun the same command to resume (finished stages are reused)"
        ) from err


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _sharded_index(
    work_dir: Path,
    key: str,
    shards: list[DocRange],
    k: int,
    config: IndexConfig,
    retrieval: RetrievalConfig,
    parent: Path | None,
) -> IndexRef:
    """The index reference over every doc range's index (built or taken over here when not yet)."""
    start = time.perf_counter()
    built = [index_shard_stage(work_dir, s, config=config, retrieval=retrieval, parent=parent) for s in shards]
    recalls = [shard.recall for shard in built if shard.recall is not None]
    reused = [shard for shard in built if shard.reused_from]
    extended = None
    if reused:
        rows = sum(shard.stop - shard.first for shard in reused)
        extended = ExtendedFrom(work=reused[0].reused_from, rows=rows, shards=len(reused))
    return IndexRef(
        key=key,
        path=None,
        rows=shards[-1].stop,
        factory=built[0].factory,
        params={},
        recall=min(recalls) if recalls else None,
        recall_sample=built[0].recall_sample,
        k=k,
        gpu=built[0].gpu,
        shards=tuple(shard.entry() for shard in built),
        extended_from=extended,
        seconds=round(time.perf_counter() - start + sum(shard.seconds for shard in built), 3),
    )


def open_index(index: IndexRef, config: IndexConfig, *, loaded_in_turn: bool = False) -> Any:
    """The loaded index, or the list of index shards that the search loads one at a time.

    `loaded_in_turn`: a one-file index as a list of one shard too, so that a search of several
    indexes (the dense2 source's beside the first model's) holds one of them at a time.
    """
    from negminer.mining.index import IndexShard, load_index

    if index.shards:
        return [
            IndexShard(shard.path, shard.first, shard.stop, shard.params, use_gpu=config.use_gpu)
            for shard in index.shards
        ]
    if loaded_in_turn:
        return [IndexShard(index.path, 0, index.rows, index.params, use_gpu=config.use_gpu)]
    return load_index(index.path, params=index.params, use_gpu=config.use_gpu)
