"""Two reviewers (two processes) deciding at once on one database lose no decision; processes
opening a new database at once migrate it exactly once. SQLite always, PostgreSQL when set up."""

from __future__ import annotations

import multiprocessing

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from negminer.audit.db import Decision, open_db
from negminer.audit.loader import load_version
from negminer.audit.queries import Filters, get_pair, list_pairs

ROUNDS = 3


def _review(url: str, reviewer: str, pair_ids: list[int], barrier, results) -> None:
    """One reviewer process: every pair, ROUNDS times, alternating decisions."""
    from negminer.audit.queries import record_decision

    engine = open_db(url)
    barrier.wait(timeout=60)
    ids = []
    for round_ in range(ROUNDS):
        for pair_id in pair_ids:
            decision = ("is_positive", "is_negative", "drop_pair")[(pair_id + round_) % 3]
            ids.append(record_decision(engine, pair_id, decision, reviewer=reviewer, comment=f"round {round_}"))
    results.put((reviewer, ids))
    engine.dispose()


def _open(url: str, barrier, results) -> None:
    barrier.wait(timeout=60)
    engine = open_db(url)
    results.put(engine.dialect.name)
    engine.dispose()


def _run(target, argsets) -> list:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(argsets)), context.Queue()
    processes = [context.Process(target=target, args=(*args, barrier, results)) for args in argsets]
    for process in processes:
        process.start()
    for process in processes:  # results are small: they fit the queue's pipe, so join first
        process.join(timeout=240)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    return [results.get(timeout=10) for _ in processes]


def test_two_reviewer_processes_lose_no_decision(db_url, version_dir):
    url = db_url
    engine = open_db(url)
    load_version(engine, version_dir)
    pair_ids = [v.pair.id for v in list_pairs(engine, Filters(), limit=1000)]
    results = dict(_run(_review, [(url, "ana", pair_ids), (url, "bo", pair_ids)]))
    expected = ROUNDS * len(pair_ids)
    assert len(results["ana"]) == len(results["bo"]) == expected
    assert len(set(results["ana"]) | set(results["bo"])) == 2 * expected  # distinct ids, none reused
    with Session(engine) as session:
        per_reviewer = dict(session.execute(select(Decision.reviewer, func.count()).group_by(Decision.reviewer)).all())
        assert per_reviewer == {"ana": expected, "bo": expected}
        for pair_id in pair_ids:
            pair = get_pair(engine, pair_id)
            newest = session.scalar(
                select(Decision)
                .where(Decision.anchor_id == pair.pair.anchor_id, Decision.doc_id == pair.pair.doc_id)
                .order_by(Decision.id.desc())
                .limit(1)
            )
            assert (pair.decision, pair.reviewer) == (newest.decision, newest.reviewer)
    engine.dispose()


def test_processes_opening_a_new_database_at_once_migrate_it_once(db_url):
    url = db_url
    dialects = _run(_open, [(url,), (url,), (url,)])
    assert len(set(dialects)) == 1 and dialects[0] in url
    engine = open_db(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [("0002",)]
    engine.dispose()
