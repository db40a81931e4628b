"""Labelled retrieval sets: corpus, queries and relevance judgments (qrels).

Two layouts are read, both the folder's files as they are:

* Parquet (``../shared/data``, the shipped sample): ``corpus.parquet`` (``doc_id`` or ``id``,
  optional ``title``, ``text``), ``queries.parquet`` (``query_id`` or ``id``, ``text``),
  ``qrels.parquet`` (``query_id``, ``doc_id``, ``score``) and optionally
  ``query_splits.parquet`` (``query_id``, ``split``).
* BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``)
  and ``qrels/SPLIT.tsv`` (``query-id``, ``corpus-id``, ``score`` with a header line).

A document is relevant to a query when its score is > 0 (graded labels count as relevant);
unjudged pairs are non-relevant. Queries without a relevant document are left out. Order is
the files' order throughout, so the same folder always gives the same evaluator.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from negminer.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

_ID_COLUMNS = {"corpus": ("doc_id", "id", "_id"), "queries": ("query_id", "id", "_id")}


@dataclass(frozen=True)
class RetrievalSet:
    """The inputs of sentence-transformers' InformationRetrievalEvaluator, in file order.

    Attributes:
        queries: query id -> text (only queries with at least one relevant document).
        corpus: doc id -> text.
        relevant: query id -> ids of its relevant documents.
        path: the folder it was read from (None when built in memory).
        split: the split its queries come from (None: every query).
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    path: Path | None = None
    split: str | None = None

    def describe(self) -> dict[str, object]:
        """Sizes for a results file: queries, documents, mean relevant documents per query."""
        judged = sum(len(docs) for docs in self.relevant.values())
        return {
            "path": None if self.path is None else str(self.path),
            "split": self.split,
            "queries": len(self.queries),
            "corpus": len(self.corpus),
            "relevant_per_query": round(judged / len(self.queries), 3) if self.queries else 0.0,
        }


def load_retrieval_set(
    path: str | Path,
    *,
    split: str | None,
    titles: bool,
    max_queries: int | None,
    max_corpus: int | None,
) -> RetrievalSet:
    """Read a labelled retrieval set folder (Parquet or BEIR layout, see the module docstring).

    Args:
        path: the folder.
        split: keep the queries of this split; None keeps every query. A Parquet folder
            without ``query_splits.parquet`` has one split, used whole whatever is asked.
        titles: put each document's title before its text.
        max_queries: keep the first N queries by query id (a quick check).
        max_corpus: keep the relevant documents plus the first other documents by id, N in all.

    Example:
        >>> data = load_retrieval_set("../shared/data/scifact", split="test", titles=False,
        ...                           max_queries=None, max_corpus=None)  # doctest: +SKIP
        >>> len(data.queries), len(data.corpus)  # doctest: +SKIP
        (300, 5183)
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; a retrieval set is a folder with corpus, queries and qrels")
    if (folder / "corpus.parquet").exists():
        corpus, queries, qrels, split = _read_parquet_layout(folder, split=split, titles=titles)
    elif (folder / "corpus.jsonl").exists():
        corpus, queries, qrels = _read_beir_layout(folder, split=split, titles=titles)
    else:
        raise ConfigError(f"{folder}: no corpus.parquet or corpus.jsonl (expected the BEIR or ../shared/data layout)")
    kept = {qid: text for qid, text in queries.items() if qrels.get(qid)}
    if not kept:
        raise InputError(
            f"no query{'' if split is None else f' of split {split!r}'} has a relevant document", path=str(folder)
        )
    return select(kept, corpus, qrels, max_queries=max_queries, max_corpus=max_corpus, path=folder, split=split)


def select(
    queries: dict[str, str],
    corpus: dict[str, str],
    qrels: dict[str, set[str]],
    *,
    max_queries: int | None,
    max_corpus: int | None,
    path: Path | None = None,
    split: str | None = None,
) -> RetrievalSet:
    """The queries with a relevant document, optionally cut down for a quick check.

    `max_queries` keeps the first queries by query id; `max_corpus` keeps their relevant
    documents plus the first other documents by doc id, `max_corpus` in all.
    """
    queries = {qid: text for qid, text in queries.items() if qrels.get(qid)}
    if max_queries is not None:
        queries = {qid: queries[qid] for qid in sorted(queries)[:max_queries]}
    relevant = {qid: set(qrels[qid]) for qid in queries}
    if max_corpus is not None:
        keep = set().union(*relevant.values())
        keep.update(sorted(set(corpus) - keep)[: max(0, max_corpus - len(keep))])
        corpus = {doc_id: text for doc_id, text in corpus.items() if doc_id in keep}
    return RetrievalSet(queries, corpus, relevant, path, split)


def _read_parquet_layout(
    folder: Path, *, split: str | None, titles: bool
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]], str | None]:
    corpus = _texts(_read(folder / "corpus.parquet"), folder / "corpus.parquet", "corpus", titles=titles)
    queries = _texts(_read(folder / "queries.parquet"), folder / "queries.parquet", "queries", titles=False)
    qrels_path = folder / "qrels.parquet"
    qrels = _relevant(_read(qrels_path), qrels_path, ("query_id", "doc_id", "score"))
    splits_path = folder / "query_splits.parquet"
    if split is None:
        return corpus, queries, qrels, None
    if not splits_path.exists():
        logger.info("%s: no query_splits.parquet; every query is evaluated", folder)
        return corpus, queries, qrels, None
    table = _read(splits_path)
    _require(table, ("query_id", "split"), splits_path)
    names = table["split"].to_pylist()
    if split not in names:
        raise ConfigError(f"{splits_path}: no split {split!r}; it has {', '.join(sorted(set(map(str, names))))}")
    ids = {qid for qid, name in zip(table["query_id"].to_pylist(), names, strict=True) if name == split}
    return corpus, {qid: text for qid, text in queries.items() if qid in ids}, qrels, split


def _read_beir_layout(
    folder: Path, *, split: str | None, titles: bool
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    corpus = _texts(_read_jsonl(folder / "corpus.jsonl"), folder / "corpus.jsonl", "corpus", titles=titles)
    queries = _texts(_read_jsonl(folder / "queries.jsonl"), folder / "queries.jsonl", "queries", titles=False)
    available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    chosen = available if split is None else [split]
    if not set(chosen) <= set(available) or not chosen:
        raise ConfigError(f"{folder / 'qrels'}: no {split}.tsv; it has {', '.join(available) or 'no qrels files'}")
    qrels: dict[str, set[str]] = {}
    for name in chosen:
        path = folder / "qrels" / f"{name}.tsv"
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        table = pa.Table.from_pylist(rows) if rows else pa.table({"query-id": [], "corpus-id": [], "score": []})
        for qid, docs in _relevant(table, path, ("query-id", "corpus-id", "score")).items():
            qrels.setdefault(qid, set()).update(docs)
    ids = {qid for qid in qrels}
    return corpus, {qid: text for qid, text in queries.items() if qid in ids}, qrels


def _read(path: Path) -> pa.Table:
    if not path.exists():
        raise InputError("file not found (a retrieval set needs corpus, queries and qrels)", path=str(path))
    return pq.read_table(path)


def _read_jsonl(path: Path) -> pa.Table:
    if not path.exists():
        raise InputError("file not found (a retrieval set needs corpus, queries and qrels)", path=str(path))
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"not valid JSON: {err.msg}", path=str(path), row=number) from err
    return pa.Table.from_pylist(rows)


def _texts(table: pa.Table, path: Path, kind: str, *, titles: bool) -> dict[str, str]:
    """id -> text, the id column being the first of `_ID_COLUMNS[kind]` present."""
    id_column = next((c for c in _ID_COLUMNS[kind] if c in table.column_names), None)
    if id_column is None:
        raise InputError(f"no id column (one of {', '.join(_ID_COLUMNS[kind])})", path=str(path))
    _require(table, ("text",), path)
    ids = [str(v) for v in table[id_column].to_pylist()]
    texts = table["text"].to_pylist()
    if titles and "title" in table.column_names:
        texts = [
            f"{title} {text}".strip() if title else text
            for title, text in zip(table["title"].to_pylist(), texts, strict=True)
        ]
    for row, (key, text) in enumerate(zip(ids, texts, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{kind} text of {key!r} is empty", path=str(path), row=row, column="text")
    return dict(zip(ids, texts, strict=True))


def _relevant(table: pa.Table, path: Path, columns: tuple[str, str, str]) -> dict[str, set[str]]:
    """query id -> doc ids judged with a score > 0."""
    _require(table, columns, path)
    query, doc, score = (table[c].to_pylist() for c in columns)
    out: dict[str, set[str]] = {}
    for row, (qid, did, value) in enumerate(zip(query, doc, score, strict=True)):
        try:
            relevant = float(value) > 0
        except (TypeError, ValueError) as err:
            raise InputError(f"score {value!r} is not a number", path=str(path), row=row, column=columns[2]) from err
        if relevant:
            out.setdefault(str(qid), set()).add(str(did))
    return out


def _require(table: pa.Table, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}", path=str(path)
        )
