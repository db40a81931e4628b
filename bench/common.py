"""Shared helpers for the benchmarks: BEIR-layout datasets from ../shared/data and the
hidden-positives protocol of DESIGN.md.

Hidden positives: for each query of a split with at least two relevant documents, the miner
gets ONE relevant document as the positive and the others are hidden; a mined negative that is
a hidden relevant document is a false negative. Which one is given: the lowest doc_id
(``given="lowest"``, the default) or one drawn per query with a seeded hash
(``given="random"``). The choice moves the baselines: on NFCorpus the lowest doc_id is the
given positive of many related queries at once, a random one is not (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEGMINER_DATA", REPO.parent / "shared" / "data"))
BENCH_CACHE = Path(os.environ.get("NEGMINER_BENCH_CACHE", REPO / "bench" / ".cache"))
STORE = BENCH_CACHE / "store"


@dataclass(frozen=True)
class RetrievalSet:
    corpus: pa.Table  # doc_id, title, text
    queries: pa.Table  # query_id, text (only this split)
    qrels: dict[str, set[str]]  # query_id -> relevant doc_ids (score > 0)


def load_retrieval_set(name: str, split: str) -> RetrievalSet:
    folder = SHARED_DATA / name
    corpus = pq.read_table(folder / "corpus.parquet")
    splits = pq.read_table(folder / "query_splits.parquet")
    ids = splits.filter(pc.equal(splits.column("split"), split)).column("query_id")
    queries = pq.read_table(folder / "queries.parquet")
    queries = queries.filter(pc.is_in(queries.column("query_id"), value_set=ids))
    qrels_table = pq.read_table(folder / "qrels.parquet")
    qrels_table = qrels_table.filter(
        pc.and_(pc.is_in(qrels_table.column("query_id"), value_set=ids), pc.greater(qrels_table.column("score"), 0))
    )
    qrels: dict[str, set[str]] = {}
    for qid, did in zip(
        qrels_table.column("query_id").to_pylist(), qrels_table.column("doc_id").to_pylist(), strict=True
    ):
        qrels.setdefault(qid, set()).add(did)
    return RetrievalSet(corpus, queries, qrels)


def hidden_positive_inputs(
    data: RetrievalSet, *, min_relevant: int = 2, given: Literal["lowest", "random"] = "lowest", seed: int = 0
) -> tuple[pa.Table, pa.Table, dict[str, set[str]]]:
    """(pairs, corpus, hidden) for the protocol: one given positive per query, the rest hidden.

    pairs: anchor_id, anchor, positive_id, positive. corpus: id, title, text.
    hidden: anchor_id -> the relevant doc_ids that were not given.
    """
    doc_text = dict(zip(data.corpus.column("doc_id").to_pylist(), data.corpus.column("text").to_pylist(), strict=True))
    rows, hidden = [], {}
    for qid, text in zip(
        data.queries.column("query_id").to_pylist(), data.queries.column("text").to_pylist(), strict=True
    ):
        relevant = sorted(data.qrels.get(qid, ()))
        if len(relevant) < min_relevant:
            continue
        positive = relevant[0] if given == "lowest" else random.Random(f"{seed}:{qid}").choice(relevant)
        rows.append({"anchor_id": qid, "anchor": text, "positive_id": positive, "positive": doc_text[positive]})
        hidden[qid] = set(relevant) - {positive}
    corpus = pa.table(
        {"id": data.corpus.column("doc_id"), "title": data.corpus.column("title"), "text": data.corpus.column("text")}
    )
    return pa.Table.from_pylist(rows), corpus, hidden
