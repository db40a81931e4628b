"""Embed stage: plan the texts the store lacks, embed them shard by shard, assemble the vectors.

The plan (``embed-plan.parquet``, one row group per shard) is fixed once written, so a resumed
run embeds exactly the shards, and batches, of an uninterrupted one: the same vectors, the
same bytes. Anchors are embedded as queries and docs (positives and corpus) as documents, each
with its side's prompt (:func:`negminer.mining.embedder.effective_prompts`); the plan's
``task`` column says which. Assembling writes ``anchors.npy`` / ``docs.npy`` from the store.
With precomputed vectors the user's files are matched by id instead and no model is loaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negminer.config import EmbedConfig
from negminer.errors import InputError
from negminer.mining.allocator import releases_memory
from negminer.mining.embedder import Embedder
from negminer.mining.encoder import Task
from negminer.stages.refs import (
    EmbedCounts,
    EmbedPlanRef,
    EmbedRef,
    EmbedShard,
    EmbedShardResult,
    ModelRef,
    PromptsRef,
    StoreRef,
)
from negminer.stages.workdir import embedding_source_fingerprint, finish, finished

logger = logging.getLogger(__name__)

STEMS = ("anchors", "docs")
TASKS: dict[str, Task] = {"anchors": "query", "docs": "document"}
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def _texts(work_dir: Path, stem: str) -> list[str]:
    return pq.read_table(work_dir / f"{stem}.parquet", columns=["text"]).column("text").to_pylist()


def embed_plan_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> EmbedPlanRef:
    """Plan the embedding: the anchor and doc texts the store lacks, in shards of `chunk_size`.

    Writes ``embed-plan.parquet`` (``text``, ``hash``: the store key, ``task``: query or document;
    one row group per shard). When both sides are embedded alike, a text that is an anchor and
    a doc is embedded once, as a document.
    """
    from negminer.mining.embedding import missing_unique
    from negminer.storage.atomic import atomic_write

    work_dir = Path(work_dir)
    if ref := finished(work_dir / "embed-plan.json", EmbedPlanRef):
        return ref
    if config.precomputed:
        nothing = {stem: EmbedCounts(rows=0, embedded=0, reused=0) for stem in STEMS}
        return finish(work_dir / "embed-plan.json", EmbedPlanRef(shards=(), counts=nothing, texts=0))
    embedder = Embedder(config)
    store = embedder.open_store(store_root)
    texts: list[str] = []
    hashes: list[bytes] = []
    tasks: list[Task] = []
    counts = {}
    for stem in STEMS:
        stem_texts = _texts(work_dir, stem)
        stem_hashes = embedder.text_keys(stem_texts, task=TASKS[stem])
        before, seen = len(hashes), set(hashes)
        for row in missing_unique(store, stem_hashes):
            if (key := stem_hashes[row].as_py()) not in seen:
                texts.append(stem_texts[row])
                hashes.append(key)
        embedded = len(hashes) - before
        tasks.extend([_plan_task(embedder, TASKS[stem])] * embedded)
        counts[stem] = EmbedCounts(rows=len(stem_texts), embedded=embedded, reused=len(stem_texts) - embedded)
    plan = pa.table(
        {
            "text": pa.array(texts, pa.string()),
            "hash": pa.array(hashes, pa.binary(16)),
            "task": pa.array(tasks, pa.string()).dictionary_encode(),
        }
    )
    path = work_dir / "embed-plan.parquet"
    atomic_write(path, lambda h: pq.write_table(plan, h, row_group_size=config.chunk_size, compression="zstd"))
    metadata = pq.ParquetFile(path).metadata
    shards = tuple(
        EmbedShard(plan=str(path), shard=i, rows=metadata.row_group(i).num_rows)
        for i in range(metadata.num_row_groups if plan.num_rows else 0)
    )
    return finish(work_dir / "embed-plan.json", EmbedPlanRef(shards=shards, counts=counts, texts=plan.num_rows))


def _plan_task(embedder: Embedder, task: Task) -> Task:
    """The task a planned text is embedded as: documents for both sides when they are embedded alike.

    One task per shard keeps the batches of a shard whole (sides embedded alike give equal vectors).
    """
    return task if not embedder.prompts.alike else "document"


@releases_memory
def embed_shard_stage(shard: EmbedShard, *, config: EmbedConfig, store_root: str | Path) -> EmbedShardResult:
    """Embed one planned shard into the store (nothing when the store already holds it)."""
    start = time.perf_counter()
    table = pq.ParquetFile(shard.plan).read_row_group(shard.shard)
    embedder = Embedder(config)
    store = embedder.open_store(store_root)
    hashes = table.column("hash").combine_chunks()
    absent = np.nonzero(store.lookup(hashes) < 0)[0]
    if len(absent):
        texts = table.column("text").to_pylist()
        # a plan written before prompts had no task column: every text was embedded alike
        tasks = table.column("task").to_pylist() if "task" in table.column_names else ["document"] * len(texts)
        for task in TASKS.values():
            rows = np.array([i for i in absent if tasks[i] == task], np.int64)
            if len(rows):
                embedder.embed_into_store([texts[i] for i in rows], hashes.take(rows), store, task=task)
    return EmbedShardResult(
        shard=shard.shard, rows=table.num_rows, embedded=len(absent), seconds=round(time.perf_counter() - start, 3)
    )


@releases_memory
def embed_assemble_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> EmbedRef:
    """Write anchors.npy / docs.npy from the store once the planned shards are in it.

    Texts still missing (a shard removed by ``gc`` meanwhile) are embedded here, with a warning.
    """
    work_dir = Path(work_dir)
    if ref := finished(work_dir / "embed.json", EmbedRef):
        return ref
    if config.precomputed:
        return finish(work_dir / "embed.json", _load_precomputed(work_dir, config))
    plan = embed_plan_stage(work_dir, config=config, store_root=store_root)
    embedder = Embedder(config)
    store = embedder.open_store(store_root)
    results, shards = {}, set()
    for stem in STEMS:
        texts = _texts(work_dir, stem)
        result = embedder.embed_to_file(texts, work_dir / f"{stem}.npy", store, task=TASKS[stem])
        if result.embedded:
            logger.warning(
                "%d %s texts were missing from the store after its shards; embedded now", result.embedded, stem
            )
        shards.update(store.shard_names(store.lookup(embedder.text_keys(texts, task=TASKS[stem]))))
        results[stem] = plan.counts[stem].model_copy(update={"truncated": result.truncated})
    prompts = embedder.prompts
    logger.info(
        "vectors made with %s %s%s",
        embedder.encoding.backend,
        embedder.encoding.precision,
        " (embed.backend/precision auto)" if "auto" in (config.backend, config.precision) else "",
    )
    model = ModelRef(
        name=config.model or DEFAULT_MODEL_NAME,
        path=str(embedder.model_path),
        fingerprint=embedder.fingerprint,
        prompts=PromptsRef(query=prompts.query, document=prompts.document),
        backend=embedder.encoding.backend,
        precision=embedder.encoding.precision,
    )
    ref = EmbedRef(
        model=model,
        dim=store.dim,
        embedding=results,
        store=StoreRef(root=str(Path(store_root).resolve()), folder=store.folder.name, shards=tuple(sorted(shards))),
    )
    return finish(work_dir / "embed.json", ref)


def _load_precomputed(work_dir: Path, config: EmbedConfig) -> EmbedRef:
    """anchors.npy / docs.npy from the user's vectors files, matched by anchor_id / doc_id.

    The id column is read whole (about 200 bytes an id); the vectors are streamed in batches.
    """
    from negminer.mining.precomputed import write_vectors_for

    results, dims = {}, set()
    sources = (("anchors", "anchor_id", config.anchor_vectors), ("docs", "doc_id", config.doc_vectors))
    for stem, id_column, source in sources:
        ids = pq.read_table(work_dir / f"{stem}.parquet", columns=[id_column]).column(id_column).to_pylist()
        dims.add(write_vectors_for(ids, source, work_dir / f"{stem}.npy", what=stem[:-1]))
        results[stem] = EmbedCounts(rows=len(ids), embedded=0, reused=len(ids), truncated=0)
    if len(dims) > 1:
        raise InputError(f"anchor and doc vectors differ in dimension: {sorted(dims)}", path=config.doc_vectors)
    model = ModelRef(name="precomputed", path=None, fingerprint=embedding_source_fingerprint(config))
    return EmbedRef(model=model, dim=dims.pop(), embedding=results, store=None)


def embed_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> EmbedRef:
    """Embed anchors and docs through the embedding store into anchors.npy / docs.npy.

    Plan, embed every shard, assemble: what the flow runs as separate (cached, mapped) tasks.
    """
    if ref := finished(Path(work_dir) / "embed.json", EmbedRef):
        return ref
    plan = embed_plan_stage(work_dir, config=config, store_root=store_root)
    for shard in plan.shards:
        embed_shard_stage(shard, config=config, store_root=store_root)
    return embed_assemble_stage(work_dir, config=config, store_root=store_root)
