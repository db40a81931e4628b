"""BM25 candidates at scale: peak memory and time of each step, one shard against many.

A synthetic pool of N documents (each the words of a random NFCorpus or SciFact document in a
seeded random order, so lengths and vocabulary are real) is indexed the way the bm25 stage does
it (negminer.mining.bm25): the corpus-global statistics in one streamed pass, then one bm25s
index per range of documents, then the top-100 BM25 candidates of 500 train queries (a seeded
draw from both sets) over all the shards. Each step runs in its own process, so its peak
resident memory (ru_maxrss) is its own. The pool is indexed twice, as 4 shards and as 1, and
the two searches' candidates are compared.

"import" is a step that only imports what the others import: their baseline.

Run: python -m bench.bm25_shards [--docs 200000] [--shards 4] [--anchors 500]
(reads NFCorpus and SciFact from $NEGMINER_DATA or ../shared/data)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import load_retrieval_set


def make_pool(folder: Path, n_docs: int, n_anchors: int) -> None:
    texts, queries = [], []
    for name in ("nfcorpus", "scifact"):
        data = load_retrieval_set(name, "train")
        texts += data.corpus.column("text").to_pylist()
        queries += data.queries.column("text").to_pylist()
    rng = np.random.default_rng(0)
    words = [text.split() for text in texts]
    docs = [" ".join(rng.permutation(words[i])) for i in rng.integers(0, len(words), n_docs)]
    table = pa.table({"doc_id": [f"d{i}" for i in range(n_docs)], "text": docs})
    pq.write_table(table, folder / "docs.parquet", row_group_size=65536)
    picked = rng.choice(len(queries), size=min(n_anchors, len(queries)), replace=False)
    pq.write_table(pa.table({"text": [queries[i] for i in np.sort(picked)]}), folder / "anchors.parquet")


def step(folder: Path, name: str, *args: str) -> dict:
    """Run one step in a fresh process; its JSON line."""
    command = [sys.executable, "-m", "bench.bm25_shards", "--step", name, "--folder", str(folder), *args]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def run_step(name: str, folder: Path, args: list[str]) -> dict:
    from negminer.mining import bm25

    bm25.term_counts(["import scikit-learn's vectorizer"])  # the "import" step: the imports alone

    start = time.perf_counter()
    result: dict = {"step": name}
    if name == "make":
        make_pool(folder, int(args[0]), int(args[1]))
    elif name == "stats":
        bm25.save_stats(bm25.pool_stats(bm25.text_batches(folder / "docs.parquet")), folder / "stats.npz")
        np.save(folder / "keys.npy", bm25.doc_keys(folder / "docs.parquet"))
    elif name == "build":
        first, stop = int(args[0]), int(args[1])
        batches = bm25.text_batches(folder / "docs.parquet", first=first, stop=stop)
        path = folder / f"s{first}-{stop}"
        bm25.build_bm25_shard(batches, first, bm25.load_stats(folder / "stats.npz"), path)
        result |= {"docs": stop - first, "postings": int(np.load(path / "indptr.csc.index.npy")[-1])}
    elif name == "search":
        ranges = [tuple(map(int, r.split("-"))) for r in args[0].split(",")]
        n_anchors = int(args[1])
        shards = [bm25.Bm25Shard(str(folder / f"s{a}-{b}"), a, b) for a, b in ranges]
        keys = np.load(folder / "keys.npy", mmap_mode="r")
        anchors = bm25.text_batches(folder / "anchors.parquet", first=0, stop=n_anchors)
        _, ids = bm25.search_bm25_shards(shards, anchors, n_anchors, 100, doc_keys=keys)
        np.save(folder / f"ids-{len(shards)}.npy", ids)
        result |= {"shards": len(shards), "anchors": n_anchors}
    return result | {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--anchors", type=int, default=500)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.step:
        print(json.dumps(run_step(args.step, args.folder, rest)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # every step in a fresh process started from this small one: Linux carries a process's
        # peak RSS across exec, so the pool must not be built here
        step(folder, "make", str(args.docs), str(args.anchors))
        size = -(-args.docs // args.shards)
        ranges = [(first, min(first + size, args.docs)) for first in range(0, args.docs, size)]
        rows = [step(folder, "import"), step(folder, "stats")]
        rows += [step(folder, "build", str(a), str(b)) for a, b in [*ranges, (0, args.docs)]]
        rows.append(step(folder, "search", ",".join(f"{a}-{b}" for a, b in ranges), str(args.anchors)))
        rows.append(step(folder, "search", f"0-{args.docs}", str(args.anchors)))
        same = np.array_equal(np.load(folder / f"ids-{len(ranges)}.npy"), np.load(folder / "ids-1.npy"))
    print(f"## {args.docs} docs, {len(ranges)} shards vs 1, {args.anchors} anchors, top 100")
    print("| step | docs | postings | shards | seconds | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['step']} | {r.get('docs', '')} | {r.get('postings', '')} | {r.get('shards', '')} | "
            f"{r['seconds']} | {r['peak_mb']} |"
        )
    print(f"candidates over {len(ranges)} shards == over 1 shard: {same}")


if __name__ == "__main__":
    main()
