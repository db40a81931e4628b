"""Scale benchmark: mining with precomputed random-projection vectors, bounded memory.

Vectors are made by projecting sparse random "documents" (a few active features out of
`--features`) through a fixed random matrix to 384 dims, so they are clustered like real
embeddings; anchors are noisy copies of random docs. Doc vectors are written to a float16
memory map first (the bring-your-own-embeddings path), then negminer's index choice
(:mod:`negminer.mining.index`) builds and tunes the index and :func:`search_candidates`
streams the candidate table to Parquet. Prints throughput, recall@k against exact search on
a sample, and peak RSS.

Run: python -m bench.scale --anchors 100000 --docs 1000000 --index flat
     python -m bench.scale --anchors 1000000 --docs 10000000 --index auto
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse

from negminer.mining.index import build_search_index, exact_topk, recall_at_k
from negminer.mining.search import search_candidates

DIM = 384


def random_projection_vectors(
    path: Path,
    n: int,
    *,
    seed: int,
    features: int = 20_000,
    active: int = 8,
    noise_of: np.ndarray | None = None,
    block: int = 200_000,
) -> np.ndarray:
    """(n, DIM) normalised float16 memory map at `path`; noisy copies of `noise_of` rows if given."""
    projection = np.random.default_rng(0).standard_normal((features, DIM)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    rng = np.random.default_rng(seed)
    for first in range(0, n, block):
        m = min(block, n - first)
        if noise_of is None:
            cols = rng.integers(0, features, m * active)
            sparse = scipy.sparse.csr_matrix(
                (np.ones(m * active, np.float32), cols, np.arange(0, m * active + 1, active)), shape=(m, features)
            )
            vectors = np.asarray(sparse @ projection, np.float32)
        else:
            rows = rng.integers(0, len(noise_of), m)
            vectors = noise_of[rows].astype(np.float32) + 0.05 * rng.standard_normal((m, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        out[first : first + m] = vectors
    out.flush()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--index", default="flat", help='"flat", "auto" or a FAISS factory string')
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--recall-sample", type=int, default=500)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    docs = random_projection_vectors(tmp / "docs.npy", args.docs, seed=1)
    anchors = random_projection_vectors(tmp / "anchors.npy", args.anchors, seed=2, noise_of=docs)
    made = time.perf_counter() - start
    sample = np.ascontiguousarray(anchors[: args.recall_sample], np.float32)
    start = time.perf_counter()
    index, report = build_search_index(
        docs, sample_queries=sample, k=args.depth, kind=args.index, exact_max_docs=args.docs
    )
    built = time.perf_counter() - start
    start = time.perf_counter()
    result = _search(anchors, docs, tmp, index, args)
    searched = time.perf_counter() - start
    recall = report.recall
    if recall is None:
        _, approx = index.search(sample, args.depth)
        recall = recall_at_k(approx, exact_topk(sample, docs, args.depth))
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"| {args.anchors:,} × {args.docs:,} | {report.factory} {report.params} | {made:.0f} | {built:.0f} | "
        f"{searched:.0f} | {args.anchors / searched:,.0f} | {recall:.4f} | {result:,} | {rss_gb:.2f} |"
    )


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
        batch_size=4096,
        index=index,
    )
    return result.rows


if __name__ == "__main__":
    print(
        "| anchors × docs | index | make vectors s | build+tune s | search s | anchors/s | recall@k | "
        "candidate rows | peak RSS GB |\n|---|---|---|---|---|---|---|---|---|"
    )
    main()
