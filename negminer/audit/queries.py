"""Read and record what reviewers see and decide, over the audit database.

Every query takes user values as bound parameters (SQLAlchemy expressions, never string
formatting), so nothing a reviewer types reaches SQL unescaped. A pair's effective decision
is its newest ``audit_decisions`` row; the review queue holds the pairs without one (pairs
last decided ``skip`` come after them), lowest label quality first.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
from sqlalchemy import Engine, Select, and_, case, func, select
from sqlalchemy.orm import Session

from negminer.audit.db import DECISIONS, Decision, FlaggedPair, LoadedVersion, as_utc, utcnow, writing
from negminer.errors import InputError

Status = Literal["all", "pending", "decided"]
# Anchored, so they also hold where a pattern is searched rather than matched (pydantic, FastAPI).
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
VERSION_RE = re.compile(r"^v\d{4,12}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_REVIEWER = 100
MAX_COMMENT = 2000
# Ids are SQL INTEGER: 32-bit on PostgreSQL, 64-bit on SQLite. A larger id names no row, and binding
# one fails in the driver (SQLite: OverflowError) or the server (PostgreSQL: integer out of range).
MAX_ID = 2**31 - 1
MAX_SQLITE_ID = 2**63 - 1
DECISIONS_SCHEMA = pa.schema(
    [
        ("anchor_id", pa.string()),
        ("doc_id", pa.string()),
        ("decision", pa.string()),
        ("reviewer", pa.string()),
        ("decided_at", pa.timestamp("s", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class Filters:
    """Which flagged pairs to list: every field optional, all given ones must hold.

    ``min_quality``/``max_quality`` bound the label quality, ``min_score``/``max_score`` the
    anchor–doc cosine, ``status`` selects pairs without (``pending``) or with (``decided``) a
    decision other than ``skip``.
    """

    dataset: str | None = None
    version: str | None = None
    kind: str | None = None
    min_quality: float | None = None
    max_quality: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    status: Status = "all"

    def __post_init__(self) -> None:
        check_name(self.dataset, DATASET_RE, "dataset")
        check_name(self.version, VERSION_RE, "version")
        check_name(self.kind, KIND_RE, "kind")
        if self.status not in ("all", "pending", "decided"):
            raise InputError(f"status must be all, pending or decided, not {self.status!r}")


@dataclass(frozen=True)
class PairView:
    """A flagged pair with its effective decision (None when undecided)."""

    pair: FlaggedPair
    decision: str | None
    reviewer: str | None
    decided_at: datetime | None

    def as_record(self) -> dict[str, Any]:
        """A flat, JSON-able dict of the pair, its scores, texts and decision."""
        pair = self.pair
        return {
            "id": pair.id,
            "dataset": pair.dataset,
            "version": pair.version,
            "anchor_id": pair.anchor_id,
            "doc_id": pair.doc_id,
            "kind": pair.kind,
            "quality": pair.quality,
            "score": pair.score,
            "positive_score": pair.positive_score,
            "rank": pair.rank,
            "is_positive": pair.is_positive,
            "why": pair.why,
            "action": pair.action,
            "anchor": pair.anchor_text,
            "positive_id": pair.positive_id,
            "positive": pair.positive_text,
            "doc_title": pair.doc_title,
            "doc": pair.doc_text,
            "features": pair.features,
            "decision": self.decision,
            "reviewer": self.reviewer,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
        }


@dataclass(frozen=True)
class Progress:
    """How much of a queue is done: decided (not skip), skipped, and the total."""

    total: int
    decided: int
    skipped: int

    @property
    def pending(self) -> int:
        return self.total - self.decided - self.skipped


def check_name(value: str | None, pattern: re.Pattern[str], what: str) -> None:
    """Raise InputError unless `value` is None or matches `pattern` whole."""
    if value is not None and not pattern.fullmatch(value):
        raise InputError(f"{what} {value!r} is not valid (expected {pattern.pattern})")


def clean_text(value: str | None, *, what: str, max_length: int, required: bool) -> str | None:
    """Normalise a reviewer-typed value: NFC, stripped, no control characters, bounded length."""
    value = unicodedata.normalize("NFC", (value or "")).strip()
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in value):
        raise InputError(f"{what} contains control characters")
    if what == "reviewer" and ("\n" in value or "\t" in value):
        raise InputError("reviewer must be a single line")
    if len(value) > max_length:
        raise InputError(f"{what} is longer than {max_length} characters")
    if required and not value:
        raise InputError(f"{what} is required")
    return value or None


def _latest_decisions() -> Any:
    """Subquery: the newest decision row id per (dataset, anchor_id, doc_id)."""
    newest = (
        select(func.max(Decision.id).label("id"))
        .group_by(Decision.dataset, Decision.anchor_id, Decision.doc_id)
        .subquery("newest")
    )
    return select(Decision).join(newest, Decision.id == newest.c.id).subquery("latest")


def _pairs_query(filters: Filters) -> tuple[Select, Any]:
    latest = _latest_decisions()
    query = select(FlaggedPair, latest.c.decision, latest.c.reviewer, latest.c.decided_at).outerjoin(
        latest,
        and_(
            latest.c.dataset == FlaggedPair.dataset,
            latest.c.anchor_id == FlaggedPair.anchor_id,
            latest.c.doc_id == FlaggedPair.doc_id,
        ),
    )
    conditions = [
        FlaggedPair.dataset == filters.dataset if filters.dataset else None,
        FlaggedPair.version == filters.version if filters.version else None,
        FlaggedPair.kind == filters.kind if filters.kind else None,
        FlaggedPair.quality >= filters.min_quality if filters.min_quality is not None else None,
        FlaggedPair.quality <= filters.max_quality if filters.max_quality is not None else None,
        FlaggedPair.score >= filters.min_score if filters.min_score is not None else None,
        FlaggedPair.score <= filters.max_score if filters.max_score is not None else None,
    ]
    if filters.status == "pending":
        conditions.append(latest.c.decision.is_(None) | (latest.c.decision == "skip"))
    elif filters.status == "decided":
        conditions.append(latest.c.decision.is_not(None) & (latest.c.decision != "skip"))
    return query.where(*(c for c in conditions if c is not None)), latest


def list_pairs(engine: Engine, filters: Filters = Filters(), *, limit: int = 50, offset: int = 0) -> list[PairView]:
    """Flagged pairs matching `filters`, queue order: undecided, then skipped, then decided,
    each by ascending label quality (most likely label errors first).

    Example:
        >>> list_pairs(engine, Filters(dataset="scifact-sample", kind="false_negative"))  # doctest: +SKIP
    """
    if limit < 1 or offset < 0:
        raise InputError("limit must be >= 1 and offset >= 0")
    query, latest = _pairs_query(filters)
    state = case((latest.c.decision.is_(None), 0), (latest.c.decision == "skip", 1), else_=2)
    query = (
        query.order_by(state, FlaggedPair.quality.is_(None), FlaggedPair.quality, FlaggedPair.id)
        .limit(limit)
        .offset(offset)
    )
    with Session(engine) as session:
        return [_view(row) for row in session.execute(query).all()]


def count_pairs(engine: Engine, filters: Filters = Filters()) -> int:
    """How many flagged pairs match `filters`."""
    query, _ = _pairs_query(filters)
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def get_pair(engine: Engine, pair_id: int) -> PairView | None:
    """One flagged pair by its id, with its effective decision (None for an id no row can have)."""
    if not is_valid_id(engine, pair_id):
        return None
    query, _ = _pairs_query(Filters())
    with Session(engine) as session:
        row = session.execute(query.where(FlaggedPair.id == pair_id)).first()
    return _view(row) if row else None


def is_valid_id(engine: Engine, row_id: int) -> bool:
    """Whether `row_id` is positive and fits the id columns of `engine`'s backend."""
    return 1 <= row_id <= (MAX_SQLITE_ID if engine.dialect.name == "sqlite" else MAX_ID)


def _view(row: Any) -> PairView:
    pair, decision, reviewer, decided_at = row
    return PairView(pair, decision, reviewer, as_utc(decided_at) if decided_at else None)


def progress(engine: Engine, filters: Filters) -> Progress:
    """Total, decided and skipped pairs among those matching `filters` (status ignored)."""
    base = Filters(**{**filters.__dict__, "status": "all"})
    query, latest = _pairs_query(base)
    counts = query.with_only_columns(
        func.count(),
        func.sum(case((latest.c.decision.is_not(None) & (latest.c.decision != "skip"), 1), else_=0)),
        func.sum(case((latest.c.decision == "skip", 1), else_=0)),
    )
    with Session(engine) as session:
        total, decided, skipped = session.execute(counts).one()
    return Progress(int(total or 0), int(decided or 0), int(skipped or 0))


def record_decision(
    engine: Engine,
    pair_id: int,
    decision: str,
    *,
    reviewer: str,
    comment: str | None = None,
    dataset: str | None = None,
    version: str | None = None,
    anchor_id: str | None = None,
    doc_id: str | None = None,
) -> int:
    """Append a decision on flagged pair `pair_id`; returns the new decision's id.

    Args:
        engine: the audit database.
        pair_id: ``audit_flagged.id`` of the pair reviewed.
        decision: one of :data:`~negminer.audit.db.DECISIONS`.
        reviewer: who decided (1–100 characters, one line).
        comment: optional free text (at most 2000 characters).
        dataset: the pair's dataset as the reviewer saw it: refused when `pair_id` now names
            a pair of another (its version was reloaded since). None: not checked.
        version: the pair's version as the reviewer saw it, checked the same way.
        anchor_id: the pair's anchor id as the reviewer saw it, checked the same way.
        doc_id: the pair's document id as the reviewer saw it, checked the same way.

    Raises:
        InputError: unknown pair or decision, `pair_id` naming another pair than the one
            expected, or an invalid reviewer or comment.

    Example:
        >>> record_decision(engine, 17, "is_positive", reviewer="ana", anchor_id="42", doc_id="1337")  # doctest: +SKIP
    """
    if decision not in DECISIONS:
        raise InputError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    reviewer = clean_text(reviewer, what="reviewer", max_length=MAX_REVIEWER, required=True)
    comment = clean_text(comment, what="comment", max_length=MAX_COMMENT, required=False)
    with Session(writing(engine)) as session, session.begin():
        pair = session.get(FlaggedPair, pair_id) if is_valid_id(engine, pair_id) else None
        if pair is None:
            raise InputError(f"no flagged pair with id {pair_id} (was its version reloaded? look the pair up again)")
        expected = {"dataset": dataset, "version": version, "anchor_id": anchor_id, "doc_id": doc_id}
        _check_same_pair(pair, expected)
        row = Decision(
            dataset=pair.dataset,
            anchor_id=pair.anchor_id,
            doc_id=pair.doc_id,
            decision=decision,
            reviewer=reviewer,
            comment=comment,
            decided_at=utcnow(),
            version=pair.version,
            kind=pair.kind,
        )
        session.add(row)
        session.flush()
        return row.id


def _check_same_pair(pair: FlaggedPair, expected: dict[str, str | None]) -> None:
    """Refuse when `pair` differs from what the reviewer saw under its id (a reloaded version)."""
    differs = [name for name, value in expected.items() if value is not None and getattr(pair, name) != value]
    if differs:
        seen = ", ".join(f"{name} {expected[name]!r}" for name in differs)
        now = ", ".join(f"{name} {getattr(pair, name)!r}" for name in differs)
        raise InputError(
            f"flagged pair {pair.id} is no longer the pair you reviewed ({seen}): its version was reloaded "
            f"and the id now names {now}. Nothing was recorded: look the pair up again and decide again."
        )


def history(engine: Engine, dataset: str, anchor_id: str, doc_id: str) -> list[Decision]:
    """Every decision ever recorded on a pair, newest first."""
    query = (
        select(Decision)
        .where(Decision.dataset == dataset, Decision.anchor_id == anchor_id, Decision.doc_id == doc_id)
        .order_by(Decision.id.desc())
    )
    with Session(engine) as session:
        return list(session.scalars(query))


def latest_decisions(engine: Engine, dataset: str) -> pa.Table:
    """The effective decision per pair of `dataset`, as :data:`DECISIONS_SCHEMA` rows.

    This is the table :func:`negminer.curation.decisions.apply_decisions` takes.
    """
    check_name(dataset, DATASET_RE, "dataset")
    latest = _latest_decisions()
    query = (
        select(latest.c.anchor_id, latest.c.doc_id, latest.c.decision, latest.c.reviewer, latest.c.decided_at)
        .where(latest.c.dataset == dataset)
        .order_by(latest.c.anchor_id, latest.c.doc_id)
    )
    with Session(engine) as session:
        rows = session.execute(query).all()
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in DECISIONS_SCHEMA.names]
    columns[4] = [as_utc(v) for v in columns[4]]
    arrays = [pa.array(values, field.type) for values, field in zip(columns, DECISIONS_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=DECISIONS_SCHEMA)


def kinds(engine: Engine, dataset: str, version: str) -> list[str]:
    """The distinct flag kinds of one loaded version, sorted."""
    query = (
        select(FlaggedPair.kind)
        .where(FlaggedPair.dataset == dataset, FlaggedPair.version == version)
        .distinct()
        .order_by(FlaggedPair.kind)
    )
    with Session(engine) as session:
        return list(session.scalars(query))


def loaded_versions(engine: Engine, dataset: str | None = None) -> list[LoadedVersion]:
    """Loaded versions (optionally of one dataset), newest dataset/version last."""
    query = select(LoadedVersion).order_by(LoadedVersion.dataset, LoadedVersion.version)
    if dataset is not None:
        query = query.where(LoadedVersion.dataset == dataset)
    with Session(engine) as session:
        return list(session.scalars(query))
