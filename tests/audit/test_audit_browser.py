"""End to end in a real browser: headless Chromium reviews three pairs on the page served by
``negminer audit serve``; the database holds the decisions and a following ``refilter`` applies
them. Skips where Chromium or Python playwright is missing (``.ci/run`` installs Chromium).

Set ``NEGMINER_SCREENSHOT=docs/audit-page.png`` to refresh the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import URLError

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer.audit.db import open_db
from negminer.audit.queries import history

DATASET = "scifact-audit"  # the dataset conftest.py builds
CHROMIUM = Path(os.environ.get("NEGMINER_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REVIEWER = "Ana Reviewer"


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (.ci/run does)")
    api = pytest.importorskip("playwright.sync_api", reason="Python playwright missing: pip install -e '.[dev]'")
    return api.sync_playwright


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(datasets_root, tmp_path):
    """`negminer audit serve` in a subprocess on a free loopback port; stopped afterwards."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "negminer", "audit", "serve", "--root", str(datasets_root), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, tmp_path / "serve.log")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"audit serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except (URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    pytest.fail(f"audit serve did not answer within {timeout} s: {log.read_text()[-2000:]}")


def shown_pair(page) -> int:
    return int(page.get_attribute("#flag", "data-pair-id"))


def decide_by_key(page, key: str) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")
    with page.expect_navigation():
        page.keyboard.press(key)


def review_three_pairs(page, url: str, screenshot: Path) -> list[tuple[int, str]]:
    """Index → review page; decide by button, by shortcut, then on a filtered kind by shortcut."""
    page.goto(f"{url}/")
    with page.expect_navigation():
        page.click("#versions a")
    page.fill("#reviewer", REVIEWER)
    page.screenshot(path=str(screenshot))
    first = shown_pair(page)
    with page.expect_navigation():
        page.click("#decide-is_positive")
    second = shown_pair(page)
    assert second != first and page.input_value("#reviewer") == REVIEWER  # remembered
    page.click("#comment")
    page.keyboard.type("p looks like a duplicate")  # shortcuts stay off while typing
    page.wait_for_timeout(300)
    assert shown_pair(page) == second
    decide_by_key(page, "d")
    page.select_option("#kind-filter", "false_positive")
    with page.expect_navigation():
        page.click(".filter button")
    third = shown_pair(page)
    assert "false positive" in page.inner_text("#kind")
    decide_by_key(page, "n")
    assert page.inner_text("#progress-text").startswith("1 / ")  # progress within the kind
    page.select_option("#kind-filter", "")
    with page.expect_navigation():
        page.click(".filter button")
    assert page.inner_text("#progress-text").startswith("3 / 17 decided")
    return [(first, "is_positive"), (second, "drop_pair"), (third, "is_negative")]


def test_review_three_pairs_in_chromium_then_refilter_applies_them(
    sync_playwright, server, datasets_root, version_dir, tmp_path
):
    screenshot = tmp_path / "audit-page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 780})
            decided = review_three_pairs(page, server, screenshot)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    if target := os.environ.get("NEGMINER_SCREENSHOT"):
        shutil.copyfile(screenshot, target)

    engine = open_db(f"sqlite:///{datasets_root / 'audit.db'}")
    from negminer.audit.queries import get_pair

    pairs = {}
    for pair_id, decision in decided:
        view = get_pair(engine, pair_id)
        [row] = history(engine, DATASET, view.pair.anchor_id, view.pair.doc_id)
        assert (row.decision, row.reviewer) == (decision, REVIEWER)
        pairs[decision] = view.pair
    assert history(engine, DATASET, pairs["drop_pair"].anchor_id, pairs["drop_pair"].doc_id)[0].comment == (
        "p looks like a duplicate"
    )
    engine.dispose()
    check_refilter_applied(version_dir, pairs)


def check_refilter_applied(version_dir: Path, pairs: dict) -> None:
    """A following refilter drops the two excluded candidates and the rejected positive pair."""
    from negminer.refilter import refilter, refilter_config
    from negminer.storage.versions import read_manifest

    result = refilter(version_dir, mine=refilter_config(version_dir))
    candidates = pq.read_table(result.path / "candidates.parquet")

    def reason(pair) -> list[str]:
        mask = pc.and_(pc.equal(candidates["anchor_id"], pair.anchor_id), pc.equal(candidates["doc_id"], pair.doc_id))
        return candidates.filter(mask)["reason"].to_pylist()

    assert reason(pairs["is_positive"]) == ["audit_decision"]
    assert reason(pairs["drop_pair"]) == ["audit_decision"]
    counts = read_manifest(result.path)["counts"]["audit"]
    assert counts["applied"] == 3 and counts["excluded_candidates"] == 2 and counts["dropped_pairs"] == 1
    rejected = pairs["is_negative"]
    triplets = pq.read_table(result.path / "triplets.parquet")
    parent = pq.read_table(version_dir / "triplets.parquet")
    gone = pc.and_(pc.equal(parent["anchor"], rejected.anchor_text), pc.equal(parent["positive"], rejected.doc_text))
    assert pc.sum(gone).as_py() > 0  # the parent trained on the rejected positive...
    still = pc.and_(
        pc.equal(triplets["anchor"], rejected.anchor_text), pc.equal(triplets["positive"], rejected.doc_text)
    )
    assert pc.sum(still).as_py() == 0  # ...the child does not
