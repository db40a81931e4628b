"""Crash safety: a real `negminer mine` process killed with SIGKILL during embedding, curation,
selection and writing, then rerun, gives the same dataset bytes as an uninterrupted run.

The killed run gets a test-only ``sitecustomize`` (on its PYTHONPATH, never in the package)
that sleeps after each stored embedding shard or each staged version file, or inside each
curation shard's verdicts or the selection (marking a flag file when it gets there), so the
kill lands inside the stage deterministically; the test kills when the stage's first files,
or its flag, appear. Curation runs in shards here (a sample of anchors fits the judges).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

NAME = "crash"
SLOW_HOOK = """\
import os
import time

_stage = os.environ.get("NEGMINER_TEST_SLOW_AT")
if _stage == "embed":
    from negminer.storage import embedding_store

    _add = embedding_store.EmbeddingStore.add

    def _slow_add(self, *args, **kwargs):
        _add(self, *args, **kwargs)
        time.sleep(1.0)

    embedding_store.EmbeddingStore.add = _slow_add
elif _stage == "write":
    from negminer.storage import versions

    def _slowed(write):
        def slow_write(*args, **kwargs):
            out = write(*args, **kwargs)
            time.sleep(1.0)
            return out

        return slow_write

    # tables written into the version, and work files published into it by link or copy
    versions._write_table = _slowed(versions._write_table)
    versions._place_file = _slowed(versions._place_file)
elif _stage in ("curate", "select"):
    from pathlib import Path

    if _stage == "curate":
        from negminer.curation import judges as _module

        _name = "judge"
    else:
        from negminer.mining import streaming as _module

        _name = "derive_files"
    _inner = getattr(_module, _name)

    def _flagged_and_slow(*args, **kwargs):
        Path(os.environ["NEGMINER_TEST_FLAG"]).touch()
        time.sleep(1.0)
        return _inner(*args, **kwargs)

    setattr(_module, _name, _flagged_and_slow)
"""


@pytest.fixture(scope="module")
def setup(sample_dir: Path, tmp_path_factory) -> dict:
    """25 sample pairs, 100 docs, a config with 16-text shards, a private PREFECT_HOME, the hook."""
    folder = tmp_path_factory.mktemp("crash")
    pairs = pq.read_table(sample_dir / "pairs.parquet").slice(0, 25)
    corpus = pq.read_table(sample_dir / "corpus.parquet").to_pylist()
    wanted = set(pairs.column("positive_id").to_pylist())
    rows = [r for r in corpus if r["id"] in wanted] + [r for r in corpus if r["id"] not in wanted]
    pq.write_table(pairs, folder / "pairs.parquet")
    pq.write_table(pa.Table.from_pylist(sorted(rows[:100], key=lambda r: int(r["id"]))), folder / "corpus.parquet")
    (folder / "config.yaml").write_text(
        "embed:\n  max_seq_length: 64\n  chunk_size: 16\nmine:\n  num_negatives: 2\n"
        "curate:\n  fit_anchors: 12\n  shard_anchors: 8\n"
    )
    (folder / "hook").mkdir()
    (folder / "hook" / "sitecustomize.py").write_text(SLOW_HOOK)
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    return {"folder": folder, "env": env}


def mine_command(setup: dict, out: Path) -> list[str]:
    folder = setup["folder"]
    return [
        sys.executable,
        "-m",
        "negminer",
        "mine",
        str(folder / "pairs.parquet"),
        "--corpus",
        str(folder / "corpus.parquet"),
        "--out",
        str(out),
        "--name",
        NAME,
        "--config",
        str(folder / "config.yaml"),
    ]


def mine(setup: dict, out: Path) -> Path:
    result = subprocess.run(mine_command(setup, out), env=setup["env"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def mine_and_kill(setup: dict, out: Path, *, stage: str, reached: Callable[[], bool]) -> None:
    """Start `mine` slowed at `stage`, SIGKILL its process group once `reached()` is true."""
    env = {
        **setup["env"],
        "NEGMINER_TEST_SLOW_AT": stage,
        "NEGMINER_TEST_FLAG": str(out.with_suffix(".flag")),
        "PYTHONPATH": os.pathsep.join([str(setup["folder"] / "hook"), setup["env"].get("PYTHONPATH", "")]),
    }
    log = out.with_suffix(".log")
    with log.open("w") as handle:
        proc = subprocess.Popen(
            mine_command(setup, out), env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while not reached():
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"the run ended before the {stage} crash point: {log.read_text()[-3000:]}")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def store_shards(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / ".embeddings").glob("*/shard-*.keys.npy")}


def assert_same_dataset(version: Path, expected: Path) -> None:
    files = sorted(p.name for p in version.iterdir())
    assert files == sorted(p.name for p in expected.iterdir())
    for name in files:
        if name != "manifest.json":
            assert (version / name).read_bytes() == (expected / name).read_bytes(), name
    got, want = (json.loads((v / "manifest.json").read_text()) for v in (version, expected))
    for manifest in (got, want):
        manifest.pop("created_at")
    assert got == want, differences(got, want)


def differences(got: object, want: object, path: str = "") -> list[str]:
    """Readable paths where two JSON values differ."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for k in sorted(set(got) | set(want)) for d in differences(got.get(k), want.get(k), f"{path}.{k}")]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def assert_nothing_visible(out: Path) -> None:
    dataset = out / NAME
    assert not (dataset / "LATEST").exists()
    assert not list(dataset.glob("v[0-9]*"))


@pytest.fixture(scope="module")
def uninterrupted(setup: dict) -> Path:
    return mine(setup, setup["folder"] / "uninterrupted")


def test_killed_while_embedding_resumes_to_the_same_bytes(setup: dict, uninterrupted: Path) -> None:
    out = setup["folder"] / "killed-embed"
    mine_and_kill(setup, out, stage="embed", reached=lambda: bool(store_shards(out)))
    assert_nothing_visible(out)
    finished = store_shards(out)
    planned = len(store_shards(setup["folder"] / "uninterrupted"))  # anchors + docs in 16-text shards
    assert 1 <= len(finished) < planned

    version = mine(setup, out)

    after = store_shards(out)
    assert len(after) == planned
    assert all(after[p] == mtime for p, mtime in finished.items())  # finished shards were not redone
    assert_same_dataset(version, uninterrupted)


def test_killed_while_writing_resumes_to_the_same_bytes(setup: dict, uninterrupted: Path) -> None:
    out = setup["folder"] / "killed-write"
    mine_and_kill(setup, out, stage="write", reached=lambda: bool(list((out / NAME).glob(".staging-*/*.parquet"))))
    assert_nothing_visible(out)
    assert list((out / NAME).glob(".staging-*"))

    version = mine(setup, out)

    assert version.name == "v0001"
    assert not list((out / NAME).glob(".staging-*"))  # the dead writer's staging folder was removed
    assert_same_dataset(version, uninterrupted)


@pytest.mark.parametrize("stage", ["curate", "select"])
def test_killed_while_curating_or_selecting_resumes_to_the_same_bytes(
    setup: dict, uninterrupted: Path, stage: str
) -> None:
    out = setup["folder"] / f"killed-{stage}"
    mine_and_kill(setup, out, stage=stage, reached=out.with_suffix(".flag").exists)
    assert_nothing_visible(out)

    version = mine(setup, out)

    assert version.name == "v0001"
    assert_same_dataset(version, uninterrupted)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["counts"]["curation"]["rows_scored"] > 0 and manifest["config"]["curate"]["shard_anchors"] == 8
