"""Crash safety: a real `negminer mine` process killed with SIGKILL at every stage, then the same
command again, gives the dataset bytes of an uninterrupted run, and no version is ever visible
before it is complete.

The killed run gets a test-only ``sitecustomize`` (on its PYTHONPATH, never in the package)
that watches the stage under test: the stage's functions (``negminer.stages.*``; the report's
``run_report``) and, inside them, every file they put in place (``os.replace``, ``os.rename``,
``os.link``: the last step of every atomic write, of a version's staged files and of its rename
into place). At the chosen step (the Nth match of a pattern) the hook freezes the process before
the step and drops a flag file; the test then kills the whole process group, so the kill lands
at that exact point, the step's temp file written but not in place, the earlier ones done.

Every case but the embedding one starts from a copy of the reference run's embedding store,
so it embeds nothing; the embedding case starts with an empty store, so its kill lands
between two stored shards. Curation runs in shards here (a sample of anchors fits the judges).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from negminer.storage.versions import LATEST, verify_version

pytestmark = pytest.mark.slow

NAME = "crash"
CONCURRENT_CASES = 3  # killed runs and reruns in flight at once (each is mostly waiting)
KILL_HOOK = """\
import os

_stage = os.environ.get("NEGMINER_TEST_KILL_AT")
if _stage:
    import functools
    import importlib
    import re
    import time

    _pattern = re.compile(os.environ["NEGMINER_TEST_KILL_BEFORE"])
    _nth = int(os.environ["NEGMINER_TEST_KILL_NTH"])
    _flag = os.environ["NEGMINER_TEST_FLAG"]
    _seen, _matches, _depth = [], [0], [0]
    _functions = {
        "read": ("negminer.stages", ["read_stage"]),
        "embed": ("negminer.stages", ["embed_plan_stage", "embed_shard_stage", "embed_assemble_stage"]),
        "index": ("negminer.stages", ["index_stage", "index_shard_stage"]),
        "search": ("negminer.stages", ["search_shard_stage", "search_merge_stage"]),
        "curate": ("negminer.stages", ["curate_plan_stage", "curate_shard_stage", "curate_merge_stage"]),
        "select": ("negminer.stages", ["select_plan_stage", "select_shard_stage", "select_merge_stage"]),
        "write": ("negminer.stages", ["publish_stage"]),
        "audit-load": ("negminer.stages", ["audit_load_stage"]),
        "report": ("negminer.report", ["run_report"]),
    }

    def _step(line):
        # inside the stage: note the step; at the chosen one, flag it and wait to be killed
        if not _depth[0]:
            return
        _seen.append(line)
        if _pattern.search(line):
            _matches[0] += 1
            if _matches[0] == _nth:
                with open(_flag + ".log", "w") as handle:
                    handle.write("\\n".join(_seen) + "\\n")
                os.close(os.open(_flag, os.O_CREAT | os.O_WRONLY))
                time.sleep(3600)

    def _stage_function(function):
        @functools.wraps(function)
        def watched(*args, **kwargs):
            _depth[0] += 1
            try:
                _step(f"enter {function.__name__}")
                return function(*args, **kwargs)
            finally:
                _depth[0] -= 1

        return watched

    def _file_step(name, operation):
        def watched(src, dst, *args, **kwargs):
            _step(f"{name} {os.fspath(dst)}")
            return operation(src, dst, *args, **kwargs)

        return watched

    _module, _names = _functions[_stage]
    _module = importlib.import_module(_module)
    for _name in _names:
        setattr(_module, _name, _stage_function(getattr(_module, _name)))
    for _name in ("replace", "rename", "link"):
        setattr(os, _name, _file_step(_name, getattr(os, _name)))
    if _stage == "audit-load":  # inside the audit database's transaction, its rows inserted
        from negminer.audit import loader

        _histogram = loader.score_histogram

        def _in_transaction(*args, **kwargs):
            _step("audit-transaction")
            return _histogram(*args, **kwargs)

        loader.score_histogram = _in_transaction
"""


class KillPoint(NamedTuple):
    stage: str
    before: str  # pattern of the step (``enter FUNCTION``, ``replace|rename|link PATH``) to stop before
    nth: int  # its Nth match inside the stage
    published: bool = False  # the killed run had published its version already


KILL_POINTS = {
    # anchors and docs tables in place, the pairs table written but not yet
    "read": KillPoint("read", r"^replace .*/\.work/.*\.parquet$", 3),
    # the first shard stored, the second one's vectors in place but not its keys (so not visible)
    "embed": KillPoint("embed", r"^replace .*\.keys\.npy$", 2),
    # the index file in place, its completion marker not
    "index": KillPoint("index", r"^replace ", 2),
    # the shard's part and its marker in place, the merged candidate table not
    "search": KillPoint("search", r"^replace ", 3),
    # the judges fitted, the first shard's parts in place, the second shard's first one not
    "curate": KillPoint("curate", r"^replace (?!.*\.arrow$)", 4),  # not the memory-mapped copies of texts and ids
    # the shards' parts in place, being merged: one merged view in place, the next not
    "select": KillPoint("select", r"^replace .*/\.work/[^/]+/(selected|triplets|scored)\.parquet$", 2),
    # the version being staged: the first of its files placed, the second not
    "write": KillPoint("write", r"^link .*/\.staging-", 2),
    # the version renamed into place, LATEST not yet pointed at it
    "write-latest": KillPoint("write", r"^replace .*/LATEST$", 1),
    # the version published; the audit database's transaction under way (its rows inserted)
    "audit-load": KillPoint("audit-load", r"^audit-transaction$", 1, published=True),
    # the version published and loaded; the run's report being made
    "report": KillPoint("report", r"^enter run_report$", 1, published=True),
}


@pytest.fixture(scope="module")
def setup(tiny_inputs: dict[str, Path], tmp_path_factory, prefect_harness) -> dict:
    """The tiny inputs (40 pairs, 100 docs), 16-text shards, sharded curation, the hook, and the
    session's Prefect server (a killed run leaves it running, as it would a shared server)."""
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path_factory.mktemp("crash")
    (folder / "config.yaml").write_text(
        "embed:\n  max_seq_length: 64\n  chunk_size: 16\nmine:\n  num_negatives: 2\n"
        "curate:\n  fit_anchors: 12\n  shard_anchors: 8\n"
    )
    (folder / "hook").mkdir()
    (folder / "hook" / "sitecustomize.py").write_text(KILL_HOOK)
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("NEGMINER_AUDIT_DB", None)
    return {"folder": folder, "env": env, "inputs": tiny_inputs}


def mine_command(setup: dict, out: Path) -> list[str]:
    inputs = setup["inputs"]
    return [
        *(sys.executable, "-m", "negminer", "mine", str(inputs["pairs40"])),
        *("--corpus", str(inputs["corpus"]), "--out", str(out), "--name", NAME),
        *("--config", str(setup["folder"] / "config.yaml")),
    ]


def mine(setup: dict, out: Path) -> Path:
    result = subprocess.run(mine_command(setup, out), env=setup["env"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def mine_and_kill(setup: dict, out: Path, point: KillPoint) -> list[str]:
    """Start `mine` watched at `point`, SIGKILL its process group there; the stage's steps up to it."""
    flag = out.with_suffix(".flag")
    env = {
        **setup["env"],
        "NEGMINER_TEST_KILL_AT": point.stage,
        "NEGMINER_TEST_KILL_BEFORE": point.before,
        "NEGMINER_TEST_KILL_NTH": str(point.nth),
        "NEGMINER_TEST_FLAG": str(flag),
        "PYTHONPATH": os.pathsep.join([str(setup["folder"] / "hook"), setup["env"].get("PYTHONPATH", "")]),
    }
    log = out.with_suffix(".log")
    with log.open("w") as handle:
        proc = subprocess.Popen(
            mine_command(setup, out), env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 900
        while not flag.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                pytest.fail(f"the run ended before the {point} crash point: {log.read_text()[-3000:]}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return flag.with_suffix(".flag.log").read_text().splitlines()


def store_shards(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / ".embeddings").glob("*/shard-*.keys.npy")}


def visible_versions(out: Path) -> tuple[str | None, list[str]]:
    """(what LATEST names, the version folders), after checking every one of them is complete."""
    dataset = out / NAME
    versions = sorted(p.name for p in dataset.glob("v[0-9]*"))
    for version in versions:
        assert verify_version(dataset / version) == [], version
    latest = (dataset / LATEST).read_text().strip() if (dataset / LATEST).exists() else None
    assert latest is None or latest in versions, latest
    return latest, versions


def without_volatile(manifest: dict[str, Any], *, store_reused: bool, republished: bool) -> dict[str, Any]:
    """A manifest without ``created_at``; with `republished`, neither its place in the lineage
    (version, parent, changes); the embedding counts as they read when every text was in the
    store already (`store_reused`: the case started from the reference's store)."""
    manifest = {k: v for k, v in manifest.items() if k != "created_at"}
    if republished:
        manifest = {k: v for k, v in manifest.items() if k not in ("version", "parent", "changes")}
    if store_reused:
        embedding = manifest["counts"]["embedding"]
        manifest["counts"] = {
            **manifest["counts"],
            "embedding": {stem: {**c, "embedded": 0, "reused": c["rows"]} for stem, c in embedding.items()},
        }
    return manifest


def assert_same_dataset(
    version: Path, expected: Path, *, store_reused: bool = False, republished: bool = False
) -> None:
    files = sorted(p.name for p in version.iterdir())
    assert files == sorted(p.name for p in expected.iterdir())
    for name in files:
        if name != "manifest.json":
            assert (version / name).read_bytes() == (expected / name).read_bytes(), name
    got, want = (json.loads((v / "manifest.json").read_text()) for v in (version, expected))
    got = without_volatile(got, store_reused=False, republished=republished)
    want = without_volatile(want, store_reused=store_reused, republished=republished)
    assert got == want, differences(got, want)


def differences(got: object, want: object, path: str = "") -> list[str]:
    """Readable paths where two JSON values differ."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for k in sorted(set(got) | set(want)) for d in differences(got.get(k), want.get(k), f"{path}.{k}")]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


@pytest.fixture(scope="module")
def uninterrupted(setup: dict) -> Path:
    version = mine(setup, setup["folder"] / "uninterrupted")
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["counts"]["curation"]["rows_scored"] > 0 and manifest["config"]["curate"]["shard_anchors"] == 8
    assert manifest["counts"]["embedding"]["docs"]["embedded"] == 100
    return version


class Observed(NamedTuple):
    """What one case saw: at the kill, then after the same command again."""

    steps: list[str]  # the stage's steps up to the kill
    at_kill: tuple[str | None, list[str]]  # (LATEST, versions), each visible version verified
    staging_at_kill: bool
    finished: dict[Path, int]  # the stored embedding shards at the kill, and their mtimes
    version: Path  # the rerun's version
    after: tuple[str | None, list[str]]
    shards_after: dict[Path, int]
    staging_after: bool


def crash_and_resume(setup: dict, uninterrupted: Path, case: str) -> Observed:
    point = KILL_POINTS[case]
    out = setup["folder"] / f"killed-{case}"
    if point.stage != "embed":  # the reference run's store: nothing left to embed
        shutil.copytree(uninterrupted.parents[1] / ".embeddings", out / ".embeddings")
    steps = mine_and_kill(setup, out, point)
    at_kill = visible_versions(out)
    staging_at_kill = bool(list((out / NAME).glob(".staging-*")))
    finished = store_shards(out)
    version = mine(setup, out)
    return Observed(
        steps,
        at_kill,
        staging_at_kill,
        finished,
        version,
        visible_versions(out),
        store_shards(out),
        bool(list((out / NAME).glob(".staging-*"))),
    )


@pytest.fixture(scope="module")
def crashed(request, setup: dict, uninterrupted: Path) -> dict[str, Observed | BaseException]:
    """The selected cases run at once, a few at a time: they share nothing but the reference's
    store, which each copies, and the kill lands at a fixed step whatever the load."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]

    def attempt(case: str) -> Observed | BaseException:
        try:
            return crash_and_resume(setup, uninterrupted, case)
        except BaseException as err:  # reported by the case's own test
            return err

    with ThreadPoolExecutor(CONCURRENT_CASES) as pool:
        return dict(zip(selected, pool.map(attempt, selected), strict=True))


@pytest.mark.parametrize(
    "case",
    list(KILL_POINTS),
)
def test_killed_at_any_stage_resumes_to_the_same_bytes(
    crashed: dict[str, Observed | BaseException], uninterrupted: Path, case: str
) -> None:
    point = KILL_POINTS[case]
    seen = crashed[case]
    if isinstance(seen, BaseException):
        raise seen
    store_reused = point.stage != "embed"

    assert seen.steps[0].startswith("enter "), seen.steps
    if point.published:
        assert seen.at_kill == ("v0001", ["v0001"])
        assert_same_dataset(seen.version.parent / "v0001", uninterrupted, store_reused=store_reused)
    elif case == "write-latest":
        assert seen.at_kill == (None, ["v0001"])  # renamed into place complete; LATEST not yet
    else:
        assert seen.at_kill == (None, [])
    assert seen.staging_at_kill == (case == "write")  # the version being staged: hidden
    if point.stage == "embed":
        planned = len(store_shards(uninterrupted.parents[1]))  # anchors + docs in 16-text shards
        assert 1 <= len(seen.finished) < planned

    version = seen.version
    assert version.name == ("v0002" if point.published else "v0001")
    assert seen.after == (version.name, [f"v{i:04d}" for i in range(1, int(version.name[1:]) + 1)])
    assert_same_dataset(version, uninterrupted, store_reused=store_reused, republished=point.published)
    assert all(seen.shards_after[p] == mtime for p, mtime in seen.finished.items())  # stored shards not redone
    assert not seen.staging_after  # a dead writer's staging folder was removed
