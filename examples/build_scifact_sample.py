"""Build ``examples/scifact-sample/`` from the BEIR-packaged SciFact files.

The sample is deterministic (no random state): the first 200 SciFact *train* queries, sorted
by integer query id, that have at least one relevant document, one pairs row per
(query, relevant document); and a corpus of 800 documents: every positive of those pairs plus
every k-th other document in integer doc-id order. Held out for ``negminer evaluate``: the
SciFact *test* queries whose every relevant document is in that corpus (``queries.parquet``,
``qrels.parquet``), so the folder is also a labelled retrieval set.

Usage (from the repository root)::

    python examples/build_scifact_sample.py                # reads ../shared/data/scifact
    python examples/build_scifact_sample.py /path/to/scifact --out examples/scifact-sample
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "scifact"
DEFAULT_OUT = REPO_ROOT / "examples" / "scifact-sample"
NUM_QUERIES = 200
CORPUS_SIZE = 800
SPLIT = "train"
HELD_OUT_SPLIT = "test"
ZSTD_LEVEL = 19  # slow to write, smallest files; the bytes are the same on every run


def build(source: Path, out: Path) -> dict[str, int]:
    """Write ``pairs.parquet`` and ``corpus.parquet`` under `out`; return row counts."""
    corpus = pq.read_table(source / "corpus.parquet").to_pylist()
    queries = {r["query_id"]: r["text"] for r in pq.read_table(source / "queries.parquet").to_pylist()}
    splits = pq.read_table(source / "query_splits.parquet").to_pylist()
    qrels = pq.read_table(source / "qrels.parquet").to_pylist()

    docs = {r["doc_id"]: r for r in corpus}
    train_ids = {r["query_id"] for r in splits if r["split"] == SPLIT}
    relevant: dict[str, list[str]] = {}
    for r in qrels:
        if r["score"] > 0 and r["query_id"] in train_ids:
            relevant.setdefault(r["query_id"], []).append(r["doc_id"])

    chosen = [q for q in sorted(train_ids, key=int) if relevant.get(q)][:NUM_QUERIES]
    if len(chosen) < NUM_QUERIES:
        raise SystemExit(f"only {len(chosen)} {SPLIT} queries have a relevant document")

    pair_rows = []
    for query_id in chosen:
        for doc_id in sorted(set(relevant[query_id]), key=int):
            pair_rows.append(
                {
                    "anchor_id": query_id,
                    "anchor": queries[query_id],
                    "positive_id": doc_id,
                    "positive": docs[doc_id]["text"],
                }
            )

    positive_ids = {r["positive_id"] for r in pair_rows}
    others = sorted((d for d in docs if d not in positive_ids), key=int)
    needed = CORPUS_SIZE - len(positive_ids)
    step = len(others) // needed
    filler = others[::step][:needed]
    corpus_ids = sorted(positive_ids | set(filler), key=int)
    corpus_rows = [{"id": d, "title": docs[d]["title"], "text": docs[d]["text"]} for d in corpus_ids]

    out.mkdir(parents=True, exist_ok=True)
    pairs_schema = pa.schema([(name, pa.string()) for name in ("anchor_id", "anchor", "positive_id", "positive")])
    corpus_schema = pa.schema([(name, pa.string()) for name in ("id", "title", "text")])
    pq.write_table(
        pa.Table.from_pylist(pair_rows, schema=pairs_schema),
        out / "pairs.parquet",
        compression="zstd",
        compression_level=ZSTD_LEVEL,
    )
    pq.write_table(
        pa.Table.from_pylist(corpus_rows, schema=corpus_schema),
        out / "corpus.parquet",
        compression="zstd",
        compression_level=ZSTD_LEVEL,
    )
    held_out = write_held_out(out, queries, splits, qrels, set(corpus_ids))
    return {
        "queries": len(chosen),
        "pairs": len(pair_rows),
        "anchors_with_several_positives": sum(len(set(relevant[q])) > 1 for q in chosen),
        "positive_docs": len(positive_ids),
        "filler_docs": len(filler),
        "filler_step": step,
        "corpus_docs": len(corpus_rows),
        **held_out,
    }


def write_held_out(
    out: Path, queries: dict[str, str], splits: list[dict], qrels: list[dict], corpus_ids: set[str]
) -> dict[str, int]:
    """``queries.parquet`` and ``qrels.parquet``: the test queries answerable within the corpus.

    A test query is kept when it has a relevant document (score > 0) and every one of its
    relevant documents is in the sample corpus; its qrels rows are copied unchanged.
    """
    test_ids = {r["query_id"] for r in splits if r["split"] == HELD_OUT_SPLIT}
    relevant: dict[str, set[str]] = {}
    for r in qrels:
        if r["score"] > 0 and r["query_id"] in test_ids:
            relevant.setdefault(r["query_id"], set()).add(r["doc_id"])
    kept = sorted((q for q, docs in relevant.items() if docs <= corpus_ids), key=int)
    query_rows = [{"query_id": q, "text": queries[q]} for q in kept]
    keep = set(kept)
    qrel_rows = sorted(
        (
            {"query_id": r["query_id"], "doc_id": r["doc_id"], "score": r["score"]}
            for r in qrels
            if r["query_id"] in keep
        ),
        key=lambda r: (int(r["query_id"]), int(r["doc_id"])),
    )
    query_schema = pa.schema([("query_id", pa.string()), ("text", pa.string())])
    qrels_schema = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("score", pa.int32())])
    for name, rows, schema in (("queries", query_rows, query_schema), ("qrels", qrel_rows, qrels_schema)):
        pq.write_table(
            pa.Table.from_pylist(rows, schema=schema),
            out / f"{name}.parquet",
            compression="zstd",
            compression_level=ZSTD_LEVEL,
        )
    return {"held_out_queries": len(query_rows), "held_out_qrels": len(qrel_rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    counts = build(args.source, args.out)
    for name, value in counts.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
