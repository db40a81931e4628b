"""BM25 index stage: the pool's global statistics, then one bm25s index per range of docs.

Runs only when ``mine.sources`` names ``bm25``. The plan (:func:`bm25_plan_stage`) streams the
docs once for corpus-global document frequencies and lengths; each shard
(:func:`bm25_shard_stage`, mapped by the flow) indexes its doc range with them, so the shards'
scores compare; :func:`bm25_stage` collects the shards (building those still missing). Every
file is written atomically and every step leaves a completion marker, so a killed run resumes.
Shard folders are named by their doc range: a rerun with another ``bm25_shard_docs`` reuses
only the ranges it shares.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from negminer.config import RetrievalConfig
from negminer.mining.allocator import releases_memory
from negminer.stages.refs import Bm25PlanRef, Bm25Ref, Bm25ShardRef, DocRange
from negminer.stages.workdir import doc_keys_file, finish, finished


def bm25_key() -> str:
    """Names the BM25 files: what the scores depend on besides the docs (the work folder's key)."""
    from negminer.mining.bm25 import SCORING

    return hashlib.sha256(json.dumps(SCORING, sort_keys=True).encode()).hexdigest()[:10]


def bm25_shards(n_docs: int, *, config: RetrievalConfig) -> list[DocRange]:
    """Consecutive doc ranges of at most ``config.bm25_shard_docs`` docs (always one or more).

    Example:
        >>> [(s.first, s.stop) for s in bm25_shards(5, config=RetrievalConfig(bm25_shard_docs=2))]
        [(0, 2), (2, 4), (4, 5)]
    """
    from negminer.stages.search import consecutive_ranges

    return consecutive_ranges(n_docs, config.bm25_shard_docs)


@releases_memory
def bm25_plan_stage(work_dir: str | Path, *, config: RetrievalConfig) -> Bm25PlanRef:
    """Stream docs.parquet once into the pool's BM25 statistics; plan the doc ranges to index."""
    from negminer.mining.bm25 import pool_stats, save_stats, text_batches

    work_dir = Path(work_dir)
    key = bm25_key()
    marker = work_dir / f"bm25-{key}.plan.json"
    shards = tuple(bm25_shards(pq.ParquetFile(work_dir / "docs.parquet").metadata.num_rows, config=config))
    if ref := finished(marker, Bm25PlanRef):
        return ref if ref.shards == shards else finish(marker, ref.model_copy(update={"shards": shards}))
    start = time.perf_counter()
    stats = pool_stats(text_batches(work_dir / "docs.parquet"))
    path = save_stats(stats, work_dir / f"bm25-{key}.stats.npz")
    keys = doc_keys_file(work_dir)
    ref = Bm25PlanRef(
        key=key,
        stats=str(path),
        doc_keys=str(keys),
        rows=len(stats.doc_length),
        shards=shards,
        seconds=_since(start),
    )
    return finish(marker, ref)


@releases_memory
def bm25_shard_stage(work_dir: str | Path, shard: DocRange, *, plan: Bm25PlanRef) -> Bm25ShardRef:
    """Index docs ``[shard.first, shard.stop)`` with the plan's global statistics (idempotent)."""
    import numpy as np

    from negminer.mining.bm25 import build_bm25_shard, load_stats, text_batches

    work_dir = Path(work_dir)
    path = work_dir / f"bm25-{plan.key}.d{shard.first:09d}-{shard.stop:09d}"
    marker = work_dir / f"{path.name}.json"
    if ref := finished(marker, Bm25ShardRef):
        return ref
    start = time.perf_counter()
    docs = text_batches(work_dir / "docs.parquet", first=shard.first, stop=shard.stop)
    build_bm25_shard(docs, shard.first, load_stats(plan.stats), path)
    postings = int(np.load(path / "indptr.csc.index.npy", mmap_mode="r")[-1])
    ref = Bm25ShardRef(path=str(path), first=shard.first, stop=shard.stop, postings=postings, seconds=_since(start))
    return finish(marker, ref)


def bm25_stage(work_dir: str | Path, *, config: RetrievalConfig) -> Bm25Ref:
    """The BM25 index of the pool (``bm25-<key>.json``): planned and built here where not yet."""
    from negminer.mining.bm25 import SCORING

    work_dir = Path(work_dir)
    plan = bm25_plan_stage(work_dir, config=config)
    marker = work_dir / f"bm25-{plan.key}.json"
    if (ref := finished(marker, Bm25Ref)) and [(s.first, s.stop) for s in ref.shards] == [
        (s.first, s.stop) for s in plan.shards
    ]:
        return ref
    built = tuple(bm25_shard_stage(work_dir, shard, plan=plan) for shard in plan.shards)
    seconds = round(plan.seconds + sum(shard.seconds for shard in built), 3)
    ref = Bm25Ref(
        key=plan.key, rows=plan.rows, doc_keys=plan.doc_keys, shards=built, scoring=dict(SCORING), seconds=seconds
    )
    return finish(marker, ref)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)
