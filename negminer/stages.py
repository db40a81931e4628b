"""The pipeline's stages as plain functions that hand off by path.

Each stage reads its inputs from the run's work folder, writes its outputs there atomically
and returns a small JSON-able reference (paths, fingerprints, counts). A stage whose outputs
already exist returns them without redoing the work, so a killed run resumes where it
stopped. The Prefect flow in :mod:`negminer.flows.mine` wires these as tasks; they are also
usable, and tested, without Prefect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import CurateConfig, EmbedConfig, IndexConfig, InputConfig, MineConfig, PipelineConfig
from negminer.errors import InputError
from negminer.mining.encoder import embedding_dimension, load_model, model_fingerprint, resolve_model_path
from negminer.storage.atomic import sha256_file, write_bytes_atomic, write_npy_atomic, write_parquet_atomic

logger = logging.getLogger(__name__)


def fingerprint_input(path: str | Path | None) -> dict[str, Any] | None:
    """sha256 and size of an input file, or of every Parquet file in a folder."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": sum(f.stat().st_size for f in files)}


def default_store_root(root: str | Path) -> Path:
    """The embedding store of runs into `root` that name none: ``ROOT/.embeddings``."""
    return Path(root) / ".embeddings"


def work_dir_for(
    root: str | Path,
    name: str,
    *,
    pairs: str | Path,
    corpus: str | Path | None,
    config: PipelineConfig,
    store: str | Path | None = None,
) -> Path:
    """The run's work folder, keyed by input content, input options, embedding model and store.

    `store` is the embedding store root (None: :func:`default_store_root`). Another store gets
    another work folder: the folder's embed.json (the manifest's store and embedded counts)
    describes one store. The default store adds nothing to the key, so its folders keep their names.
    """
    key = {
        "pairs": fingerprint_input(pairs)["sha256"],
        "corpus": (fingerprint_input(corpus) or {}).get("sha256"),
        "input": config.input.model_dump(),
        "model": _embedding_source_fingerprint(config.embed),
        "max_seq_length": config.embed.max_seq_length,
    }
    if not config.embed.precomputed:  # other vectors: another work folder
        if config.embed.store_dtype != "float32":
            key["store_dtype"] = config.embed.store_dtype
        if config.embed.precision != "float32":
            key["precision"] = config.embed.precision
        if store is not None and (resolved := Path(store).resolve()) != default_store_root(root).resolve():
            key["store"] = str(resolved)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root) / name / ".work" / digest


def _embedding_source_fingerprint(config: EmbedConfig) -> str:
    if config.precomputed:
        files = (fingerprint_input(config.anchor_vectors), fingerprint_input(config.doc_vectors))
        return "precomputed:" + "+".join(f["sha256"] for f in files)
    return model_fingerprint(resolve_model_path(config.model))


def _done(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _finish(path: Path, ref: dict[str, Any]) -> dict[str, Any]:
    write_bytes_atomic(path, json.dumps(ref, indent=2, sort_keys=True).encode())
    return ref


def read_stage(
    pairs: str | Path, corpus: str | Path | None, work_dir: str | Path, *, config: InputConfig
) -> dict[str, Any]:
    """Validate inputs into anchors/docs/pairs/rejects Parquet files in `work_dir`."""
    from negminer.storage.inputs import prepare_inputs

    work_dir = Path(work_dir)
    if ref := _done(work_dir / "read.json"):
        return ref
    start = time.perf_counter()
    prepared = prepare_inputs(pairs, corpus, config=config)
    for stem in ("anchors", "docs", "pairs", "rejects"):
        write_parquet_atomic(work_dir / f"{stem}.parquet", getattr(prepared, stem))
    ref = {
        "work_dir": str(work_dir),
        "inputs": {"pairs": fingerprint_input(pairs), "corpus": fingerprint_input(corpus)},
        "counts": {
            **prepared.counts,
            "anchors": prepared.anchors.num_rows,
            "docs": prepared.docs.num_rows,
            "pairs": prepared.pairs.num_rows,
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    return _finish(work_dir / "read.json", ref)


@cache
def _cached_model(model: str | None, device: str | None, max_seq_length: int | None):
    return load_model(model, device=device, max_seq_length=max_seq_length)


_MODEL_LOCK = threading.Lock()


def _shared_model(config: EmbedConfig):
    """The process's one copy of the configured model; a second thread waits for the first's load."""
    with _MODEL_LOCK:
        return _cached_model(config.model, config.device, config.max_seq_length)


def preload_model(config: EmbedConfig) -> threading.Thread | None:
    """Load the embedding model in a background thread (None when vectors are precomputed).

    Importing torch and sentence-transformers and loading the model take seconds that
    overlap with Prefect starting its temporary server. A failure is left for the
    embedding stage, which loads the model again and reports it there.
    """
    if config.precomputed:
        return None

    def load() -> None:
        with contextlib.suppress(Exception):
            _shared_model(config)

    thread = threading.Thread(target=load, name="negminer-model-preload", daemon=True)
    thread.start()
    return thread


def _store_key(config: EmbedConfig) -> str:
    fingerprint = model_fingerprint(resolve_model_path(config.model))
    # Vectors depend on the truncation length and precision too: non-defaults get their own folder.
    key = fingerprint if config.max_seq_length is None else f"{fingerprint}-seq{config.max_seq_length}"
    if config.precision != "float32":
        key = f"{key}-{config.precision}"
    return key if config.store_dtype == "float32" else f"{key}-{config.store_dtype}"


def _open_store(config: EmbedConfig, store_root: str | Path):
    from negminer.storage.embedding_store import EmbeddingStore

    model = _shared_model(config)
    return EmbeddingStore(
        store_root, model_fingerprint=_store_key(config), dim=embedding_dimension(model), dtype=config.store_dtype
    )


def _texts(work_dir: Path, stem: str) -> list[str]:
    return pq.read_table(work_dir / f"{stem}.parquet", columns=["text"]).column("text").to_pylist()


def embed_plan_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> dict[str, Any]:
    """Plan the embedding: the anchor and doc texts the store lacks, in shards of `chunk_size`.

    Writes ``embed-plan.parquet`` (``text``, ``hash``; one row group per shard) and returns
    one reference per shard. The plan is fixed once written, so a resumed run embeds exactly
    the shards, and batches, of an uninterrupted one: the same vectors, the same bytes.
    """
    from negminer.mining.embedding import missing_unique
    from negminer.storage.atomic import atomic_write
    from negminer.textkeys import content_hashes

    work_dir = Path(work_dir)
    if ref := _done(work_dir / "embed-plan.json"):
        return ref
    if config.precomputed:
        counts = {stem: {"rows": 0, "embedded": 0, "reused": 0} for stem in ("anchors", "docs")}
        return _finish(work_dir / "embed-plan.json", {"shards": [], "counts": counts, "texts": 0})
    store = _open_store(config, store_root)
    texts: list[str] = []
    hashes: list[bytes] = []
    counts = {}
    for stem in ("anchors", "docs"):
        stem_texts = _texts(work_dir, stem)
        stem_hashes = content_hashes(stem_texts)
        before, seen = len(hashes), set(hashes)
        for row in missing_unique(store, stem_hashes):
            if (key := stem_hashes[row].as_py()) not in seen:
                texts.append(stem_texts[row])
                hashes.append(key)
        embedded = len(hashes) - before
        counts[stem] = {"rows": len(stem_texts), "embedded": embedded, "reused": len(stem_texts) - embedded}
    plan = pa.table({"text": pa.array(texts, pa.string()), "hash": pa.array(hashes, pa.binary(16))})
    path = work_dir / "embed-plan.parquet"
    atomic_write(path, lambda h: pq.write_table(plan, h, row_group_size=config.chunk_size, compression="zstd"))
    metadata = pq.ParquetFile(path).metadata
    shards = [
        {"plan": str(path), "shard": i, "rows": metadata.row_group(i).num_rows}
        for i in range(metadata.num_row_groups if plan.num_rows else 0)
    ]
    return _finish(work_dir / "embed-plan.json", {"shards": shards, "counts": counts, "texts": plan.num_rows})


def embed_shard_stage(shard: dict[str, Any], *, config: EmbedConfig, store_root: str | Path) -> dict[str, Any]:
    """Embed one planned shard into the store (nothing when the store already holds it)."""
    from negminer.mining.embedding import embed_into_store

    start = time.perf_counter()
    table = pq.ParquetFile(shard["plan"]).read_row_group(shard["shard"])
    store = _open_store(config, store_root)
    hashes = table.column("hash").combine_chunks()
    absent = np.nonzero(store.lookup(hashes) < 0)[0]
    if len(absent):
        texts = table.column("text").to_pylist()
        embed_into_store(
            [texts[i] for i in absent],
            hashes.take(absent),
            store=store,
            batch_size=config.batch_size,
            model=_shared_model(config),
            processes=config.processes,
            precision=config.precision,
        )
    return {
        "shard": shard["shard"],
        "rows": table.num_rows,
        "embedded": len(absent),
        "seconds": round(time.perf_counter() - start, 3),
    }


def embed_assemble_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> dict[str, Any]:
    """Write anchors.npy / docs.npy from the store once the planned shards are in it.

    Texts still missing (a shard removed by ``gc`` meanwhile) are embedded here, with a warning.
    """
    from negminer.mining.embedding import embed_to_file
    from negminer.textkeys import content_hashes

    work_dir = Path(work_dir)
    if ref := _done(work_dir / "embed.json"):
        return ref
    if config.precomputed:
        return _finish(work_dir / "embed.json", _load_precomputed(work_dir, config))
    plan = embed_plan_stage(work_dir, config=config, store_root=store_root)
    model = _shared_model(config)
    store = _open_store(config, store_root)
    results, shards = {}, set()
    for stem in ("anchors", "docs"):
        texts = _texts(work_dir, stem)
        result = embed_to_file(
            texts,
            work_dir / f"{stem}.npy",
            model=model,
            store=store,
            batch_size=config.batch_size,
            chunk_size=config.chunk_size,
            processes=config.processes,
            precision=config.precision,
        )
        if result.embedded:
            logger.warning(
                "%d %s texts were missing from the store after its shards; embedded now", result.embedded, stem
            )
        shards.update(store.shard_names(store.lookup(content_hashes(texts))))
        results[stem] = {**plan["counts"][stem], "truncated": result.truncated}
    path = resolve_model_path(config.model)
    model_ref = {"name": config.model or "all-MiniLM-L6-v2", "path": str(path), "fingerprint": model_fingerprint(path)}
    ref = {
        "model": model_ref,
        "dim": store.dim,
        "embedding": results,
        "store": {"root": str(Path(store_root).resolve()), "folder": store.folder.name, "shards": sorted(shards)},
    }
    return _finish(work_dir / "embed.json", ref)


def _load_precomputed(work_dir: Path, config: EmbedConfig) -> dict[str, Any]:
    """anchors.npy / docs.npy from the user's vectors files, matched by anchor_id / doc_id."""
    from negminer.mining.precomputed import vectors_for

    results, dims = {}, set()
    sources = (("anchors", "anchor_id", config.anchor_vectors), ("docs", "doc_id", config.doc_vectors))
    for stem, id_column, source in sources:
        ids = pq.read_table(work_dir / f"{stem}.parquet", columns=[id_column]).column(id_column).to_pylist()
        vectors = vectors_for(ids, source, what=stem[:-1])
        write_npy_atomic(work_dir / f"{stem}.npy", vectors)
        dims.add(vectors.shape[1])
        results[stem] = {"rows": len(ids), "embedded": 0, "reused": len(ids), "truncated": 0}
    if len(dims) > 1:
        raise InputError(f"anchor and doc vectors differ in dimension: {sorted(dims)}", path=config.doc_vectors)
    model = {"name": "precomputed", "path": None, "fingerprint": _embedding_source_fingerprint(config)}
    return {"model": model, "dim": dims.pop(), "embedding": results, "store": None}


def embed_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> dict[str, Any]:
    """Embed anchors and docs through the embedding store into anchors.npy / docs.npy.

    Plan, embed every shard, assemble: what the flow runs as separate (cached, mapped) tasks.
    """
    if ref := _done(Path(work_dir) / "embed.json"):
        return ref
    plan = embed_plan_stage(work_dir, config=config, store_root=store_root)
    for shard in plan["shards"]:
        embed_shard_stage(shard, config=config, store_root=store_root)
    return embed_assemble_stage(work_dir, config=config, store_root=store_root)


def _index_key(config: IndexConfig, mine: MineConfig) -> str:
    """Names the index files: the index settings plus what tunes it (search depth, seed)."""
    key = {"index": config.model_dump(mode="json"), "search_depth": mine.search_depth, "seed": mine.seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def index_stage(
    work_dir: str | Path, *, config: IndexConfig, mine: MineConfig, parent: str | Path | None = None
) -> dict[str, Any]:
    """Build the search index over docs.npy into ``index-<key>.faiss``, or extend the parent's.

    `parent` is the work folder of the dataset's LATEST version. When its docs are the first
    docs of this run (same texts in the same order, embedded through the same store) and the
    index type is unchanged, its index is loaded and only the new docs are added; a flat index
    extended so is identical to a rebuilt one. Otherwise the index is built from scratch.
    """
    from negminer.mining.index import build_search_index, choose_factory, extend_search_index, save_index

    work_dir = Path(work_dir)
    key = _index_key(config, mine)
    if ref := _done(work_dir / f"index-{key}.json"):
        return ref
    doc_vectors = np.load(work_dir / "docs.npy", mmap_mode="r")
    k = min(mine.search_depth, len(doc_vectors))
    if index_shards(len(doc_vectors), config=config):  # each shard draws its own recall sample
        parent_dir = Path(parent) if parent else None
        ref = _sharded_index(work_dir, key, len(doc_vectors), k, config, mine, parent_dir)
        return _finish(work_dir / f"index-{key}.json", ref)
    anchor_vectors = np.load(work_dir / "anchors.npy", mmap_mode="r")
    sample = np.random.default_rng(mine.seed).permutation(len(anchor_vectors))[: config.recall_sample]
    factory = choose_factory(*doc_vectors.shape, kind=config.kind, exact_max_docs=config.exact_max_docs)
    base = _parent_index(work_dir, Path(parent) if parent else None, key=key, factory=factory)
    if base is None:
        index, report = build_search_index(
            doc_vectors, sample_queries=anchor_vectors[np.sort(sample)], k=k, **_build_options(config, mine.seed)
        )
    else:
        index, report = extend_search_index(
            base[0],
            doc_vectors,
            first_new=base[0].ntotal,
            factory=factory,
            sample_queries=anchor_vectors[np.sort(sample)],
            k=k,
            min_recall=config.min_recall,
        )
    path = save_index(index, work_dir / f"index-{key}.faiss")
    ref = {
        "key": key,
        "path": str(path),
        "rows": len(doc_vectors),
        **{f: v for f, v in report._asdict().items() if f != "seconds"},
        "extended_from": None if base is None else {"work": base[1], "rows": base[0].ntotal},
        "seconds": round(report.seconds, 3),
    }
    return _finish(work_dir / f"index-{key}.json", ref)


def _build_options(config: IndexConfig, seed: int) -> dict[str, Any]:
    """build_search_index's options from the index settings."""
    return {
        "kind": config.kind,
        "exact_max_docs": config.exact_max_docs,
        "min_recall": config.min_recall,
        "use_gpu": config.use_gpu,
        "seed": seed,
    }


def index_shards(n_docs: int, *, config: IndexConfig) -> list[dict[str, int]]:
    """The doc ranges that get an index each; empty when the pool gets one index.

    Example:
        >>> index_shards(5, config=IndexConfig(shard_docs=2))
        [{'shard': 0, 'first': 0, 'stop': 2}, {'shard': 1, 'first': 2, 'stop': 4}, {'shard': 2, 'first': 4, 'stop': 5}]
    """
    from negminer.mining.index import doc_ranges

    if config.shard_docs is None or n_docs <= config.shard_docs:
        return []
    ranges = doc_ranges(n_docs, config.shard_docs)
    return [{"shard": i, "first": first, "stop": stop} for i, (first, stop) in enumerate(ranges)]


def index_shard_stage(
    work_dir: str | Path,
    shard: dict[str, int],
    *,
    config: IndexConfig,
    mine: MineConfig,
    parent: str | Path | None = None,
) -> dict[str, Any]:
    """Build and save the index of one doc range (:func:`index_shards`), tuned on its own.

    Idempotent: a shard whose index is saved is not built again. The flow maps this over the
    shards (on Dask workers, one per task); :func:`index_stage` then collects them. When
    `parent` (the work folder of the dataset's LATEST version) indexed the same doc range
    over the same docs, its shard is taken over (hard link) instead of built: an incremental
    run that appends docs builds only the ranges that changed.
    """
    from negminer.mining.index import build_index_shard

    work_dir = Path(work_dir)
    key = _index_key(config, mine)
    path = work_dir / f"index-{key}.s{shard['shard']:05d}.faiss"
    if ref := _done(path.with_suffix(".json")):
        return ref
    start = time.perf_counter()
    doc_vectors = np.load(work_dir / "docs.npy", mmap_mode="r")
    k = min(mine.search_depth, len(doc_vectors))
    if taken := _parent_shard(work_dir, Path(parent) if parent else None, shard, key=key, k=k, path=path):
        return _finish(path.with_suffix(".json"), {**taken, "seconds": round(time.perf_counter() - start, 3)})
    anchor_vectors = np.load(work_dir / "anchors.npy", mmap_mode="r")
    sample = np.random.default_rng(mine.seed).permutation(len(anchor_vectors))[: config.recall_sample]
    first, stop = shard["first"], shard["stop"]
    _, report = build_index_shard(
        doc_vectors,
        first,
        stop,
        path,
        sample_queries=anchor_vectors[np.sort(sample)],
        k=k,
        **_build_options(config, mine.seed),
    )
    ref = {
        **{f: v for f, v in report._asdict().items() if f != "seconds"},
        "path": str(path),
        "first": first,
        "stop": stop,
        "reused_from": None,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return _finish(path.with_suffix(".json"), ref)


def _parent_shard(
    work_dir: Path, parent: Path | None, shard: dict[str, int], *, key: str, k: int, path: Path
) -> dict[str, Any] | None:
    """The parent's index of the same doc range linked to `path`, when its docs are this run's."""
    if parent is None or parent.resolve() == work_dir.resolve():
        return None
    old_path = parent / path.name
    old_ref = _done(old_path.with_suffix(".json"))
    # the shard was tuned for min(k, its size) neighbours, as build_index_shard does
    if old_ref is None or not old_path.exists() or old_ref.get("k") != min(k, shard["stop"] - shard["first"]):
        return None
    if (old_ref["first"], old_ref["stop"]) != (shard["first"], shard["stop"]):
        return None
    store = _store_of(work_dir)
    if _store_of(parent) != store or not _same_doc_texts(work_dir, parent, shard["first"], shard["stop"]):
        return None
    if None in store and not _same_doc_vectors(work_dir, parent, shard["first"], shard["stop"]):
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(old_path, tmp)
        except OSError:  # another file system: copy
            shutil.copyfile(old_path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("index shard %d (docs %d-%d) taken from %s", shard["shard"], shard["first"], shard["stop"], parent.name)
    return {**old_ref, "path": str(path), "reused_from": parent.name}


def _sharded_index(
    work_dir: Path, key: str, n_docs: int, k: int, config: IndexConfig, mine: MineConfig, parent: Path | None
) -> dict[str, Any]:
    """The index reference over every doc range's index (built or taken over here when not yet)."""
    start = time.perf_counter()
    built = [
        index_shard_stage(work_dir, s, config=config, mine=mine, parent=parent)
        for s in index_shards(n_docs, config=config)
    ]
    recalls = [shard["recall"] for shard in built if shard["recall"] is not None]
    reused = [shard for shard in built if shard.get("reused_from")]
    extended = None
    if reused:
        rows = sum(shard["stop"] - shard["first"] for shard in reused)
        extended = {"work": reused[0]["reused_from"], "rows": rows, "shards": len(reused)}
    return {
        "key": key,
        "path": None,
        "rows": n_docs,
        "factory": built[0]["factory"],
        "params": {},
        "recall": min(recalls) if recalls else None,
        "recall_sample": built[0]["recall_sample"],
        "k": k,
        "gpu": built[0]["gpu"],
        "shards": [
            {f: shard.get(f) for f in ("path", "first", "stop", "params", "recall", "reused_from")} for shard in built
        ],
        "extended_from": extended,
        "seconds": round(time.perf_counter() - start + sum(shard["seconds"] for shard in built), 3),
    }


def _open_index(index_ref: dict[str, Any], config: IndexConfig) -> Any:
    """The loaded index, or the list of index shards that the search loads one at a time."""
    from negminer.mining.index import IndexShard, load_index

    if index_ref.get("shards"):
        return [
            IndexShard(shard["path"], shard["first"], shard["stop"], shard["params"], use_gpu=config.use_gpu)
            for shard in index_ref["shards"]
        ]
    return load_index(index_ref["path"], params=index_ref["params"], use_gpu=config.use_gpu)


def _parent_index(work_dir: Path, parent: Path | None, *, key: str, factory: str) -> tuple[Any, str] | None:
    """The parent run's index and work key, when this run's docs extend the parent's docs."""
    import faiss

    if parent is None or parent.resolve() == work_dir.resolve():
        return None
    old_ref = _done(parent / f"index-{key}.json")
    if old_ref is None or old_ref.get("shards") or old_ref["factory"] != factory:
        return None
    if not Path(old_ref["path"]).exists():
        return None
    shared = _shared_doc_prefix(work_dir, parent)
    if shared is None or None in _store_of(work_dir):
        return None
    index = faiss.read_index(old_ref["path"])
    if index.ntotal != shared:
        return None
    logger.info("extending the index of %s (%d docs)", parent.name, shared)
    return index, parent.name


def _same_doc_vectors(work_dir: Path, parent: Path, first: int, stop: int, *, block: int = 65536) -> bool:
    """Whether docs.npy rows [first, stop) are equal in both work folders (read in blocks)."""
    new = np.load(work_dir / "docs.npy", mmap_mode="r")
    old = np.load(parent / "docs.npy", mmap_mode="r")
    if old.shape[1:] != new.shape[1:] or old.dtype != new.dtype or len(old) < stop:
        return False
    return all(
        np.array_equal(new[i : min(i + block, stop)], old[i : min(i + block, stop)]) for i in range(first, stop, block)
    )


def _same_doc_texts(work_dir: Path, parent: Path, first: int, stop: int) -> bool:
    """Whether both runs' docs [first, stop) are the same texts (only the row groups holding them are read)."""
    old, new = pq.ParquetFile(parent / "docs.parquet"), pq.ParquetFile(work_dir / "docs.parquet")
    if old.metadata.num_rows < stop or new.metadata.num_rows < stop:
        return False
    return _text_range(old, first, stop).equals(_text_range(new, first, stop))


def _text_range(file: pq.ParquetFile, first: int, stop: int) -> pa.ChunkedArray:
    """The ``text`` column's rows [first, stop) of `file`."""
    groups, begin, offset = [], None, 0
    for group in range(file.metadata.num_row_groups):
        rows = file.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > first:
            groups.append(group)
            begin = offset if begin is None else begin
        offset += rows
    texts = file.read_row_groups(groups, columns=["text"]).column("text")
    return texts.slice(first - (begin or 0), stop - first)


def _shared_doc_prefix(work_dir: Path, parent: Path) -> int | None:
    """How many docs the parent run had, when they begin this run's docs (same texts and order).

    Their vectors are the same too when both runs embedded through the same store; runs on
    precomputed vectors (no store) compare them with :func:`_same_doc_vectors`. An unsharded
    index is extended only over such a prefix; a shard is taken over when its own range matches
    (:func:`_same_doc_texts`).
    """
    if _store_of(parent) != _store_of(work_dir):
        return None
    old_docs = pq.read_table(parent / "docs.parquet", columns=["text"]).column("text")
    new_docs = pq.read_table(work_dir / "docs.parquet", columns=["text"]).column("text")
    if len(old_docs) > len(new_docs) or not new_docs.slice(0, len(old_docs)).equals(old_docs):
        return None
    return len(old_docs)


def _store_of(work_dir: Path) -> tuple[str | None, str | None]:
    """(store root, model folder) that a work folder's vectors came from."""
    store = (_done(work_dir / "embed.json") or {}).get("store") or {}
    return store.get("root"), store.get("folder")


def search_stage(
    work_dir: str | Path,
    *,
    config: MineConfig,
    index_config: IndexConfig = IndexConfig(),
    index_ref: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrieve `search_depth` candidates per anchor into candidates-d<depth>-<index key>.parquet.

    `index_ref` is :func:`index_stage`'s result; without it the index is built here. The flow
    runs the same search as shards (:func:`search_shard_stage`, :func:`search_merge_stage`).
    """
    work_dir = Path(work_dir)
    index_ref = index_ref or index_stage(work_dir, config=index_config, mine=config)
    stem = _search_stem(config, index_ref)
    if ref := _done(work_dir / f"search-{stem}.json"):
        return ref
    result = _search(
        work_dir, work_dir / f"candidates-{stem}.parquet", config=config, index_config=index_config, index_ref=index_ref
    )
    return _finish(
        work_dir / f"search-{stem}.json", _search_ref(result.path, result.rows, result.depth, result.seconds, index_ref)
    )


def _search_stem(config: MineConfig, index_ref: dict[str, Any]) -> str:
    return f"d{config.search_depth}-{index_ref['key']}"


def _search_ref(path: Path, rows: int, depth: int, seconds: float, index_ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "candidates": str(path),
        "rows": rows,
        "depth": depth,
        "index": _index_summary(index_ref),
        "seconds": round(seconds, 3),
    }


def _index_summary(index_ref: dict[str, Any]) -> dict[str, Any]:
    """The index reference without paths or timing (what the manifest records)."""
    summary = {k: v for k, v in index_ref.items() if k not in ("path", "seconds")}
    if "shards" in summary:
        summary["shards"] = [{k: v for k, v in shard.items() if k != "path"} for shard in summary["shards"]]
    return summary


def _search(
    work_dir: Path,
    out_path: Path,
    *,
    config: MineConfig,
    index_config: IndexConfig,
    index_ref: dict[str, Any],
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
        doc_text_keys=docs.column("text_key").to_pylist(),
        anchor_text_keys=anchors.column("text_key").to_pylist(),
        search_depth=config.search_depth,
        batch_size=config.search_batch_size,
        index=_open_index(index_ref, index_config),
        anchor_range=anchor_range,
    )


def search_shards(n_anchors: int, *, config: MineConfig) -> list[dict[str, int]]:
    """Consecutive anchor ranges of at most ``config.search_shard_size`` anchors (always one or more).

    Example:
        >>> search_shards(5, config=MineConfig(search_shard_size=2))
        [{'shard': 0, 'first': 0, 'stop': 2}, {'shard': 1, 'first': 2, 'stop': 4}, {'shard': 2, 'first': 4, 'stop': 5}]
    """
    size = config.search_shard_size
    starts = range(0, max(n_anchors, 1), size)
    return [{"shard": i, "first": first, "stop": min(first + size, n_anchors)} for i, first in enumerate(starts)]


def _part_path(work_dir: Path, stem: str, shard: dict[str, int]) -> Path:
    """A shard's part, named by the anchor range it covers (not its number, which another
    ``search_shard_size`` gives to other anchors): a resumed run reuses only the parts of its own shards."""
    return work_dir / f"candidates-{stem}.part{shard['first']:08d}-{shard['stop']:08d}.parquet"


def search_shard_stage(
    work_dir: str | Path,
    shard: dict[str, int],
    *,
    config: MineConfig,
    index_config: IndexConfig,
    index_ref: dict[str, Any],
) -> dict[str, Any]:
    """Search one shard of anchors (:func:`search_shards`) into its part of the candidate table.

    Idempotent: a finished part of the same anchor range, or a finished merged table, is not
    searched again.
    """
    work_dir = Path(work_dir)
    stem = _search_stem(config, index_ref)
    part = _part_path(work_dir, stem, shard)
    if _done(work_dir / f"search-{stem}.json"):
        return {"shard": shard["shard"], "rows": None, "merged": True}
    if ref := _done(part.with_suffix(".json")):
        return ref
    result = _search(
        work_dir,
        part,
        config=config,
        index_config=index_config,
        index_ref=index_ref,
        anchor_range=(shard["first"], shard["stop"]),
    )
    ref = {
        "shard": shard["shard"],
        "first": shard["first"],
        "stop": shard["stop"],
        "path": str(part),
        "rows": result.rows,
        "depth": result.depth,
        "seconds": round(result.seconds, 3),
    }
    return _finish(part.with_suffix(".json"), ref)


def search_merge_stage(
    work_dir: str | Path,
    shards: list[dict[str, int]],
    *,
    config: MineConfig,
    index_config: IndexConfig,
    index_ref: dict[str, Any],
) -> dict[str, Any]:
    """Concatenate the shards' parts, in anchor order, into the candidate table of :func:`search_stage`.

    Each anchor is searched in exactly one shard against the whole index, so the merged table
    equals the single-task one row for row. Parts still missing (a lost worker) are searched here.
    Runs on the same inputs share the work folder and may run at once: a run that finds the
    merge done by another (before or after its shards, or its parts removed by that merge)
    returns that merge's reference.
    """
    work_dir = Path(work_dir)
    stem = _search_stem(config, index_ref)
    merged = work_dir / f"search-{stem}.json"
    if ref := _done(merged):
        return ref
    refs = [
        search_shard_stage(work_dir, shard, config=config, index_config=index_config, index_ref=index_ref)
        for shard in shards
    ]
    ref = _done(merged) or _merge_parts(work_dir, stem, refs, index_ref)
    _remove_parts(work_dir, stem)
    return ref


def _merge_parts(work_dir: Path, stem: str, refs: list[dict[str, Any]], index_ref: dict[str, Any]) -> dict[str, Any]:
    """Merge the shards' parts into the candidate table and record it (search-<stem>.json).

    A part missing while it is read was removed by a concurrent run's finished merge: its
    reference is returned; without one the error stands.
    """
    from negminer.mining.search import merge_candidate_files

    start = time.perf_counter()
    path = work_dir / f"candidates-{stem}.parquet"
    try:
        rows = merge_candidate_files([r["path"] for r in refs], path)
    except FileNotFoundError:
        if ref := _done(work_dir / f"search-{stem}.json"):
            return ref
        raise
    seconds = time.perf_counter() - start + sum(r["seconds"] for r in refs)
    return _finish(work_dir / f"search-{stem}.json", _search_ref(path, rows, refs[0]["depth"], seconds, index_ref))


def _remove_parts(work_dir: Path, stem: str) -> None:
    """Remove the search's parts once merged, those of other shard sizes (an earlier, killed run) too."""
    for path in work_dir.glob(f"candidates-{stem}.part*"):
        if path.suffix in (".parquet", ".json"):
            path.unlink(missing_ok=True)


def curate_stage(work_dir: str | Path, candidates_path: str | Path, *, config: CurateConfig) -> dict[str, Any]:
    """Flag likely false negatives / false positives / near-duplicates (confident learning).

    Writes ``curated.parquet`` (the candidates with ``flagged_false_negative``, which the
    strategy drops so the next valid candidate replaces them), ``flagged.parquet`` and
    ``training-pairs.parquet`` (the pairs without those whose positive is dropped or
    quarantined). With curation disabled, the candidates and pairs pass through unchanged.
    """
    from negminer.curation import KINDS, curate_candidates, training_pairs

    work_dir = Path(work_dir)
    if not config.enabled:
        return {
            "candidates": str(candidates_path),
            "pairs": str(work_dir / "pairs.parquet"),
            "tables": {},
            "counts": {},
            "noise": None,
        }
    start = time.perf_counter()
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["doc_id", "text"])
    pairs = pq.read_table(work_dir / "pairs.parquet")
    result = curate_candidates(
        pq.read_table(candidates_path),
        pairs=pairs,
        anchor_vectors=np.load(work_dir / "anchors.npy", mmap_mode="r"),
        doc_vectors=np.load(work_dir / "docs.npy", mmap_mode="r"),
        anchor_texts=anchors.column("text").to_pylist(),
        doc_texts=docs.column("text").to_pylist(),
        config=config,
        anchor_ids=anchors.column("anchor_id").to_pylist(),
        doc_ids=docs.column("doc_id").to_pylist(),
    )
    paths = {stem: work_dir / f"{stem}.parquet" for stem in ("curated", "flagged", "training-pairs")}
    write_parquet_atomic(paths["curated"], result.candidates)
    write_parquet_atomic(paths["flagged"], result.flagged)
    write_parquet_atomic(paths["training-pairs"], training_pairs(pairs, result.excluded_pairs))
    return {
        "candidates": str(paths["curated"]),
        "pairs": str(paths["training-pairs"]),
        "tables": {"flagged": str(paths["flagged"])},
        "counts": {"flagged_by_kind": {kind: result.counts[kind] for kind in KINDS}, "curation": result.counts},
        "noise": result.noise,
        "seconds": round(time.perf_counter() - start, 3),
    }


def select_stage(
    work_dir: str | Path,
    candidates_path: str | Path,
    *,
    config: MineConfig,
    pairs_path: str | Path | None = None,
    batch_rows: int | None = None,
) -> dict[str, Any]:
    """Apply the strategy and build the views; writes selected/triplets[/scored]/pairs-scored.

    The selection is :func:`negminer.mining.streaming.derive_files`, which ``refilter``
    shares: the candidate table is read in batches of whole anchors (`batch_rows` rows, default
    :data:`negminer.mining.streaming.BATCH_ROWS`) and the outputs are written as they are made,
    so memory does not grow with the number of candidates. This stage adds each pair's cosine
    (from the vectors) to the pairs table. `pairs_path` is the curation stage's training pairs
    (default: all validated pairs).
    """
    from negminer.mining.derive import with_pair_scores
    from negminer.mining.streaming import BATCH_ROWS, BatchedFeedback, derive_files

    work_dir = Path(work_dir)
    start = time.perf_counter()
    all_pairs = with_pair_scores(
        pq.read_table(work_dir / "pairs.parquet"),
        np.load(work_dir / "anchors.npy", mmap_mode="r"),
        np.load(work_dir / "docs.npy", mmap_mode="r"),
    )
    pairs, held_out = _split_training_pairs(all_pairs, pairs_path)
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["doc_id", "text", "text_key"])
    feedback = BatchedFeedback(
        _work_dir_decisions(work_dir),
        schema=pq.read_schema(candidates_path),
        anchors=anchors,
        docs=docs,
        pairs=pairs,
        extra_positives=config.audit_extra_positives,
        held_out=held_out,
    )
    names = {"candidates": "selected", "triplets": "triplets", "scored": "scored"}
    derived = derive_files(
        candidates_path,
        {stem: work_dir / f"{name}.parquet" for stem, name in names.items()},
        anchors=anchors,
        docs=docs,
        pairs=feedback.pairs,
        config=config,
        transform=feedback,
        batch_rows=batch_rows or BATCH_ROWS,
    )
    paths = {stem: str(path) for stem, path in derived.paths.items()}
    paths["pairs"] = str(write_parquet_atomic(work_dir / "pairs-scored.parquet", pairs))
    return {
        "selected": paths["candidates"],
        "triplets": paths["triplets"],
        "tables": paths,
        "counts": {**derived.counts, "audit": feedback.counts},
        "selection": derived.selection,
        "score_quantiles": derived.score_quantiles,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _split_training_pairs(all_pairs: pa.Table, training_path: str | Path | None) -> tuple[pa.Table, pa.Table]:
    """(training pairs, pairs curation held out of training), both from `all_pairs`."""
    if training_path is None:
        return all_pairs, all_pairs.schema.empty_table()
    training = pq.read_table(training_path, columns=["pair_idx"]).column("pair_idx")
    in_training = pc.is_in(all_pairs.column("pair_idx"), value_set=training.combine_chunks())
    return all_pairs.filter(in_training), all_pairs.filter(pc.invert(in_training))


def _work_dir_decisions(work_dir: Path) -> pa.Table:
    """Reviewers' decisions for the dataset of a work folder ``ROOT/NAME/.work/KEY`` (none otherwise)."""
    from negminer.audit.feedback import load_decisions

    work_dir = work_dir.resolve()
    if work_dir.parent.name != ".work":
        logger.debug("%s is not ROOT/NAME/.work/KEY: no audit decisions applied", work_dir)
        return pa.table({c: pa.array([], pa.string()) for c in ("anchor_id", "doc_id", "decision")})
    return load_decisions(work_dir.parents[2], work_dir.parents[1].name)


def audit_load_stage(version_dir: str | Path, root: str | Path) -> dict[str, Any]:
    """Load the version's flagged pairs into the audit database (``ROOT/audit.db`` by default)."""
    from negminer.audit.db import default_url, open_db
    from negminer.audit.loader import load_version

    if not (Path(version_dir) / "flagged.parquet").exists():
        return {"loaded": 0}
    engine = open_db(os.environ.get("NEGMINER_AUDIT_DB") or default_url(root))
    try:
        result = load_version(engine, version_dir)
    finally:
        engine.dispose()
    return {"loaded": result.rows, "version": str(version_dir)}


PUBLISHING = "publishing.json"  # in the work folder while write_stage publishes: {"parent": ...}


def write_stage(
    work_dir: str | Path,
    root: str | Path,
    name: str,
    *,
    config: PipelineConfig,
    read_ref: dict[str, Any],
    embed_ref: dict[str, Any],
    search_ref: dict[str, Any],
    select_ref: dict[str, Any],
    curate_ref: dict[str, Any] | None = None,
) -> str:
    """Publish the dataset version (manifest last, LATEST replaced); prune older work folders.

    The manifest depends only on the inputs, the config and the parent (no timings), so a
    resumed run writes the bytes an uninterrupted one would. ``changes`` compares the version
    with its parent, the LATEST version when it is written. This run's work folder is kept as
    the cache of the next run; the dataset's other idle work folders are removed.

    Idempotent: a call that follows one which published its version and then failed (a task
    retry) returns that version instead of publishing the same content again.

    `curate_ref` (the curation stage's reference, optional) adds its ``tables`` (stem -> path,
    e.g. ``{"flagged": ...}``) to the version and its ``counts`` (e.g. ``flagged_by_kind``).
    """
    from negminer.storage.retention import prune_work_dirs
    from negminer.storage.versions import latest_version, remove_stale_staging, write_version

    work_dir = Path(work_dir)
    dataset_dir = Path(root) / name
    remove_stale_staging(dataset_dir)
    # Files the stages wrote are published as they are (no reading back into memory).
    files = {
        "triplets": select_ref["triplets"],
        "candidates": select_ref["selected"],
        **select_ref.get("tables", {}),
        **(curate_ref or {}).get("tables", {}),
    }
    files.update(
        {stem: work_dir / f"{stem}.parquet" for stem in ("rejects", "anchors", "docs", "pairs") if stem not in files}
    )
    version = _published_before(work_dir, dataset_dir, files)
    if version is None:
        parent = latest_version(dataset_dir)
        refs = {"read": read_ref, "embed": embed_ref, "search": search_ref, "select": select_ref}
        manifest = _version_manifest(work_dir, root, name, config=config, refs=refs, curate_ref=curate_ref)
        manifest["changes"] = _changes(dataset_dir, parent, files, select_ref["score_quantiles"])
        # The intent goes first: a retry after the publish below finds the version by it.
        _finish(work_dir / PUBLISHING, {"parent": parent})
        version = write_version(root, name, tables={}, files=files, manifest=manifest, parent=parent)
    _record_published(work_dir, version)
    prune_work_dirs(dataset_dir, keep={work_dir.name})
    (work_dir / PUBLISHING).unlink(missing_ok=True)
    return str(version)


def _version_manifest(
    work_dir: Path,
    root: str | Path,
    name: str,
    *,
    config: PipelineConfig,
    refs: dict[str, dict[str, Any]],
    curate_ref: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest of a mined version, but for ``changes`` and what write_version fills in."""
    select_ref, search_ref = refs["select"], refs["search"]
    return {
        "name": name,
        "config": config.model_dump(mode="json"),
        "model": refs["embed"]["model"],
        "inputs": refs["read"]["inputs"],
        "counts": {
            **refs["read"]["counts"],
            **select_ref["counts"],
            **(curate_ref or {}).get("counts", {}),
            "embedding": _embedding_counts(refs["embed"]["embedding"], published=_done(work_dir / "published.json")),
            "candidates": search_ref["rows"],
        },
        "score_quantiles": select_ref["score_quantiles"],
        "noise": (curate_ref or {}).get("noise"),  # cleanlab's estimated label noise
        "selection": select_ref.get("selection", {}),
        "search_depth": search_ref["depth"],
        "index": _without_seconds(search_ref.get("index")),
        "work": {"key": work_dir.name},
        "embedding_store": _store_entry(refs["embed"].get("store"), root),
    }


def _changes(
    dataset_dir: Path, parent: str | None, files: dict[str, str | Path], score_quantiles: dict[str, Any]
) -> dict[str, Any] | None:
    """The new version's ``changes`` against `parent` (None for a first version)."""
    from negminer.storage.lineage import lineage_tables, version_changes

    return version_changes(
        dataset_dir / parent if parent else None,
        tables=lineage_tables(files) if parent else {},
        score_quantiles=score_quantiles,
    )


def _published_before(work_dir: Path, dataset_dir: Path, files: dict[str, str | Path]) -> Path | None:
    """The version an earlier call published from this work folder before it failed, if any.

    That call left its intent (:data:`PUBLISHING`); its version is one newer than the parent
    it names, with that parent, this work key and files of the same sha256.
    """
    from negminer.storage.versions import list_versions, read_manifest

    intent = _done(work_dir / PUBLISHING)
    if intent is None:
        return None
    wanted: dict[str, str] | None = None
    for version in reversed(list_versions(dataset_dir)):
        if version == intent["parent"]:
            break
        manifest = read_manifest(dataset_dir / version)
        if manifest.get("parent") != intent["parent"] or (manifest.get("work") or {}).get("key") != work_dir.name:
            continue
        wanted = wanted or {f"{stem}.parquet": sha256_file(path) for stem, path in files.items()}
        if {fname: info["sha256"] for fname, info in manifest.get("files", {}).items()} == wanted:
            return _as_latest(dataset_dir, version, parent=intent["parent"])
    return None


def _as_latest(dataset_dir: Path, version: str, *, parent: str | None) -> Path | None:
    """`version` (published by an earlier attempt) once it is LATEST, or None to publish anew.

    The attempt may have died between the rename into place and writing LATEST: then LATEST
    still names its parent and is moved on. If another version has become LATEST since, this
    call is no retry of the last publish, and a new version is published as before.
    """
    from negminer.storage.versions import finish_publish

    if not finish_publish(dataset_dir, version, parent=parent):
        return None
    logger.info("%s was published by an earlier attempt of this write; not publishing it again", version)
    return dataset_dir / version


def _record_published(work_dir: Path, version: Path) -> None:
    """Add `version` to the work folder's ``published.json`` (once)."""
    published = (_done(work_dir / "published.json") or {}).get("versions", [])
    if str(version) not in published:
        _finish(work_dir / "published.json", {"versions": [*published, str(version)]})


def _embedding_counts(counts: dict[str, dict[str, int]], *, published: dict[str, Any] | None) -> dict[str, Any]:
    """Texts embedded for this version: none when a version of the same inputs was published before."""
    if not published:
        return counts
    return {stem: {**c, "embedded": 0, "reused": c["rows"]} for stem, c in counts.items()}


def _without_seconds(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if ref is None else {k: v for k, v in ref.items() if k != "seconds"}


def _store_entry(store: dict[str, Any] | None, root: str | Path) -> dict[str, Any] | None:
    """The store a version's vectors came from: its path relative to ROOT when inside it."""
    if store is None:
        return None
    path = Path(store["root"])
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path(root).resolve())
    return {"path": str(path), "folder": store["folder"], "shards": store["shards"]}


def parent_work_dir(root: str | Path, name: str) -> str | None:
    """The work folder of the dataset's LATEST version, if it is still there (see index_stage)."""
    from negminer.storage.versions import latest_version, read_manifest

    dataset_dir = Path(root) / name
    latest = latest_version(dataset_dir)
    if latest is None or not (dataset_dir / latest).is_dir():
        return None
    key = (read_manifest(dataset_dir / latest).get("work") or {}).get("key")
    path = dataset_dir / ".work" / key if key else None
    return str(path) if path is not None and path.is_dir() else None


def report_stage(version_dir: str | Path, *, timings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The run's report (markdown, top flagged pairs, link) from the version it wrote."""
    from negminer.report import run_report

    return run_report(version_dir, timings=timings)._asdict()
