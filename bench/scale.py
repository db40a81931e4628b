"""Scale benchmark: mining with precomputed random-projection vectors, bounded memory.

Vectors are made by projecting sparse random "documents" through a fixed random matrix to
384 dims. Each document has a topic (2·√n topics for n documents, so √n/2 documents each),
which is one of its active features with weight 2, plus 8 words drawn from a 20,000-word
vocabulary: documents of one topic have cosine about 1/3, others about 0, so every anchor's
exact top-k lies in its topic, as with real embeddings. With words alone the vectors are
nearly isotropic, and with more topics than IVF lists (10,000 topics of 200 documents in 2M,
4,096 lists) tuning to recall 0.98 at k=50 ended at exhaustive nprobe: measured, so the
topic count grows with √n. Anchors are noisy copies of random docs (cosine about 0.7 to
their source). Both are written block by block to float16 ``.npy`` files (the
bring-your-own-embeddings path) and then memory-mapped read-only. negminer's index choice
(:mod:`negminer.mining.index`; ``--index auto`` uses the library's own
``IndexConfig().exact_max_docs`` threshold) builds and tunes the index, and
:func:`search_candidates` streams the candidate table to Parquet. Vectors are read in blocks
that are copied and released (:mod:`negminer.mining.vectors`), so mapped pages do not pile
up in the resident set. Prints the time of each phase, search throughput, recall@k against
exact search on a sample of anchors, and the process's peak RSS.

With ``--shard-docs N`` the pool gets one index per range of N docs (``index.shard_docs``),
built and saved one at a time, and the search loads one shard at a time and keeps every
anchor's top-k across shards (:func:`negminer.mining.index.search_index_shards`).

Run: python -m bench.scale --anchors 100000 --docs 1000000 --index flat
     python -m bench.scale --anchors 1000000 --docs 10000000 --index auto --shard-docs 2000000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse

from negminer.config import IndexConfig, MineConfig
from negminer.mining.index import (
    build_index_shards,
    build_search_index,
    exact_topk,
    recall_at_k,
    search_index_shards,
)
from negminer.mining.search import search_candidates
from negminer.mining.vectors import take_rows

DIM = 384


def random_projection_vectors(
    path: Path,
    n: int,
    *,
    seed: int,
    features: int = 20_000,
    active: int = 8,
    topics: int | None = None,
    topic_weight: float = 2.0,
    noise_of: np.ndarray | None = None,
    block: int = 200_000,
) -> np.ndarray:
    """(n, DIM) normalised float16 vectors written to `path`, returned memory-mapped read-only.

    Rows are noisy copies of random `noise_of` rows when it is given. The file is written
    through a file handle, block by block (a writable memory map would keep every written
    page resident).
    """
    topics = topics or max(1, int(2 * np.sqrt(n)))
    projection = np.random.default_rng(0).standard_normal((features + topics, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    with path.open("wb") as handle:
        descr = np.lib.format.dtype_to_descr(np.dtype(np.float16))
        header = {"descr": descr, "fortran_order": False, "shape": (n, DIM)}
        np.lib.format.write_array_header_1_0(handle, header)
        for first in range(0, n, block):
            m = min(block, n - first)
            if noise_of is None:
                vectors = _project(rng, m, projection, features=features, active=active, weight=topic_weight)
            else:
                rows = np.sort(rng.integers(0, len(noise_of), m))
                vectors = take_rows(noise_of, rows) + 0.05 * rng.standard_normal((m, DIM)).astype(np.float32)
                vectors = vectors[rng.permutation(m)]
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            handle.write(vectors.astype(np.float16).tobytes())
    return np.load(path, mmap_mode="r")


def _project(
    rng: np.random.Generator, m: int, projection: np.ndarray, *, features: int, active: int, weight: float
) -> np.ndarray:
    """(m, DIM) projections of documents with `active` random words and one random topic."""
    words = rng.integers(0, features, (m, active))
    topic = features + rng.integers(0, len(projection) - features, (m, 1))
    cols = np.concatenate([words, topic], axis=1).reshape(-1)
    values = np.tile(np.r_[np.ones(active, np.float32), np.float32(weight)], m)
    indptr = np.arange(0, m * (active + 1) + 1, active + 1)
    sparse = scipy.sparse.csr_matrix((values, cols, indptr), shape=(m, len(projection)))
    return np.asarray(sparse @ projection, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--index", default="flat", help='"flat", "auto" or a FAISS factory string')
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--recall-sample", type=int, default=500)
    parser.add_argument("--shard-docs", type=int, default=None, help="docs per index shard (index.shard_docs)")
    parser.add_argument("--workdir", default=None, help="folder for the temporary files (default: $TMPDIR)")
    args = parser.parse_args()
    print(f"command: python -m bench.scale {shlex.join(sys.argv[1:])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {_memory_gb():.0f} GB RAM")
    print(
        "| anchors × docs | index | make vectors s | build+tune s | search s | anchors/s | recall@k | "
        "candidate rows | peak RSS GB | wall s |\n|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        run(Path(tmp), args)


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run(tmp: Path, args: argparse.Namespace) -> None:
    begin = start = time.perf_counter()
    docs = random_projection_vectors(tmp / "docs.npy", args.docs, seed=1)
    anchors = random_projection_vectors(tmp / "anchors.npy", args.anchors, seed=2, noise_of=docs)
    docs = np.load(tmp / "docs.npy", mmap_mode="r")  # a fresh map: unmaps the pages the anchors' copies touched
    made = time.perf_counter() - start
    _phase("vectors written", made)
    sample = take_rows(anchors, np.arange(min(args.recall_sample, args.anchors)))
    start = time.perf_counter()
    options = {
        "sample_queries": sample,
        "k": args.depth,
        "kind": args.index,
        "exact_max_docs": IndexConfig().exact_max_docs,
        "min_recall": IndexConfig().min_recall,
        "use_gpu": IndexConfig().use_gpu,
        "seed": MineConfig().seed,
    }
    if args.shard_docs:
        built_shards = build_index_shards(
            docs, shard_docs=args.shard_docs, path_of=lambda i: tmp / f"s{i}.faiss", **options
        )
        index = [shard for shard, _ in built_shards]
        reports = [report for _, report in built_shards]
        name = f"{len(index)} shards of {reports[0].factory} {sorted({str(r.params) for r in reports})}"
    else:
        index, report = build_search_index(docs, **options)
        name = f"{report.factory} {report.params}"
    built = time.perf_counter() - start
    _phase(f"index {name} built and tuned", built)
    start = time.perf_counter()
    rows = _search(anchors, docs, tmp, index, args)
    searched = time.perf_counter() - start
    _phase("searched", searched)
    if args.shard_docs:
        approx = search_index_shards(
            index, sample, 0, len(sample), args.depth, batch_size=MineConfig().search_batch_size
        )[1]
    else:
        approx = index.search(sample, args.depth)[1]
    recall = recall_at_k(approx, exact_topk(sample, docs, args.depth))
    print(
        f"| {args.anchors:,} × {args.docs:,} | {name} | {made:.0f} | {built:.0f} | "
        f"{searched:.0f} | {args.anchors / searched:,.0f} | {recall:.4f} | {rows:,} | {_peak_rss_gb():.2f} | "
        f"{time.perf_counter() - begin:.0f} |",
        flush=True,
    )


def _phase(what: str, seconds: float) -> None:
    print(f"  {what}: {seconds:.0f} s, peak RSS so far {_peak_rss_gb():.2f} GB", file=sys.stderr, flush=True)


def _search(anchors: np.ndarray, docs: np.ndarray, tmp: Path, index, args: argparse.Namespace) -> int:
    """Stream the candidate table; text keys are ids here (no two vectors share a text)."""
    n_anchors = len(anchors)
    result = search_candidates(
        anchors,
        docs,
        tmp / "candidates.parquet",
        pair_anchor=np.arange(n_anchors, dtype=np.int64),
        pair_doc=np.arange(n_anchors, dtype=np.int64) % len(docs),
        doc_text_keys=range(len(docs)),
        anchor_text_keys=[-1 - i for i in range(n_anchors)],
        search_depth=args.depth,
        batch_size=MineConfig().search_batch_size,
        index=index,
    )
    return result.rows


if __name__ == "__main__":
    main()
