"""The pipeline's stages as plain functions that hand off by path.

Each stage reads its inputs from the run's work folder, writes its outputs there atomically
and returns a small JSON-able reference (paths, fingerprints, counts). A stage whose outputs
already exist returns them without redoing the work, so a killed run resumes where it
stopped. The Prefect flow in :mod:`negminer.flows.mine` wires these as tasks; they are also
usable, and tested, without Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import EmbedConfig, InputConfig, MineConfig, PipelineConfig
from negminer.errors import InputError
from negminer.mining.encoder import embedding_dimension, load_model, model_fingerprint, resolve_model_path
from negminer.storage.atomic import sha256_file, write_bytes_atomic, write_parquet_atomic

logger = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


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


def work_dir_for(
    root: str | Path, name: str, *, pairs: str | Path, corpus: str | Path | None, config: PipelineConfig
) -> Path:
    """The run's work folder, keyed by input content, input options and embedding model."""
    key = {
        "pairs": fingerprint_input(pairs)["sha256"],
        "corpus": (fingerprint_input(corpus) or {}).get("sha256"),
        "input": config.input.model_dump(),
        "model": model_fingerprint(resolve_model_path(config.embed.model)),
        "max_seq_length": config.embed.max_seq_length,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root) / name / ".work" / digest


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


def embed_stage(work_dir: str | Path, *, config: EmbedConfig, store_root: str | Path) -> dict[str, Any]:
    """Embed anchors and docs through the embedding store into anchors.npy / docs.npy."""
    from negminer.mining.embedding import embed_to_file
    from negminer.storage.embedding_store import EmbeddingStore

    work_dir = Path(work_dir)
    if ref := _done(work_dir / "embed.json"):
        return ref
    path = resolve_model_path(config.model)
    model = _cached_model(config.model, config.device, config.max_seq_length)
    fingerprint = model_fingerprint(path)
    # Vectors depend on the truncation length too: a non-default one gets its own store folder.
    store_key = fingerprint if config.max_seq_length is None else f"{fingerprint}-seq{config.max_seq_length}"
    store = EmbeddingStore(store_root, model_fingerprint=store_key, dim=embedding_dimension(model))
    results = {}
    for stem in ("anchors", "docs"):
        texts = pq.read_table(work_dir / f"{stem}.parquet", columns=["text"]).column("text").to_pylist()
        result = embed_to_file(
            texts,
            work_dir / f"{stem}.npy",
            model=model,
            store=store,
            batch_size=config.batch_size,
            chunk_size=config.chunk_size,
            show_progress_bar=len(texts) > 2000,
        )
        results[stem] = {
            "rows": result.rows,
            "embedded": result.embedded,
            "reused": result.reused,
            "truncated": result.truncated,
            "seconds": round(result.seconds, 3),
        }
    ref = {
        "model": {"name": config.model or "all-MiniLM-L6-v2", "path": str(path), "fingerprint": fingerprint},
        "dim": store.dim,
        "embedding": results,
    }
    return _finish(work_dir / "embed.json", ref)


def search_stage(work_dir: str | Path, *, config: MineConfig) -> dict[str, Any]:
    """Retrieve `search_depth` candidates per anchor into candidates-d<depth>.parquet."""
    from negminer.mining.search import search_candidates

    work_dir = Path(work_dir)
    done_path = work_dir / f"search-d{config.search_depth}.json"
    if ref := _done(done_path):
        return ref
    pairs = pq.read_table(work_dir / "pairs.parquet")
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["text_key"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["text_key"])
    result = search_candidates(
        np.load(work_dir / "anchors.npy", mmap_mode="r"),
        np.load(work_dir / "docs.npy", mmap_mode="r"),
        work_dir / f"candidates-d{config.search_depth}.parquet",
        pair_anchor=pairs.column("anchor_idx").to_numpy(),
        pair_doc=pairs.column("doc_idx").to_numpy(),
        doc_text_keys=docs.column("text_key").to_pylist(),
        anchor_text_keys=anchors.column("text_key").to_pylist(),
        search_depth=config.search_depth,
        batch_size=config.search_batch_size,
    )
    ref = {"candidates": str(result.path), "rows": result.rows, "depth": result.depth, "seconds": round(result.seconds, 3)}
    return _finish(done_path, ref)


def select_stage(work_dir: str | Path, candidates_path: str | Path, *, config: MineConfig) -> dict[str, Any]:
    """Apply the strategy and build the training view; writes selected.parquet and triplets.parquet."""
    from negminer.mining.formats import negatives_by_anchor, training_view
    from negminer.mining.strategies import select_negatives, stable_hash64

    work_dir = Path(work_dir)
    start = time.perf_counter()
    anchors = pq.read_table(work_dir / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(work_dir / "docs.parquet", columns=["doc_id", "text"])
    pairs = pq.read_table(work_dir / "pairs.parquet")
    selection = select_negatives(
        pq.read_table(candidates_path),
        anchor_hash=stable_hash64(anchors.column("anchor_id").to_pylist()),
        doc_hash=stable_hash64(docs.column("doc_id").to_pylist()),
        **config.model_dump(include=_SELECT_OPTIONS),
    )
    candidates = _with_ids(selection.candidates, anchors, docs)
    chosen = candidates.filter(pc.is_valid(candidates.column("negative_slot")))
    grid = negatives_by_anchor(chosen, anchors.num_rows, config.num_negatives)
    view = training_view(
        pairs, anchors.column("text").combine_chunks(), docs.column("text").combine_chunks(), grid,
        output_format=config.output_format,
    )
    write_parquet_atomic(work_dir / "selected.parquet", candidates)
    write_parquet_atomic(work_dir / "triplets.parquet", view)
    return {
        "selected": str(work_dir / "selected.parquet"),
        "triplets": str(work_dir / "triplets.parquet"),
        "counts": {
            "triplet_rows": view.num_rows,
            "negatives": chosen.num_rows,
            "anchors_short": selection.anchors_short,
            "dropped_by_reason": selection.reason_counts,
        },
        "score_quantiles": _quantiles(candidates, chosen, pairs),
        "seconds": round(time.perf_counter() - start, 3),
    }


_SELECT_OPTIONS = {
    "num_negatives",
    "range_min",
    "range_max",
    "min_score",
    "max_score",
    "absolute_margin",
    "relative_margin",
    "sampling_strategy",
    "seed",
}


def _with_ids(candidates: pa.Table, anchors: pa.Table, docs: pa.Table) -> pa.Table:
    anchor_idx = candidates.column("anchor_idx")
    doc_idx = candidates.column("doc_idx")
    out = candidates.add_column(0, "anchor_id", anchors.column("anchor_id").take(anchor_idx))
    out = out.add_column(1, "doc_id", docs.column("doc_id").take(doc_idx))
    margin = pc.subtract(out.column("score"), out.column("positive_score"))
    return out.append_column("score_minus_positive", margin)


def _quantiles(candidates: pa.Table, chosen: pa.Table, pairs: pa.Table) -> dict[str, dict[str, float]]:
    def q(values: np.ndarray) -> dict[str, float]:
        if len(values) == 0:
            return {}
        return {f"q{round(p * 100):02d}": round(float(np.quantile(values, p)), 4) for p in QUANTILES}

    positive = candidates.filter(candidates.column("is_positive"))
    return {
        "negative": q(chosen.column("score").to_numpy()),
        "candidate": q(candidates.column("score").to_numpy()),
        "positive_retrieved": q(positive.column("score").to_numpy()),
    }


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
) -> str:
    """Publish the dataset version (manifest last, LATEST replaced) and clear the work folder."""
    from negminer.storage.versions import write_version

    work_dir = Path(work_dir)
    tables = {
        "triplets": pq.read_table(select_ref["triplets"]),
        "candidates": pq.read_table(select_ref["selected"]),
        "rejects": pq.read_table(work_dir / "rejects.parquet"),
        "anchors": pq.read_table(work_dir / "anchors.parquet"),
        "docs": pq.read_table(work_dir / "docs.parquet"),
        "pairs": pq.read_table(work_dir / "pairs.parquet"),
    }
    manifest = {
        "name": name,
        "config": config.model_dump(mode="json"),
        "model": embed_ref["model"],
        "inputs": read_ref["inputs"],
        "counts": {
            **read_ref["counts"],
            **select_ref["counts"],
            "embedding": embed_ref["embedding"],
            "candidates": search_ref["rows"],
        },
        "score_quantiles": select_ref["score_quantiles"],
        "search_depth": search_ref["depth"],
    }
    version = write_version(root, name, tables=tables, manifest=manifest)
    shutil.rmtree(work_dir, ignore_errors=True)
    return str(version)
