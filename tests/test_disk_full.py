"""A full disk at each writing stage: one clear line, LATEST unchanged, a rerun completes.

The stages run in this process (:func:`negminer.stages.run_stages`, no Prefect) on the tiny
inputs, into a copy of a dataset whose LATEST is v0001 (mined from 40 pairs); the failing run
mines 42 pairs, so every stage works in a new work folder. Inside the stage under test, the
Nth file the stage puts in place (``os.replace``, ``os.rename``, ``os.link``: the last step of
every atomic write, of a version's staged files and of its rename into place) fails with
ENOSPC, as its ``write()`` or ``fsync()`` would: with no file name, so that negminer must say
which file it was writing. The disk stays full (every later such write of the stage fails
too) until the rerun, which gives the bytes of a run that never failed.

One real `negminer mine` process checks the whole way to the terminal: exit code 1, one
``error:`` line naming the path and the cause, nothing published.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.errors import NegminerError, StorageError
from negminer.stages import runner
from negminer.storage.atomic import atomic_path, atomic_write, naming_failures, write_bytes_atomic
from negminer.storage.versions import latest_version, list_versions, verify_version

NAME = "full"
CONFIG = {
    "embed": {"max_seq_length": 64, "chunk_size": 16},
    "mine": {"num_negatives": 2},
    "curate": {"fit_anchors": 12, "shard_anchors": 8},
}
NO_SPACE = os.strerror(errno.ENOSPC)
TEMP_FILES = re.compile(r"^\..*(\.tmp|\.partial.*)$")


class FullAt(NamedTuple):
    stage: str  # the runner's stage function it fails in
    before: str  # pattern of the file put in place (``replace|rename|link PATH``) that fails first
    nth: int  # its Nth match inside the stage


FULL_AT = {
    # the anchors table in place, the docs table cannot be
    "read": FullAt("read_stage", r"^replace .*\.parquet$", 2),
    # the new texts' shard: its vectors in place, its keys (which make it visible) cannot be
    "embed": FullAt("embed_stage", r"^replace .*\.keys\.npy$", 1),
    # the index file cannot be put in place
    "index": FullAt("index_stage", r"^replace .*\.faiss$", 1),
    # the shard's part in place, the merged candidate table cannot be
    "search": FullAt("search_merge_stage", r"^replace .*/candidates-d\d+-[0-9a-f]+\.parquet$", 1),
    # the shards judged, the merged curated table (a staged writer) cannot be written
    "curate": FullAt("curate_stage", r"^replace .*/curated\.parquet$", 1),
    # the selected candidates in place, the training view (a staged writer) cannot be
    "select": FullAt("select_stage", r"^replace .*/triplets\.parquet$", 1),
    # the version's files staged, its manifest cannot be written
    "write": FullAt("publish_stage", r"^replace .*/\.staging-[^/]*/manifest\.json$", 1),
    # the version renamed into place, LATEST cannot be replaced
    "write-latest": FullAt("publish_stage", r"^replace .*/LATEST$", 1),
}


def config() -> PipelineConfig:
    return PipelineConfig.from_dict(CONFIG)


class Base(NamedTuple):
    root: Path  # the datasets root
    store: Path  # its runs' embedding store


@pytest.fixture(scope="module")
def base(tiny_inputs: dict[str, Path], tmp_path_factory) -> Base:
    """A datasets root whose dataset's LATEST is v0001, mined from the 40 pairs, and its store.

    Every case mines into copies of both, so each has the new pairs' texts to embed (one
    shard), embedded in the same batches as in the reference run: the same vectors.
    """
    folder = tmp_path_factory.mktemp("full-base")
    pairs, corpus = tiny_inputs["pairs40"], tiny_inputs["corpus"]
    runner.run_stages(pairs, folder / "root", NAME, corpus=corpus, config=config(), store=folder / "store")
    return Base(folder / "root", folder / "store")


def copy_of(base: Base, folder: Path) -> Base:
    shutil.copytree(base.root, folder / "root")
    shutil.copytree(base.store, folder / "store")
    return Base(folder / "root", folder / "store")


def mine_42(tiny_inputs: dict[str, Path], into: Base) -> Path:
    pairs, corpus = tiny_inputs["pairs42"], tiny_inputs["corpus"]
    return Path(runner.run_stages(pairs, into.root, NAME, corpus=corpus, config=config(), store=into.store))


@pytest.fixture(scope="module")
def reference(base: Base, tiny_inputs: dict[str, Path], tmp_path_factory) -> Path:
    """v0002 (the 42 pairs) mined into a copy of `base` without any failure."""
    return mine_42(tiny_inputs, copy_of(base, tmp_path_factory.mktemp("full-reference")))


@contextmanager
def disk_full(monkeypatch: pytest.MonkeyPatch, at: FullAt) -> Iterator[list[str]]:
    """Fail the files `at` names with ENOSPC inside the stage; yields the files put in place there."""
    seen: list[str] = []
    depth, matches = [0], [0]

    def step(line: str) -> None:
        if not depth[0]:
            return
        seen.append(line)
        if re.search(at.before, line):
            matches[0] += 1
            if matches[0] >= at.nth:  # and the disk stays full
                raise OSError(errno.ENOSPC, NO_SPACE)

    def file_step(name: str, operation: Callable[..., Any]) -> Callable[..., Any]:
        def watched(src, dst, *args, **kwargs):
            step(f"{name} {os.fspath(dst)}")
            return operation(src, dst, *args, **kwargs)

        return watched

    stage = getattr(runner, at.stage)

    def watched_stage(*args, **kwargs):
        depth[0] += 1
        try:
            return stage(*args, **kwargs)
        finally:
            depth[0] -= 1

    with monkeypatch.context() as patch:
        patch.setattr(runner, at.stage, watched_stage)
        for name in ("replace", "rename", "link"):
            patch.setattr(os, name, file_step(name, getattr(os, name)))
        yield seen


def error_line(err: BaseException, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> list[str]:
    """What `negminer mine` prints on stderr, and its exit code, when its run raises `err`."""
    import negminer.flows.mine
    from negminer import cli

    def failing_run(*args: Any, **kwargs: Any) -> str:
        raise err

    monkeypatch.setattr(negminer.flows.mine, "run_mine", failing_run)
    monkeypatch.setattr(sys, "argv", ["negminer", "mine", "pairs.parquet", "--out", "out", "--name", NAME])
    # what the CLI sets up for its process, undone after the test: its environment, its log handler
    for key, default in [*cli._OFFLINE_ENV.items(), ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")]:
        monkeypatch.setenv(key, os.environ.get(key, default))
    monkeypatch.setenv("NEGMINER_DEBUG", "")
    ours = logging.getLogger("negminer")
    monkeypatch.setattr(ours, "handlers", list(ours.handlers))
    monkeypatch.setattr(ours, "propagate", ours.propagate)
    monkeypatch.setattr(ours, "level", ours.level)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    return capsys.readouterr().err.splitlines()


def temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob(".*") if TEMP_FILES.match(p.name)]


def data_files(version: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(version.iterdir()) if p.name != "manifest.json"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    list(FULL_AT),
)
def test_a_full_disk_at_any_writing_stage_fails_cleanly_and_a_rerun_completes(
    case: str,
    base: Base,
    reference: Path,
    tiny_inputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    at = FULL_AT[case]
    root, store = here = copy_of(base, tmp_path)
    dataset = root / NAME

    with disk_full(monkeypatch, at) as seen, pytest.raises((OSError, NegminerError)) as failed:
        mine_42(tiny_inputs, here)

    assert any(re.search(at.before, line) for line in seen), seen  # it failed where meant to
    causes = [failed.value, failed.value.__cause__]
    assert any(isinstance(c, OSError) and c.errno == errno.ENOSPC for c in causes), repr(failed.value)
    lines = error_line(failed.value, monkeypatch, capsys)
    print(f"{case}: {lines}")
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert NO_SPACE in lines[0] and "rerun the same command" in lines[0], lines
    named = re.findall(r"(/[^\s:;'()]+)", lines[0])
    assert any(Path(p).is_relative_to(root) or Path(p).is_relative_to(store) for p in named), lines
    # nothing half-written is visible: LATEST and the versions as they were, or one more complete version
    assert latest_version(dataset) == "v0001"
    assert list_versions(dataset) == (["v0001", "v0002"] if case == "write-latest" else ["v0001"])
    assert all(verify_version(dataset / v) == [] for v in list_versions(dataset))
    assert sorted(p.name for p in dataset.glob("v*")) == list_versions(dataset)
    assert not list(dataset.glob(".staging-*"))
    assert temp_files(root, store) == []

    version = mine_42(tiny_inputs, here)  # space freed

    assert version == dataset / "v0002" and latest_version(dataset) == "v0002"
    assert list_versions(dataset) == ["v0001", "v0002"] and verify_version(version) == []
    assert data_files(version) == data_files(reference)
    assert temp_files(root, store) == []


def test_a_truncated_index_file_is_an_error_not_a_finished_stage(random_vector_run, tmp_path, monkeypatch):
    """FAISS only prints "close error" when its last buffered bytes cannot be written (a disk
    that fills up as the file is closed): the stage must not record the truncated index."""
    import faiss

    cfg = PipelineConfig.from_dict({"mine": {"search_depth": 20}})
    work, _, _ = random_vector_run(tmp_path, cfg)
    write_index = faiss.write_index

    def losing_the_last_bytes(index, path):
        write_index(index, path)
        os.truncate(path, os.path.getsize(path) - 100)

    monkeypatch.setattr(faiss, "write_index", losing_the_last_bytes)
    with pytest.raises(StorageError, match=r"index-.*\.faiss: the index file written is incomplete"):
        stages.index_stage(work, config=cfg.index, retrieval=cfg.mine.retrieval)
    assert not list(work.glob("index-*"))  # neither the file nor a marker

    monkeypatch.setattr(faiss, "write_index", write_index)
    index = stages.index_stage(work, config=cfg.index, retrieval=cfg.mine.retrieval)
    assert faiss.read_index(index.path).ntotal == index.rows


def test_a_failed_write_names_the_file_not_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")

    def full(handle):
        handle.write(b"half")
        raise OSError(errno.ENOSPC, NO_SPACE)

    with pytest.raises(OSError) as failed:
        atomic_write(target, full)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]

    with pytest.raises(OSError) as failed, atomic_path(tmp_path / "index.faiss") as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, NO_SPACE, str(tmp))  # names the temp file
    assert failed.value.filename == str(tmp_path / "index.faiss")
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_a_failed_write_keeps_its_kind_and_other_files_names(tmp_path: Path, monkeypatch) -> None:
    readonly = PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(readonly))
    with pytest.raises(PermissionError) as failed:  # not retried by the flow, as before
        write_bytes_atomic(tmp_path / "a.json", b"{}")
    assert failed.value.filename == str(tmp_path / "a.json")
    monkeypatch.undo()

    source = tmp_path / "missing-part.parquet"
    with pytest.raises(FileNotFoundError) as failed:  # a file read while writing keeps its own name
        atomic_write(tmp_path / "merged.parquet", lambda handle: handle.write(source.read_bytes()))
    assert failed.value.filename == str(source)

    with pytest.raises(OSError) as failed, naming_failures(tmp_path / "work"):
        raise OSError(errno.ENOSPC, NO_SPACE)
    assert failed.value.filename == str(tmp_path / "work")


def test_a_memory_mapped_output_claims_its_space_before_writing(tmp_path: Path, monkeypatch) -> None:
    """anchors.npy/docs.npy are written through memory maps: on a full disk a sparse file's page
    fault kills the process (SIGBUS); the space is claimed first, so it is an OSError naming the file."""
    from negminer.mining.embedding import fetch_to_file
    from negminer.mining.precomputed import _NpyRows
    from negminer.storage.embedding_store import EmbeddingStore
    from negminer.textkeys import content_hashes

    claimed: list[int] = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, offset, size: claimed.append(size))
    _NpyRows(tmp_path / "rows.npy", 3, 4)
    assert claimed == [128 + 3 * 4 * 4]  # the .npy header, then the rows

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(os, "posix_fallocate", full)
    store = EmbeddingStore(tmp_path / "store", model_fingerprint="m", dim=4, dtype="float32")
    hashes = content_hashes(["a", "b"])
    store.add(hashes, np.ones((2, 4), np.float32))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError) as failed:
        fetch_to_file(hashes, out / "docs.npy", store=store)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(out / "docs.npy"))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "err",
    [
        OSError(errno.ENOSPC, NO_SPACE, "/data/out/x/.work/k/docs.parquet"),
        OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/out/x/.work/k/docs.parquet"),
        StorageError("/data/out/x: cannot write dataset version ([Errno 28] No space left on device: '/data/out/x/m')"),
    ],
    ids=["ENOSPC", "EROFS", "StorageError"],
)
def test_the_cli_prints_one_line_naming_the_file_and_the_cause(err, monkeypatch, capsys) -> None:
    if isinstance(err, StorageError):
        err.__cause__ = OSError(errno.ENOSPC, NO_SPACE, "/data/out/x/m")
    lines = error_line(err, monkeypatch, capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: /data/out/x"), lines
    assert os.strerror(err.errno if isinstance(err, OSError) else errno.ENOSPC) in lines[0]
    assert "rerun the same command to resume" in lines[0]


FULL_HOOK = """\
import errno
import os

if os.environ.get("NEGMINER_TEST_FULL"):
    _replace = os.replace

    def _full(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith(os.environ["NEGMINER_TEST_FULL"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _replace(src, dst, *args, **kwargs)

    os.replace = _full
"""


@pytest.mark.slow
def test_the_mine_command_on_a_full_disk(base: Base, tiny_inputs: dict[str, Path], tmp_path: Path) -> None:
    """A real `negminer mine` (Prefect flow, retries) whose training view cannot be written."""
    root, store = copy_of(base, tmp_path)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(FULL_HOOK)
    (tmp_path / "config.yaml").write_text(
        "embed:\n  max_seq_length: 64\n  chunk_size: 16\nmine:\n  num_negatives: 2\n"
        "curate:\n  fit_anchors: 12\n  shard_anchors: 8\n"
    )
    command = [
        *(
            sys.executable,
            "-m",
            "negminer",
            "mine",
            str(tiny_inputs["pairs42"]),
            "--corpus",
            str(tiny_inputs["corpus"]),
        ),
        *("--out", str(root), "--name", NAME, "--config", str(tmp_path / "config.yaml"), "--store", str(store)),
    ]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for variable in ("PREFECT_API_URL", "NEGMINER_AUDIT_DB", "NEGMINER_DEBUG"):
        env.pop(variable, None)
    hooked = {**env, "NEGMINER_TEST_FULL": "/triplets.parquet", "PYTHONPATH": str(tmp_path / "hook")}

    failed = subprocess.run(command, env=hooked, capture_output=True, text=True, timeout=900)

    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert lines[-1].startswith("error: ") and NO_SPACE in lines[-1], lines[-20:]
    assert f"{root}/{NAME}/.work/" in lines[-1] and "rerun the same command to resume" in lines[-1]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert latest_version(root / NAME) == "v0001" and list_versions(root / NAME) == ["v0001"]
    assert failed.stdout.strip() == ""

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    version = Path(rerun.stdout.strip().splitlines()[-1])
    assert version == root / NAME / "v0002" and latest_version(root / NAME) == "v0002"
    assert verify_version(version) == []
    assert pq.read_table(version / "triplets.parquet").num_rows > 0
    assert np.isfinite(pq.read_table(version / "candidates.parquet").column("score").to_numpy()).all()
