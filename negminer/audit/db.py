"""The audit database: flagged pairs of each dataset version and reviewers' decisions.

SQLAlchemy over SQLite by default (``ROOT/audit.db``, beside the datasets) or any SQLAlchemy
URL (``postgresql+psycopg://...``). The schema is created and upgraded by the Alembic
migrations shipped in :mod:`negminer.audit.migrations`, under a database-wide lock, every
time :func:`open_db` opens a database, so two processes opening a new file at once are safe.

Tables:

* ``audit_versions``: one row per loaded dataset version (path, sha256 of its
  ``flagged.parquet``, the score histogram the review page plots).
* ``audit_flagged``: one row per flagged pair and kind of a version, with the texts the
  review page shows, the scores, the quality (lower = more likely a label error), why it was
  flagged and the curation's features.
* ``audit_decisions``: append-only; a decision names its pair by ``(dataset, anchor_id,
  doc_id)``, so it carries over to later versions. The newest row (largest ``id``) for a pair
  is its effective decision; older rows are its history. Rows are never updated, so two
  reviewers deciding at once both keep their row.

SQLite runs in WAL mode with a busy timeout; transactions that write start with
``BEGIN IMMEDIATE`` (:func:`writing`), so writers queue instead of failing with "database is
locked", and readers never block them. PostgreSQL lets writers run side by side: a
read-then-write transaction that must not interleave with another (loading one version)
takes :func:`lock_names` first.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from negminer.audit import DECISIONS, ENV_DB_URL
from negminer.errors import ConfigError, StorageError

logger = logging.getLogger(__name__)

__all__ = [
    "DECISIONS",
    "ENV_DB_URL",
    "Base",
    "Decision",
    "FlaggedPair",
    "LoadedVersion",
    "default_url",
    "lock_names",
    "open_db",
]

DB_FILE = "audit.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x6E65676D  # "negm": pg_advisory_xact_lock key for migrations
# First key of the two-key pg_advisory_xact_lock(int4, int4) of lock_names (a key space apart
# from the one-key bigint lock of the migrations).
_PG_NAMES_LOCK = 0x6E65676D
_ID = 512  # longest anchor/doc id stored
_WRITE_OPTION = "negminer_write"


class Base(DeclarativeBase):
    """Declarative base of the audit tables (their metadata drives the migrations)."""


class LoadedVersion(Base):
    """A dataset version whose flagged pairs are in the database."""

    __tablename__ = "audit_versions"
    __table_args__ = (UniqueConstraint("dataset", "version", name="uq_audit_versions_dataset_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    flagged_sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    histogram: Mapped[dict[str, Any]] = mapped_column(JSON)


class FlaggedPair(Base):
    """One flagged (anchor, doc) pair of one version, with what the review page shows."""

    __tablename__ = "audit_flagged"
    __table_args__ = (
        UniqueConstraint("dataset", "version", "anchor_id", "doc_id", "kind", name="uq_audit_flagged_pair"),
        Index("ix_audit_flagged_queue", "dataset", "version", "quality"),
        Index("ix_audit_flagged_pair", "dataset", "anchor_id", "doc_id"),
        # Reloading a version deletes its rows; AUTOINCREMENT keeps SQLite from handing their ids
        # to the new rows, so an id a reviewer has on screen never names another pair.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(32))
    anchor_id: Mapped[str] = mapped_column(String(_ID))
    doc_id: Mapped[str] = mapped_column(String(_ID))
    kind: Mapped[str] = mapped_column(String(64))
    quality: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    positive_score: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer)
    is_positive: Mapped[bool] = mapped_column(default=False)
    why: Mapped[str] = mapped_column(Text)
    action: Mapped[str | None] = mapped_column(String(64))
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    anchor_text: Mapped[str] = mapped_column(Text)
    doc_text: Mapped[str] = mapped_column(Text)
    doc_title: Mapped[str | None] = mapped_column(Text)
    positive_id: Mapped[str | None] = mapped_column(String(_ID))
    positive_text: Mapped[str | None] = mapped_column(Text)


class Decision(Base):
    """A reviewer's decision on a pair; append-only, the newest per pair wins."""

    __tablename__ = "audit_decisions"
    __table_args__ = (
        CheckConstraint("decision IN ('is_positive', 'is_negative', 'drop_pair', 'skip')", name="ck_audit_decision"),
        Index("ix_audit_decisions_pair", "dataset", "anchor_id", "doc_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(200))
    anchor_id: Mapped[str] = mapped_column(String(_ID))
    doc_id: Mapped[str] = mapped_column(String(_ID))
    decision: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(100))
    comment: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str | None] = mapped_column(String(64))


def default_url(root: str | Path) -> str:
    """The SQLite URL of the audit database beside the datasets: ``ROOT/audit.db``."""
    return f"sqlite:///{(Path(root) / DB_FILE).resolve()}"


def open_db(url: str, *, migrate: bool = True) -> Engine:
    """An engine on the audit database at `url`, with the schema upgraded to the newest.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path/audit.db``, ``postgresql+psycopg://...``).
        migrate: apply pending Alembic migrations (creates the tables on a new database).

    Returns:
        A SQLAlchemy engine; SQLite engines use WAL, a busy timeout and ``BEGIN IMMEDIATE``.

    Example:
        >>> engine = open_db(default_url("datasets"))  # doctest: +SKIP
    """
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as err:
        raise ConfigError(f"audit database URL {url!r}: {err}") from err
    if engine.dialect.name == "sqlite":
        _prepare_sqlite(engine)
    if migrate:
        upgrade(engine)
    return engine


def _prepare_sqlite(engine: Engine) -> None:
    database = engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds a write lock.

    SQLite answers this pragma with "database is locked" at once, without waiting the busy
    timeout, when a rollback-journal database has a writer (e.g. another process switching a
    new database to WAL at the same moment); retry until the busy timeout has passed.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))


def writing(engine: Engine) -> Engine:
    """`engine` for a transaction that writes: on SQLite it starts with ``BEGIN IMMEDIATE``.

    Taking the write lock up front makes a read-then-write transaction wait for other
    writers (busy timeout) instead of failing when another process committed since its read;
    read-only transactions use a plain ``BEGIN`` and never block writers (WAL).
    """
    return engine.execution_options(**{_WRITE_OPTION: True})


def lock_names(session: Session, *names: str) -> None:
    """Wait for, then hold until the transaction ends, the lock on `names` (e.g. a version).

    Two transactions locking the same names run one after the other; call it first thing in
    the transaction. On PostgreSQL this is ``pg_advisory_xact_lock`` (the next statement, under
    the default READ COMMITTED, sees what the previous holder committed); on SQLite a
    :func:`writing` transaction already holds the database's write lock, so nothing is done.
    Different names may share a lock by hash collision (they only wait on each other).

    Example:
        >>> with Session(writing(engine)) as session, session.begin():  # doctest: +SKIP
        ...     lock_names(session, "load", "scifact-sample", "v0002")
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.blake2b("\0".join(names).encode("utf-8"), digest_size=4).digest()
    key = int.from_bytes(digest, "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": _PG_NAMES_LOCK, "key": key})


def upgrade(engine: Engine) -> str:
    """Apply pending migrations under a database-wide lock; returns the schema revision.

    On SQLite the whole upgrade runs in one ``BEGIN IMMEDIATE`` transaction (SQLite's DDL is
    transactional), on PostgreSQL under ``pg_advisory_xact_lock``: concurrent openers wait,
    then find the schema current.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    config = alembic_config()
    head = _script_head(config)
    try:
        with writing(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            current = MigrationContext.configure(connection).get_current_revision()
            if current != head:
                logger.info("upgrading audit database %s from %s to %s", engine.url, current, head)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    except OperationalError as err:
        raise StorageError(f"audit database {engine.url}: cannot open or upgrade ({err.orig})") from err
    return head


def alembic_config():
    """An Alembic ``Config`` pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return config


def _script_head(config) -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise StorageError("negminer's audit migrations are missing from the installed package")
    return head


def utcnow() -> datetime:
    """The current time in UTC (what decisions record)."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` with UTC attached when the database returned it naive (SQLite)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
