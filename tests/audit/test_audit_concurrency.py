"""Two reviewers (two processes) deciding at once on one database lose no decision; processes
opening a new database at once migrate it exactly once; two processes loading one version at
once store it once; reviewers posting on one pair at once through review servers get every
decision stored or a clean refusal. SQLite always, PostgreSQL when set up (.ci/postgres.sh).

The web side (fastapi, httpx) is imported inside its tests: spawned processes import this module."""

from __future__ import annotations

import multiprocessing
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from negminer.audit.db import Decision, FlaggedPair, LoadedVersion, open_db
from negminer.audit.loader import load_version
from negminer.audit.queries import Filters, get_pair, history, list_pairs
from negminer.storage.atomic import sha256_file

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


def _load(url: str, version_dir: str, pause: float, barrier, results) -> None:
    """One loader process. `pause` holds it between reading the flagged rows and writing them,
    so that both processes have looked the version up before either writes (the race, each run)."""
    import negminer.audit.loader as loader

    read = loader.flagged_rows

    def slow_flagged_rows(*args, **kwargs):
        rows = read(*args, **kwargs)
        time.sleep(pause)
        return rows

    loader.flagged_rows = slow_flagged_rows
    engine = open_db(url)
    barrier.wait(timeout=60)
    results.put(tuple(load_version(engine, version_dir)))
    engine.dispose()


@pytest.mark.parametrize("state", ["new", "changed"])
def test_two_processes_loading_one_version_at_once_store_one_copy(db_url, version_dir, state):
    engine = open_db(db_url)
    if state == "changed":  # loaded before, then its flagged.parquet changed: both reload it at once
        load_version(engine, version_dir)
        flagged = pq.read_table(version_dir / "flagged.parquet")
        pq.write_table(flagged.slice(0, flagged.num_rows - 2), version_dir / "flagged.parquet")
    expected = pq.read_metadata(version_dir / "flagged.parquet").num_rows
    results = _run(_load, [(db_url, str(version_dir), 0.5), (db_url, str(version_dir), 0.5)])
    assert sorted(r[3] for r in results) == [False, True]  # one loaded it, the other found it current
    assert {r[2] for r in results} == {expected}
    with Session(engine) as session:
        versions = session.scalars(select(LoadedVersion)).all()
        assert [(v.version, v.rows, v.flagged_sha256) for v in versions] == [
            ("v0001", expected, sha256_file(version_dir / "flagged.parquet"))
        ]
        keys = session.execute(select(FlaggedPair.anchor_id, FlaggedPair.doc_id, FlaggedPair.kind)).all()
        assert len(keys) == len(set(keys)) == expected
    engine.dispose()


@contextmanager
def _serving(app) -> Iterator[str]:
    """`app` under a real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def _hidden(html: str) -> dict[str, str]:
    decide = html.split('id="decide"')[1].split("</form>")[0]
    return {name: unescape(value) for name, value in re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', decide)}


POSTS = 4  # decisions each reviewer posts (at least)
MAX_POSTS = 400  # bound on the posts of one reviewer waiting for the reload to finish


@pytest.mark.parametrize("reload", [False, True], ids=["steady", "reloaded-meanwhile"])
def test_reviewers_posting_on_one_pair_at_once_are_stored_or_refused_cleanly(db_url, version_dir, reload):
    """Two review servers (own engines, as two `negminer audit serve`) on one database, two
    reviewers on each, all posting decisions on the same pair from the same moment on; with
    `reload`, the version is reloaded (new pair ids) while they post, and each reviewer goes on
    posting until one of its posts starts after the reload committed."""
    import httpx

    from negminer.audit.web import create_app

    engine = open_db(db_url)
    load_version(engine, version_dir)
    pair = list_pairs(engine, Filters(), limit=1)[0].pair
    engines = [open_db(db_url), open_db(db_url)]
    reviewers = [("ana", 0), ("bo", 0), ("cy", 1), ("di", 1)]
    barrier, reloaded = threading.Barrier(len(reviewers) + reload), threading.Event()
    answers: dict[str, list[int]] = {}

    def review(base: str, reviewer: str) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            page = client.get("/review", params={"dataset": pair.dataset, "version": pair.version, "pair": pair.id})
            fields = {**_hidden(page.text), "reviewer": reviewer}
            assert fields["pair_id"] == str(pair.id)
            barrier.wait(timeout=60)
            answers[reviewer] = []
            while True:
                after_reload, post = reloaded.is_set(), len(answers[reviewer])
                decision = ("is_positive", "is_negative", "drop_pair", "skip")[post % 4]
                body = {**fields, "decision": decision, "comment": f"{reviewer} {post}"}
                answers[reviewer].append(client.post("/review/decide", data=body).status_code)
                if post + 1 >= POSTS and (not reload or after_reload or post + 1 >= MAX_POSTS):
                    break

    def reload_version() -> None:
        barrier.wait(timeout=60)
        assert load_version(engine, version_dir, force=True).loaded
        reloaded.set()

    with _serving(create_app(engines[0])) as first, _serving(create_app(engines[1])) as second:
        bases = (first, second)
        threads = [threading.Thread(target=review, args=(bases[s], name)) for name, s in reviewers]
        if reload:
            threads.append(threading.Thread(target=reload_version))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(answers) == sorted(name for name, _ in reviewers)
    for name, codes in answers.items():
        stored_first = codes.count(303)
        # Stored (redirect to the next pair) until the reload, a clean refusal (the id is gone) after.
        assert codes == [303] * stored_first + [400] * (len(codes) - stored_first), (name, codes)
        assert codes[-1] == (400 if reload else 303), (name, codes)
    codes = [code for codes in answers.values() for code in codes]
    stored = history(engine, pair.dataset, pair.anchor_id, pair.doc_id)
    assert len(stored) == codes.count(303)  # every decision answered as stored is in the history
    for name, _ in reviewers:
        comments = [d.comment for d in reversed(stored) if d.reviewer == name]
        assert comments == [f"{name} {post}" for post in range(answers[name].count(303))]  # in order, none lost
    if stored:
        view = next(
            v
            for v in list_pairs(engine, Filters(), limit=1000)
            if v.pair.doc_id == pair.doc_id and v.pair.anchor_id == pair.anchor_id and v.pair.kind == pair.kind
        )
        assert (view.decision, view.reviewer) == (stored[0].decision, stored[0].reviewer)
    for each in (*engines, engine):
        each.dispose()


def test_review_pages_opened_at_once_on_new_versions_load_them_once(db_url, datasets_root, monkeypatch):
    """Two review servers with `--root` opened at the same moment both load the new version
    (the index page syncs the root): both answer 200, the database holds one copy."""
    import httpx

    import negminer.audit.loader as loader
    from negminer.audit.web import create_app

    read = loader.flagged_rows

    def slow_flagged_rows(*args, **kwargs):  # both look the version up before either writes
        rows = read(*args, **kwargs)
        time.sleep(0.3)
        return rows

    monkeypatch.setattr(loader, "flagged_rows", slow_flagged_rows)
    engines = [open_db(db_url), open_db(db_url)]
    barrier, answers = threading.Barrier(2), []

    def open_index(base: str) -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            barrier.wait(timeout=60)
            answers.append(client.get("/").status_code)

    apps = [create_app(each, root=datasets_root) for each in engines]
    with _serving(apps[0]) as first, _serving(apps[1]) as second:
        threads = [threading.Thread(target=open_index, args=(base,)) for base in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert answers == [200, 200]
    expected = pq.read_metadata(datasets_root / "scifact-audit" / "v0001" / "flagged.parquet").num_rows
    with Session(engines[0]) as session:
        assert session.scalar(select(func.count()).select_from(LoadedVersion)) == 1
        assert session.scalar(select(func.count()).select_from(FlaggedPair)) == expected
    for each in engines:
        each.dispose()
