"""Audit database: migrations, loading flagged versions, the review queue and decisions."""

from __future__ import annotations

import sqlite3
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import delete, func, inspect, select, text, update
from sqlalchemy.orm import Session

from negminer.audit.db import Decision, FlaggedPair, LoadedVersion, alembic_config, open_db, upgrade
from negminer.audit.loader import load_version, sync_root
from negminer.audit.queries import (
    Filters,
    count_pairs,
    get_pair,
    history,
    latest_decisions,
    list_pairs,
    progress,
    record_decision,
)
from negminer.errors import InputError, StorageError
from negminer.storage.versions import write_version

DATASET = "scifact-audit"  # the dataset conftest.py builds


def test_new_database_gets_the_schema_in_wal_mode(tmp_path):
    engine = open_db(f"sqlite:///{tmp_path / 'sub' / 'audit.db'}")
    assert {"audit_versions", "audit_flagged", "audit_decisions", "alembic_version"} <= set(
        inspect(engine).get_table_names()
    )
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    assert upgrade(engine) == "0002"  # idempotent: already at head


def test_opening_waits_out_a_writer_holding_a_new_rollback_journal_database(tmp_path):
    # SQLite refuses `PRAGMA journal_mode = WAL` at once (busy timeout not applied) while another
    # connection holds the write lock of a rollback-journal database: what a second process
    # meets when it opens a new database the moment the first one is switching it.
    path = tmp_path / "audit.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE placeholder (x)")
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, holder.execute, args=("COMMIT",))
    release.start()
    try:
        engine = open_db(f"sqlite:///{path}")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        engine.dispose()
    finally:
        release.join()
        holder.close()


def test_migrations_match_the_models(any_engine):
    """Autogenerate finds nothing to add: the migration scripts create what the models declare."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from negminer.audit.db import Base

    with any_engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_migrations_ship_with_the_package():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_current_head() == "0002"
    assert script.dir and "negminer" in script.dir


def test_upgrading_from_0001_keeps_the_pairs_and_stops_id_reuse(db_url, version_dir):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from negminer.audit.db import Base, writing

    engine = open_db(db_url, migrate=False)
    config = alembic_config()
    with writing(engine).begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    load_version(engine, version_dir)
    before = {v.pair.id: (v.pair.anchor_id, v.pair.doc_id, v.pair.kind) for v in list_pairs(engine, limit=1000)}
    assert upgrade(engine) == "0002"
    assert {v.pair.id: (v.pair.anchor_id, v.pair.doc_id, v.pair.kind) for v in list_pairs(engine, limit=1000)} == before
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            schema = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'audit_flagged'").scalar()
        assert "AUTOINCREMENT" in schema
    _reload_reordered(engine, version_dir)
    assert min(v.pair.id for v in list_pairs(engine, limit=1000)) > max(before)
    engine.dispose()


def test_reloading_a_changed_version_never_reuses_pair_ids(any_engine, version_dir):
    engine = any_engine
    load_version(engine, version_dir)
    before = {v.pair.id for v in list_pairs(engine, limit=1000)}
    _reload_reordered(engine, version_dir)
    assert min(v.pair.id for v in list_pairs(engine, limit=1000)) > max(before)
    stale = min(before)
    assert get_pair(engine, stale) is None
    with pytest.raises(InputError, match="no flagged pair"):
        record_decision(engine, stale, "is_positive", reviewer="ana")
    assert latest_decisions(engine, DATASET).num_rows == 0


def _reload_reordered(engine, version_dir) -> None:
    """Rewrite flagged.parquet with its rows reversed (a changed file) and reload it."""
    flagged = pq.read_table(version_dir / "flagged.parquet")
    pq.write_table(flagged.take(list(range(flagged.num_rows))[::-1]), version_dir / "flagged.parquet")
    assert load_version(engine, version_dir).loaded


def test_bad_url_is_a_config_error():
    from negminer.errors import ConfigError

    with pytest.raises(ConfigError, match="audit database URL"):
        open_db("notadialect://x")


def test_load_version_joins_texts_and_scores(engine, version_dir):
    result = load_version(engine, version_dir)
    flagged = pq.read_table(version_dir / "flagged.parquet")
    assert result.loaded and result.rows == flagged.num_rows and result.dataset == DATASET
    view = list_pairs(engine, Filters(dataset=DATASET, kind="false_negative"), limit=1)[0]
    pair = view.pair
    anchors = pq.read_table(version_dir / "anchors.parquet")
    docs = pq.read_table(version_dir / "docs.parquet")
    anchor_row = anchors.filter(pc.equal(anchors["anchor_id"], pair.anchor_id)).to_pylist()[0]
    doc_row = docs.filter(pc.equal(docs["doc_id"], pair.doc_id)).to_pylist()[0]
    assert pair.anchor_text == anchor_row["text"] and pair.doc_text == doc_row["text"]
    assert pair.doc_title == doc_row["title"]
    candidates = pq.read_table(version_dir / "candidates.parquet")
    cand = candidates.filter(
        pc.and_(pc.equal(candidates["anchor_id"], pair.anchor_id), pc.equal(candidates["doc_id"], pair.doc_id))
    ).to_pylist()[0]
    assert pair.score == pytest.approx(cand["score"]) and pair.positive_score == pytest.approx(cand["positive_score"])
    planted = flagged.filter(pc.equal(flagged["kind"], "false_negative"))["label_quality"].to_pylist()
    assert pair.quality == pytest.approx(min(planted)) and not pair.is_positive
    assert pair.positive_text and pair.positive_id != pair.doc_id
    assert "score_minus_positive" in pair.features and "label_quality" not in pair.features
    assert "looks relevant" in pair.why


def test_false_positive_rows_are_marked_positive(engine, version_dir):
    load_version(engine, version_dir)
    views = list_pairs(engine, Filters(dataset=DATASET, kind="false_positive"), limit=100)
    assert views and all(v.pair.is_positive for v in views)


def test_load_is_idempotent_and_replaces_changed_flags(engine, version_dir):
    assert load_version(engine, version_dir).loaded
    again = load_version(engine, version_dir)
    assert not again.loaded
    assert count_pairs(engine, Filters(dataset=DATASET)) == again.rows
    flagged = pq.read_table(version_dir / "flagged.parquet")
    pq.write_table(flagged.slice(0, 2), version_dir / "flagged.parquet")
    assert load_version(engine, version_dir).rows == 2
    assert count_pairs(engine, Filters(dataset=DATASET)) == 2
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(LoadedVersion)) == 1


def test_histogram_counts_positives_and_chosen_negatives(engine, version_dir):
    load_version(engine, version_dir)
    with Session(engine) as session:
        histogram = session.scalar(select(LoadedVersion.histogram))
    candidates = pq.read_table(version_dir / "candidates.parquet")
    assert sum(histogram["positive"]) == pc.sum(candidates["is_positive"]).as_py()
    assert sum(histogram["negative"]) == pc.sum(pc.is_valid(candidates["negative_slot"])).as_py()
    assert len(histogram["edges"]) == len(histogram["positive"]) + 1


def test_load_refuses_a_flagged_file_without_required_columns(engine, version_dir):
    flagged = pq.read_table(version_dir / "flagged.parquet").drop_columns(["kind"])
    pq.write_table(flagged, version_dir / "flagged.parquet")
    with pytest.raises(InputError, match="'kind'"):
        load_version(engine, version_dir)


def test_load_refuses_an_incomplete_version(engine, version_dir):
    (version_dir / "manifest.json").unlink()
    with pytest.raises(StorageError, match="not a complete dataset version"):
        load_version(engine, version_dir)


def test_sync_root_loads_new_flagged_versions_only(engine, datasets_root, version_dir):
    assert [r.loaded for r in sync_root(engine, datasets_root)] == [True]
    tables = {stem: pq.read_table(version_dir / f"{stem}.parquet") for stem in ("anchors", "docs", "pairs")}
    write_version(datasets_root, DATASET, tables=tables, manifest={"name": DATASET})  # v0002 without flags
    tables["flagged"] = pq.read_table(version_dir / "flagged.parquet").slice(0, 3)
    write_version(datasets_root, DATASET, tables=tables, manifest={"name": DATASET})  # v0003 with flags
    results = sync_root(engine, datasets_root)
    assert [(r.version, r.loaded) for r in results] == [("v0001", False), ("v0003", True)]
    assert count_pairs(engine, Filters(version="v0003")) == 3


def test_queue_puts_undecided_then_skipped_then_decided_by_quality(any_engine, version_dir):
    engine = any_engine
    load_version(engine, version_dir)
    views = list_pairs(engine, Filters(dataset=DATASET), limit=100)
    qualities = [v.pair.quality for v in views]
    assert qualities == sorted(qualities)
    first, second = views[0].pair.id, views[1].pair.id
    record_decision(engine, first, "skip", reviewer="ana")
    record_decision(engine, second, "is_negative", reviewer="ana")
    order = [v.pair.id for v in list_pairs(engine, Filters(dataset=DATASET), limit=100)]
    assert order[-2:] == [first, second]
    pending = [v.pair.id for v in list_pairs(engine, Filters(dataset=DATASET, status="pending"), limit=100)]
    assert second not in pending and pending[-1] == first
    assert progress(engine, Filters(dataset=DATASET)) == type(progress(engine, Filters()))(len(views), 1, 1)


def test_filters_by_kind_quality_and_score(engine, version_dir):
    load_version(engine, version_dir)
    every = list_pairs(engine, Filters(), limit=1000)
    kinds = {v.pair.kind for v in list_pairs(engine, Filters(kind="near_duplicate"), limit=1000)}
    assert kinds == {"near_duplicate"}
    low = list_pairs(engine, Filters(max_quality=0.25), limit=1000)
    assert low and all(v.pair.quality <= 0.25 for v in low) and len(low) < len(every)
    high = list_pairs(engine, Filters(min_score=0.3), limit=1000)
    assert all(v.pair.score >= 0.3 for v in high) and len(high) < len(every)


def test_newest_decision_wins_and_history_keeps_all(any_engine, version_dir):
    engine = any_engine
    load_version(engine, version_dir)
    pair = list_pairs(engine, Filters(), limit=1)[0].pair
    record_decision(engine, pair.id, "is_positive", reviewer="ana", comment="same finding")
    record_decision(engine, pair.id, "is_negative", reviewer="bo")
    view = get_pair(engine, pair.id)
    assert (view.decision, view.reviewer) == ("is_negative", "bo")
    past = history(engine, DATASET, pair.anchor_id, pair.doc_id)
    assert [(d.decision, d.reviewer, d.comment) for d in past] == [
        ("is_negative", "bo", None),
        ("is_positive", "ana", "same finding"),
    ]
    table = latest_decisions(engine, DATASET)
    assert table.to_pylist()[0]["decision"] == "is_negative" and table.num_rows == 1
    assert table.schema.field("decided_at").type == pa.timestamp("s", tz="UTC")


def test_a_decision_refuses_an_id_that_now_names_another_pair(any_engine, version_dir):
    engine = any_engine
    load_version(engine, version_dir)
    seen, other = _two_pairs(engine)
    _give_id_to(engine, other, seen.id)  # what a reload reusing ids did to the pair on screen
    shown = {"dataset": DATASET, "version": "v0001", "anchor_id": seen.anchor_id, "doc_id": seen.doc_id}
    with pytest.raises(InputError, match=f"pair {seen.id} is no longer the pair you reviewed"):
        record_decision(engine, seen.id, "is_positive", reviewer="ana", **shown)
    assert latest_decisions(engine, DATASET).num_rows == 0
    now_shown = {**shown, "anchor_id": other.anchor_id, "doc_id": other.doc_id}
    record_decision(engine, seen.id, "is_positive", reviewer="ana", **now_shown)
    [row] = latest_decisions(engine, DATASET).to_pylist()
    assert (row["anchor_id"], row["doc_id"]) == (other.anchor_id, other.doc_id)
    with pytest.raises(InputError, match="version 'v0002'"):
        record_decision(engine, seen.id, "skip", reviewer="ana", **{**now_shown, "version": "v0002"})


def _two_pairs(engine) -> tuple[FlaggedPair, FlaggedPair]:
    """Two flagged pairs with different (anchor, doc)."""
    pairs = [v.pair for v in list_pairs(engine, limit=1000)]
    other = next(p for p in pairs if (p.anchor_id, p.doc_id) != (pairs[0].anchor_id, pairs[0].doc_id))
    return pairs[0], other


def _give_id_to(engine, pair: FlaggedPair, pair_id: int) -> None:
    """Delete the row with id `pair_id` and renumber `pair` to it."""
    with Session(engine) as session, session.begin():
        session.execute(delete(FlaggedPair).where(FlaggedPair.id == pair_id))
        session.execute(update(FlaggedPair).where(FlaggedPair.id == pair.id).values(id=pair_id))


@pytest.mark.parametrize(
    ("decision", "reviewer", "comment", "message"),
    [
        ("maybe", "ana", None, "decision must be one of"),
        ("skip", "   ", None, "reviewer is required"),
        ("skip", "a\nb", None, "single line"),
        ("skip", "ana\x07", None, "control characters"),
        ("skip", "x" * 101, None, "longer than 100"),
        ("skip", "ana", "y" * 2001, "longer than 2000"),
    ],
)
def test_record_decision_validates(engine, version_dir, decision, reviewer, comment, message):
    load_version(engine, version_dir)
    pair_id = list_pairs(engine, Filters(), limit=1)[0].pair.id
    with pytest.raises(InputError, match=message):
        record_decision(engine, pair_id, decision, reviewer=reviewer, comment=comment)


def test_unknown_pair_and_bad_filters_are_refused(engine):
    with pytest.raises(InputError, match="no flagged pair"):
        record_decision(engine, 999, "skip", reviewer="ana")
    with pytest.raises(InputError, match="version"):
        Filters(version="v1; DROP TABLE audit_decisions")
    with pytest.raises(InputError, match="dataset"):
        Filters(dataset="../etc")


def test_sql_looking_input_is_stored_verbatim(any_engine, version_dir):
    engine = any_engine
    load_version(engine, version_dir)
    pair_id = list_pairs(engine, Filters(), limit=1)[0].pair.id
    nasty = "x'); DROP TABLE audit_decisions; --"
    record_decision(engine, pair_id, "skip", reviewer=nasty, comment="<script>alert(1)</script>")
    with Session(engine) as session:
        row = session.scalar(select(Decision))
        assert (row.reviewer, row.comment) == (nasty, "<script>alert(1)</script>")
        assert session.scalar(select(func.count()).select_from(FlaggedPair)) > 0
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_decisions")).scalar() == 1


def test_loads_the_curation_stages_flagged_layout(engine, version_dir):
    """curation.policy.flagged_table's columns: quality, label, pair_idx (null for candidates),
    relevance and feature_* columns, actions drop/quarantine/keep."""
    candidates = pq.read_table(version_dir / "candidates.parquet")
    negative = candidates.filter(pc.equal(candidates["negative_slot"], 1)).to_pylist()[0]
    pairs = pq.read_table(version_dir / "pairs.parquet").to_pylist()
    anchors = pq.read_table(version_dir / "anchors.parquet")
    docs = pq.read_table(version_dir / "docs.parquet")
    positive = pairs[0]
    flagged = pa.table(
        {
            "kind": ["false_negative", "false_positive"],
            "action": ["quarantine", "keep"],
            "anchor_id": [negative["anchor_id"], anchors["anchor_id"][positive["anchor_idx"]].as_py()],
            "doc_id": [negative["doc_id"], docs["doc_id"][positive["doc_idx"]].as_py()],
            "anchor_idx": pa.array([negative["anchor_idx"], positive["anchor_idx"]], pa.int32()),
            "doc_idx": pa.array([negative["doc_idx"], positive["doc_idx"]], pa.int32()),
            "pair_idx": pa.array([None, positive["pair_idx"]], pa.int32()),
            "label": [0, 1],
            "rank": [negative["rank"], -1],
            "quality": [0.02, 0.4],
            "relevance": [0.97, 0.1],
            "feature_bm25": pa.array([12.5, 0.3], pa.float32()),
        }
    )
    pq.write_table(flagged, version_dir / "flagged.parquet")
    load_version(engine, version_dir)
    fn, fp = (v.pair for v in list_pairs(engine, Filters(dataset=DATASET), limit=10))
    assert (fn.kind, fn.quality, fn.is_positive, fn.action) == ("false_negative", 0.02, False, "quarantine")
    assert (fp.kind, fp.quality, fp.is_positive) == ("false_positive", 0.4, True)
    assert fn.score == pytest.approx(negative["score"])
    assert set(fn.features) == {"label", "relevance", "feature_bm25"}
    assert fn.features["feature_bm25"] == pytest.approx(12.5)
