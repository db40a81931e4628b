"""``negminer audit list|show|decide|export|load`` through the real command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from negminer.audit.db import open_db
from negminer.audit.queries import Filters, latest_decisions, list_pairs
from negminer.cli import app
from negminer.errors import InputError

DATASET = "scifact-audit"  # the dataset conftest.py builds


@pytest.fixture
def cli(datasets_root):
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, ["audit", *args, "--root", str(datasets_root)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return invoke


def ids_of(listing: str) -> list[int]:
    return [int(line.split()[0]) for line in listing.splitlines()[1:] if line.strip() and line.split()[0].isdigit()]


def test_list_loads_new_versions_and_filters(cli, datasets_root):
    everything = ids_of(cli("list", "--limit", "100").stdout)
    assert (datasets_root / "audit.db").exists() and len(everything) == 17
    near = cli("list", "--kind", "near_duplicate", "--limit", "100").stdout
    assert ids_of(near) and all("near_duplicate" in line for line in near.splitlines()[1:])
    low = ids_of(cli("list", "--max-quality", "0.25", "--version", "v0001").stdout)
    assert low == everything[: len(low)] and 0 < len(low) < len(everything)
    records = [json.loads(line) for line in cli("list", "--json", "--min-score", "0.3").stdout.splitlines()]
    assert records and all(r["score"] >= 0.3 for r in records) and "anchor" in records[0]


def test_decide_show_and_status_filters(cli, datasets_root):
    first, second = ids_of(cli("list", "--limit", "2").stdout)
    out = cli("decide", "is_positive", str(first), str(second), "--reviewer", "ana", "--comment", "same claim").stdout
    assert out.count("is_positive by ana") == 2
    assert ids_of(cli("list", "--status", "decided").stdout) == [first, second]
    assert first not in ids_of(cli("list", "--status", "pending", "--limit", "100").stdout)
    shown = cli("show", str(first)).stdout
    assert "ANCHOR" in shown and "CANDIDATE" in shown and "is_positive by ana" in shown and "same claim" in shown
    record = json.loads(cli("show", str(first), "--json").stdout)
    assert record["decision"] == "is_positive" and record["history"][0]["comment"] == "same claim"
    engine = open_db(f"sqlite:///{datasets_root / 'audit.db'}")
    assert latest_decisions(engine, DATASET).num_rows == 2
    engine.dispose()


def test_decide_reviewer_defaults_to_the_environment(cli, datasets_root, monkeypatch):
    monkeypatch.setenv("NEGMINER_REVIEWER", "env-reviewer")
    [first] = ids_of(cli("list", "--limit", "1").stdout)
    assert "by env-reviewer" in cli("decide", "skip", str(first)).stdout


def test_export_formats(cli, tmp_path):
    [first] = ids_of(cli("list", "--limit", "1").stdout)
    cli("decide", "drop_pair", str(first), "--reviewer", "ana")
    cli("export", str(tmp_path / "all.csv"))
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert len(rows) == 17 and json.loads(rows[0]["features"]) is not None
    assert [r["decision"] for r in rows if r["id"] == str(first)] == ["drop_pair"]
    cli("export", str(tmp_path / "fn.jsonl"), "--kind", "false_negative")
    lines = [json.loads(line) for line in (tmp_path / "fn.jsonl").read_text().splitlines()]
    assert lines and {r["kind"] for r in lines} == {"false_negative"}
    cli("export", str(tmp_path / "argilla.jsonl"), "--format", "argilla")
    argilla = [json.loads(line) for line in (tmp_path / "argilla.jsonl").read_text().splitlines()]
    assert {"id", "anchor", "positive", "candidate", "kind", "quality"} <= set(argilla[0])
    assert [r.get("decision") for r in argilla if r["id"].endswith(f":{first}")] == ["drop_pair"]
    assert sum("decision" in r for r in argilla) == 1
    cli("export", str(tmp_path / "ls.json"), "--format", "label-studio")
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert len(tasks) == 17 and set(tasks[0]["data"]) >= {"anchor", "positive", "candidate", "pair_id"}
    [done] = [t for t in tasks if "annotations" in t]
    assert done["annotations"][0]["result"][0]["value"] == {"choices": ["drop_pair"]}
    config = (tmp_path / "ls.label-config.xml").read_text()
    assert '<Choices name="decision" toName="candidate"' in config and "$anchor" in config


def test_load_command_and_explicit_db_url(datasets_root, version_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = CliRunner().invoke(app, ["audit", "load", str(version_dir), "--db", url])
    assert result.exit_code == 0 and "loaded 17 flagged pairs" in result.stdout
    result = CliRunner().invoke(app, ["audit", "load", str(version_dir), "--db", url])
    assert "unchanged" in result.stdout
    assert len(list_pairs(open_db(url), Filters(), limit=100)) == 17
    assert not (datasets_root / "audit.db").exists()


def test_serve_answers_to_its_host_loopback_and_allowed_names_only(cli, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    token = "t0ken-for-tests-0123456789"
    cli("serve", "--host", "192.0.2.7", "--token", token, "--allowed-host", "review.example")
    assert served["host"] == "192.0.2.7"
    answers = {"192.0.2.7:8765": 200, "review.example": 200, "localhost": 200, "evil.example": 400}
    with TestClient(served["app"], headers={"authorization": f"Bearer {token}"}) as client:
        for host, status in answers.items():
            assert client.get("/healthz", headers={"host": host}).status_code == status, host


def test_errors_are_one_line_on_stderr(datasets_root):
    env = {**os.environ, "NEGMINER_AUDIT_DB": f"sqlite:///{datasets_root / 'audit.db'}"}
    for args, message in (
        (["decide", "maybe", "1"], "error: decision must be one of"),
        (["show", "424242"], "error: no flagged pair with id 424242"),
        (["list", "--version", "latest"], "error: version 'latest' is not valid"),
        (["export", "out.txt"], "pass --format"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "negminer", "audit", *args, "--root", str(datasets_root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_csv_export_keeps_texts_with_carriage_returns_in_one_field(engine, version_dir, tmp_path):
    from sqlalchemy import update

    from negminer.audit.db import FlaggedPair
    from negminer.audit.export import export_pairs
    from negminer.audit.loader import load_version

    load_version(engine, version_dir)
    texts = {1: "first line\rsecond line", 2: 'crlf\r\nand lf\nand a "quote"'}
    with engine.begin() as conn:
        for pair_id, text in texts.items():
            conn.execute(update(FlaggedPair).where(FlaggedPair.id == pair_id).values(doc_text=text))
    views = list_pairs(engine, Filters(), limit=100)
    [out] = export_pairs(views, tmp_path / "pairs.csv", output_format="csv")
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(views) == 17
    assert {int(r["id"]): r["doc"] for r in rows if int(r["id"]) in texts} == texts


def test_decide_records_nothing_when_one_id_is_unknown(datasets_root):
    runner = CliRunner()
    listing = runner.invoke(app, ["audit", "list", "--root", str(datasets_root)]).stdout
    [first] = ids_of(listing)[:1]
    result = runner.invoke(app, ["audit", "decide", "drop_pair", str(first), "999999", "--root", str(datasets_root)])
    assert isinstance(result.exception, InputError) and "999999" in str(result.exception)
    assert "nothing recorded" in str(result.exception)
    engine = open_db(f"sqlite:///{datasets_root / 'audit.db'}")
    assert latest_decisions(engine, DATASET).num_rows == 0
    engine.dispose()


def test_a_datasets_root_that_does_not_exist_is_an_error_not_an_empty_database(tmp_path):
    result = CliRunner().invoke(app, ["audit", "list", "--root", str(tmp_path / "typo")])
    assert isinstance(result.exception, InputError) and "no such datasets root" in str(result.exception)
    assert not (tmp_path / "typo").exists()
