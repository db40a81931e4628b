"""Load the flagged pairs of dataset versions into the audit database.

Contract of the input, ``ROOT/NAME/vNNNN/flagged.parquet`` (written by the curation): one row
per flagged pair with ``anchor_id``, ``doc_id``, ``kind`` (``false_negative``,
``false_positive``, ``near_duplicate``, ...), a label-quality column (the first present of
:data:`QUALITY_COLUMNS`; lower means more likely a label error), optionally ``action`` and a
text column saying why (:data:`WHY_COLUMNS`); every other column is kept as a feature. Scores
(``score``, ``positive_score``, ``rank``, ``is_positive``) come from the flagged table when it
has them, else from ``candidates.parquet``; texts come from ``anchors``/``docs``/``pairs``.

Loading is idempotent: a version whose ``flagged.parquet`` has not changed is skipped, a
changed one is replaced in one transaction. Decisions are never touched. Processes loading the
same version at once (review pages opened together, ``negminer audit`` commands) take turns
under a lock on the version: one loads it, the others find it current; one copy is stored.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.orm import Session

from negminer.audit.db import FlaggedPair, LoadedVersion, lock_names, utcnow, writing
from negminer.errors import InputError
from negminer.storage.atomic import sha256_file
from negminer.storage.versions import list_versions, read_manifest

logger = logging.getLogger(__name__)

FLAGGED = "flagged.parquet"
QUALITY_COLUMNS = ("label_quality", "quality", "quality_score")
WHY_COLUMNS = ("why", "explanation", "flag_reason")
SCORE_COLUMNS = ("score", "positive_score", "rank", "is_positive")
_REQUIRED = ("anchor_id", "doc_id", "kind")
_KIND_TEXT = {
    "false_negative": "mined as a negative, but looks relevant to the anchor",
    "false_positive": "labelled positive, but looks unrelated to the anchor",
    "near_duplicate": "near-duplicate text of the anchor or of one of its positives",
}
HISTOGRAM_BINS = 24
BATCH_ROWS = 65536  # rows of candidates/docs/pairs read at a time; results do not depend on it


class LoadResult(NamedTuple):
    """What :func:`load_version` did: ``loaded`` is False when the version was current."""

    dataset: str
    version: str
    rows: int
    loaded: bool


def load_version(engine: Engine, version_dir: str | Path, *, force: bool = False) -> LoadResult:
    """Load one version's ``flagged.parquet`` (and its texts and scores) into the database.

    Args:
        engine: the audit database (:func:`negminer.audit.db.open_db`).
        version_dir: a complete dataset version folder ``ROOT/NAME/vNNNN``.
        force: reload even when the flagged file is unchanged.

    Returns:
        LoadResult(dataset, version, rows, loaded).

    Example:
        >>> load_version(engine, "datasets/scifact-sample/v0002")  # doctest: +SKIP
    """
    version_dir = Path(version_dir)
    read_manifest(version_dir)  # raises StorageError unless the version is complete
    path = version_dir / FLAGGED
    if not path.exists():
        raise InputError(f"no {FLAGGED} in this version (was curation run?)", path=str(version_dir))
    dataset, version = version_dir.parent.name, version_dir.name
    digest = sha256_file(path)
    with Session(writing(engine)) as session, session.begin():
        lock_names(session, "load", dataset, version)  # another loader of it: wait, then find it current
        current = session.scalar(
            select(LoadedVersion).where(LoadedVersion.dataset == dataset, LoadedVersion.version == version)
        )
        if current is not None and current.flagged_sha256 == digest and not force:
            return LoadResult(dataset, version, current.rows, loaded=False)
        rows = flagged_rows(version_dir, dataset=dataset, version=version)
        session.execute(delete(FlaggedPair).where(FlaggedPair.dataset == dataset, FlaggedPair.version == version))
        if rows:
            session.execute(insert(FlaggedPair), rows)
        if current is not None:
            session.delete(current)
            session.flush()
        session.add(
            LoadedVersion(
                dataset=dataset,
                version=version,
                path=str(version_dir.resolve()),
                flagged_sha256=digest,
                rows=len(rows),
                loaded_at=utcnow(),
                histogram=score_histogram(version_dir),
            )
        )
    logger.info("loaded %d flagged pairs of %s/%s into the audit database", len(rows), dataset, version)
    return LoadResult(dataset, version, len(rows), loaded=True)


def sync_root(engine: Engine, root: str | Path, *, datasets: Iterable[str] | None = None) -> list[LoadResult]:
    """Load every complete version under `root` that has a ``flagged.parquet`` (new or changed).

    Args:
        engine: the audit database.
        root: the datasets root folder (``ROOT/NAME/vNNNN``).
        datasets: only these dataset names; default every folder under `root`.

    Returns:
        One LoadResult per version with flagged pairs.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    names = sorted(datasets) if datasets is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    results = []
    for name in names:
        for version in list_versions(root / name):
            if (root / name / version / FLAGGED).exists():
                results.append(load_version(engine, root / name / version))
    return results


def flagged_rows(version_dir: Path, *, dataset: str, version: str) -> list[dict[str, Any]]:
    """The ``audit_flagged`` rows of one version: flagged pairs joined with texts and scores."""
    flagged = pq.read_table(version_dir / FLAGGED)
    for column in _REQUIRED:
        if column not in flagged.column_names:
            raise InputError("required column is missing", path=str(version_dir / FLAGGED), column=column)
    scores = _candidate_scores(flagged, version_dir)
    texts = _Texts.read(version_dir, flagged)
    quality_column = next((c for c in QUALITY_COLUMNS if c in flagged.column_names), None)
    why_column = next((c for c in WHY_COLUMNS if c in flagged.column_names), None)
    core = {*_REQUIRED, *SCORE_COLUMNS, "action", quality_column, why_column, "anchor_idx", "doc_idx", "pair_idx"}
    rows = []
    for record in flagged.to_pylist():
        anchor_id, doc_id = str(record["anchor_id"]), str(record["doc_id"])
        record = {**scores.get((anchor_id, doc_id), {}), **record}
        features = {k: _jsonable(v) for k, v in record.items() if k not in core}
        positive_id = texts.positive_for(anchor_id, doc_id)
        row = {
            "dataset": dataset,
            "version": version,
            "anchor_id": anchor_id,
            "doc_id": doc_id,
            "kind": str(record["kind"]),
            "quality": _float(record.get(quality_column)) if quality_column else None,
            "score": _float(record.get("score")),
            "positive_score": _float(record.get("positive_score")),
            "rank": _int(record.get("rank")),
            "is_positive": _is_positive(record),
            "action": None if record.get("action") is None else str(record["action"]),
            "features": features,
            "anchor_text": texts.anchor_text.get(anchor_id, ""),
            "doc_text": texts.doc_text.get(doc_id, ""),
            "doc_title": texts.doc_title.get(doc_id),
            "positive_id": positive_id,
            "positive_text": texts.doc_text.get(positive_id) if positive_id else None,
        }
        row["why"] = str(record[why_column]) if why_column and record.get(why_column) else describe(row)
        rows.append(row)
    return rows


def _candidate_scores(flagged: pa.Table, version_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Score columns of the flagged pairs from candidates.parquet, by (anchor_id, doc_id)."""
    path = version_dir / "candidates.parquet"
    if not path.exists():
        return {}
    available = set(pq.read_schema(path).names)
    wanted = [c for c in SCORE_COLUMNS if c in available and c not in flagged.column_names]
    if not wanted or not {"anchor_id", "doc_id"} <= available:
        return {}
    where = {key: pc.unique(pc.cast(flagged.column(key), pa.string())) for key in ("anchor_id", "doc_id")}
    candidates = _read_filtered(path, where, wanted)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in candidates.to_pylist():
        found.setdefault((record.pop("anchor_id"), record.pop("doc_id")), record)
    return found


class _Texts(NamedTuple):
    anchor_text: dict[str, str]
    doc_text: dict[str, str]
    doc_title: dict[str, str | None]
    positives: dict[str, list[str]]

    @classmethod
    def read(cls, version_dir: Path, flagged: pa.Table) -> _Texts:
        """Texts of the flagged anchors and docs and of those anchors' positives."""
        anchor_ids = pc.unique(pc.cast(flagged.column("anchor_id"), pa.string()))
        anchors = _read_filtered(version_dir / "anchors.parquet", {"anchor_id": anchor_ids}, ["anchor_idx", "text"])
        pairs = _read_filtered(version_dir / "pairs.parquet", {"anchor_idx": anchors["anchor_idx"]}, ["doc_idx"])
        docs_path = version_dir / "docs.parquet"
        flagged_docs = pc.unique(pc.cast(flagged.column("doc_id"), pa.string()))
        docs = _read_filtered(docs_path, {"doc_id": flagged_docs}, ["text", "title"])
        positive_docs = _read_filtered(docs_path, {"doc_idx": pairs["doc_idx"]}, ["doc_id", "text", "title"])
        anchor_of = _mapping(anchors, "anchor_idx", "anchor_id")
        doc_of = _mapping(positive_docs, "doc_idx", "doc_id")
        positives: dict[str, list[str]] = {}
        for anchor_idx, doc_idx in zip(pairs["anchor_idx"].to_pylist(), pairs["doc_idx"].to_pylist(), strict=True):
            positives.setdefault(anchor_of[anchor_idx], []).append(doc_of[doc_idx])
        columns = ["doc_id", "text", "title"]
        every_doc = pa.concat_tables([docs.select(columns), positive_docs.select(columns)])
        return cls(
            anchor_text=_mapping(anchors, "anchor_id", "text"),
            doc_text=_mapping(every_doc, "doc_id", "text"),
            doc_title=_mapping(every_doc, "doc_id", "title"),
            positives=positives,
        )

    def positive_for(self, anchor_id: str, doc_id: str) -> str | None:
        """The anchor's positive to show beside `doc_id`: another positive when it has one."""
        known = self.positives.get(anchor_id, [])
        others = [p for p in known if p != doc_id]
        return (others or known or [None])[0]


def _mapping(table: pa.Table, key: str, value: str) -> dict[Any, Any]:
    return dict(zip(table[key].to_pylist(), table[value].to_pylist(), strict=True))


def _read_filtered(path: Path, where: dict[str, pa.Array | pa.ChunkedArray], columns: list[str]) -> pa.Table:
    """Rows of a Parquet file whose every `where` key is in its values, with the keys and `columns`.

    Read :data:`BATCH_ROWS` rows at a time, so memory is one batch plus the matching rows.
    Columns the file lacks are left out, except ``title`` (all null).
    """
    if not path.exists():
        raise InputError("file is missing from the dataset version", path=str(path))
    file = pq.ParquetFile(path)
    schema = file.schema_arrow
    keep = [*where, *(c for c in columns if c in schema.names and c not in where)]
    value_sets = {key: pc.cast(_one_array(values), schema.field(key).type) for key, values in where.items()}
    matches = []
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=keep):
        masks = [pc.is_in(batch.column(key), value_set=values) for key, values in value_sets.items()]
        matches.append(batch.filter(functools.reduce(pc.and_, masks)))
    table = pa.Table.from_batches(matches, schema=pa.schema([schema.field(c) for c in keep]))
    if "title" in columns and "title" not in table.column_names:
        table = table.append_column("title", pa.nulls(table.num_rows, pa.string()))
    return table


def _one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def score_histogram(version_dir: Path, *, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Histogram of the version's retrieved-positive and chosen-negative scores.

    Two passes over ``candidates.parquet`` in batches of :data:`BATCH_ROWS` rows: the range of
    the shown scores, then the counts per bin.

    Returns:
        ``{"edges": (bins+1,), "positive": (bins,), "negative": (bins,)}``; empty lists when
        the version has no ``candidates.parquet``.
    """
    path = version_dir / "candidates.parquet"
    empty = {"edges": [], "positive": [], "negative": []}
    if not path.exists() or not {"score", "is_positive"} <= set(pq.read_schema(path).names):
        return empty
    ranges = [(s.min(), s.max()) for s in (score[pos | neg] for score, pos, neg in _shown_scores(path)) if s.size]
    if not ranges:
        return empty
    lows, highs = zip(*ranges, strict=True)
    low, high = math.floor(np.min(lows) * 20) / 20, math.ceil(np.max(highs) * 20) / 20
    edges = np.linspace(low, max(high, low + 0.05), bins + 1)
    positive, negative = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    for score, is_positive, is_negative in _shown_scores(path):
        positive += np.histogram(score[is_positive], edges)[0]
        negative += np.histogram(score[is_negative], edges)[0]
    return {
        "edges": [round(float(e), 4) for e in edges],
        "positive": positive.tolist(),
        "negative": negative.tolist(),
    }


def _shown_scores(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(score, is_positive, is_negative) of each batch of candidates.parquet; a negative has a slot."""
    names = pq.read_schema(path).names
    columns = [c for c in ("score", "is_positive", "negative_slot") if c in names]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
        is_positive = batch.column("is_positive").to_numpy(zero_copy_only=False)
        if "negative_slot" in names:
            is_negative = batch.column("negative_slot").is_valid().to_numpy(zero_copy_only=False)
        else:
            is_negative = ~is_positive
        yield batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64), is_positive, is_negative


def describe(row: dict[str, Any]) -> str:
    """A one-line explanation of why a pair was flagged, from its kind and scores."""
    parts = [_KIND_TEXT.get(row["kind"], f"flagged as {row['kind']}")]
    if row.get("score") is not None:
        parts.append(f"similarity {row['score']:.3f}")
        if row.get("positive_score") is not None and not row.get("is_positive"):
            parts.append(f"{row['score'] - row['positive_score']:+.3f} vs the anchor's positive")
    if row.get("quality") is not None:
        parts.append(f"label quality {row['quality']:.3f}")
    return "; ".join(parts)


def _is_positive(record: dict[str, Any]) -> bool:
    """Whether the flagged doc is a labelled positive of the anchor (a pair, not a candidate)."""
    if record.get("is_positive") is not None:
        return bool(record["is_positive"])
    if "pair_idx" in record:
        return record["pair_idx"] is not None
    return record.get("label") == 1


def _float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
