"""Curate stage: flag likely false negatives / false positives / near-duplicates (confident learning).

Planned, then judged in shards, then merged, so that the flow can map the shards over Dask
workers: the plan fits the judges on a sample of anchors (``curation-fit.pkl``) and cuts the
candidate file into ranges of whole anchors; each shard writes its part; the merge writes
``curated.parquet`` (the candidates with ``flagged_false_negative``, which selection drops so
the next valid candidate replaces them), ``flagged.parquet`` and ``training-pairs.parquet``
(the pairs without those whose positive is dropped or quarantined). Up to
``curate.fit_anchors`` anchors there are no shards: the merge curates in one pass. With
curation disabled, the candidates and pairs pass through unchanged.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from negminer.config import CurateConfig
from negminer.mining.allocator import releases_memory
from negminer.stages.refs import CuratePartRef, CuratePlanRef, CurateRef, DocRange, SearchRef
from negminer.storage.atomic import naming_failures, write_bytes_atomic, write_parquet_atomic

FIT_FILE = "curation-fit.pkl"


def curate_stage(work_dir: str | Path, search: SearchRef, *, config: CurateConfig) -> CurateRef:
    """Plan, judge every shard, merge: what the flow runs as separate (mapped) tasks."""
    plan = curate_plan_stage(work_dir, search, config=config)
    parts = [curate_shard_stage(work_dir, plan, shard, config=config) for shard in plan.shards]
    return curate_merge_stage(work_dir, plan, parts, config=config)


@releases_memory
def curate_plan_stage(work_dir: str | Path, search: SearchRef, *, config: CurateConfig) -> CuratePlanRef:
    """Fit the judges on a sample of anchors and cut the candidates into shards (none: one pass)."""
    from negminer.curation.sharded import fit_curation, one_pass, shard_ranges

    work_dir = Path(work_dir)
    if not config.enabled:
        return CuratePlanRef(candidates=search.candidates, enabled=False)
    n_anchors = pq.ParquetFile(work_dir / "anchors.parquet").metadata.num_rows
    if one_pass(n_anchors, config):
        return CuratePlanRef(candidates=search.candidates)
    start = time.perf_counter()
    fitted = fit_curation(search.candidates, _pool_inputs(work_dir), config=config)
    write_bytes_atomic(work_dir / FIT_FILE, pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL))
    ranges = shard_ranges(search.candidates, n_anchors=n_anchors, config=config)
    return CuratePlanRef(
        candidates=search.candidates,
        fit=str(work_dir / FIT_FILE),
        shards=tuple(DocRange(shard=i, first=first, stop=stop) for i, (first, stop) in enumerate(ranges)),
        noise=fitted.judges.noise,
        skipped=fitted.judges.skipped is not None,
        seconds=round(time.perf_counter() - start, 3),
    )


@releases_memory
def curate_shard_stage(
    work_dir: str | Path, plan: CuratePlanRef, shard: DocRange, *, config: CurateConfig
) -> CuratePartRef:
    """Judge the anchors of one shard with the plan's judges; writes the shard's parts."""
    from negminer.curation.sharded import curate_shard

    work_dir = Path(work_dir)
    stem = f"part{shard.first:010d}-{shard.stop:010d}"
    with _SHARED.use(work_dir, plan.fit) as (fitted, pool):
        result = curate_shard(fitted, plan.candidates, (shard.first, shard.stop), pool, config=config)
    curated = write_parquet_atomic(work_dir / f"curated.{stem}.parquet", result.curated)
    flagged = write_parquet_atomic(work_dir / f"flagged.{stem}.parquet", result.flagged)
    return CuratePartRef(
        curated=str(curated),
        flagged=str(flagged),
        excluded_pairs=tuple(int(p) for p in result.excluded_pairs),
        counts=result.counts,
    )


@releases_memory
def curate_merge_stage(
    work_dir: str | Path, plan: CuratePlanRef, parts: list[CuratePartRef], *, config: CurateConfig
) -> CurateRef:
    """The curated candidates, flagged table and training pairs from the shards' parts (or one pass)."""
    from negminer.curation import KINDS
    from negminer.curation.sharded import CurationPaths, curate_one_pass, merge_parts

    work_dir = Path(work_dir)
    if not plan.enabled:
        return CurateRef(candidates=plan.candidates, pairs=str(work_dir / "pairs.parquet"))
    start = time.perf_counter()
    paths = CurationPaths(*(work_dir / f"{stem}.parquet" for stem in ("curated", "flagged", "training-pairs")))
    with naming_failures(work_dir):  # the staged writer of curated.parquet: its failed writes name no file
        if plan.fit is None:
            summary = curate_one_pass(plan.candidates, paths, _pool_inputs(work_dir), config=config)
        else:
            summary = merge_parts(
                [part.curated for part in parts],
                [part.flagged for part in parts],
                excluded=np.asarray([p for part in parts for p in part.excluded_pairs], np.int64),
                counts=[part.counts for part in parts],
                paths=paths,
                pairs=pq.read_table(work_dir / "pairs.parquet"),
                noise=plan.noise,
                skipped=plan.skipped,
            )
        for part in parts:
            for path in (part.curated, part.flagged):
                Path(path).unlink(missing_ok=True)
    return CurateRef(
        candidates=str(paths.curated),
        pairs=str(paths.training_pairs),
        flagged=str(paths.flagged),
        counts={"flagged_by_kind": {kind: summary.counts[kind] for kind in KINDS}, "curation": summary.counts},
        noise=summary.noise,
        seconds=round(time.perf_counter() - start + plan.seconds, 3),
    )


class _SharedShardInputs:
    """The plan's fitted judges and the pool inputs, loaded once for the shards running at once.

    The pickled fit holds the pool context (a score per candidate row, several arrays per
    document) and the inputs hold the documents' keys and mapped texts: at 10M documents that
    is over a gigabyte, which every shard on a thread of its own used to load again. The copy
    is dropped when no shard uses it, so it never outlives the curation shards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._value: tuple | None = None
        self._users = 0

    @contextmanager
    def use(self, work_dir: Path, fit: str) -> Iterator[tuple]:
        status = os.stat(fit)
        key = (str(work_dir.resolve()), str(Path(fit).resolve()), status.st_size, status.st_mtime_ns)
        with self._lock:
            shared = self._key == key or not self._users
            if shared and self._key != key:
                self._key, self._value = key, _load_shard_inputs(work_dir, fit)
            if shared:
                self._users += 1
                value = self._value
        if not shared:  # another plan's shards hold the copy (two runs in one process)
            value = _load_shard_inputs(work_dir, fit)
        try:
            yield value
        finally:
            if shared:
                with self._lock:
                    self._users -= 1
                    if not self._users:
                        self._key = self._value = None

    def loaded(self) -> bool:
        return self._value is not None


_SHARED = _SharedShardInputs()


def _load_shard_inputs(work_dir: Path, fit: str) -> tuple:
    with open(fit, "rb") as handle:
        fitted = pickle.load(handle)  # written by this run's plan, in its own work folder
    return fitted, _pool_inputs(work_dir)


def _pool_inputs(work_dir: Path):
    """The read stage's tables and the vectors, as every part of curation reads them.

    Texts and ids are memory-mapped (:func:`~negminer.storage.mapped_columns.mapped_column`):
    a shard reads the rows it names, not the whole corpus.
    """
    from negminer.curation.sharded import PoolInputs
    from negminer.mining.vectors import MappedRows
    from negminer.storage.mapped_columns import mapped_column

    anchors, docs = work_dir / "anchors.parquet", work_dir / "docs.parquet"
    return PoolInputs(
        pairs=pq.read_table(work_dir / "pairs.parquet"),
        anchor_vectors=MappedRows(np.load(work_dir / "anchors.npy", mmap_mode="r")),
        doc_vectors=MappedRows(np.load(work_dir / "docs.npy", mmap_mode="r")),
        anchor_texts=mapped_column(anchors, "text"),
        doc_texts=mapped_column(docs, "text"),
        anchor_ids=mapped_column(anchors, "anchor_id"),
        doc_ids=mapped_column(docs, "doc_id"),
        doc_keys=pq.read_table(docs, columns=["text_key"]).column("text_key").combine_chunks(),
        anchor_keys=pq.read_table(anchors, columns=["text_key"]).column("text_key").combine_chunks(),
    )
