"""Retention: gc keeps the newest versions and LATEST, removes embeddings only removed versions
used, never a shard another dataset or a running flow needs; stale staging and idle work folders."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from negminer.errors import StorageError
from negminer.storage.retention import collect_garbage, prune_work_dirs, work_lock
from negminer.storage.versions import LATEST, list_versions, remove_stale_staging, write_version

FOLDER = "model-fp"


def make_shard(root: Path, name: str) -> None:
    folder = root / ".embeddings" / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".keys.npy", ".vec.npy", ".len.npy"):
        np.save(folder / f"{name}{suffix}", np.zeros((2, 4), np.float32))


def shards(root: Path) -> set[str]:
    return {p.name.removesuffix(".keys.npy") for p in (root / ".embeddings" / FOLDER).glob("*.keys.npy")}


def version(root: Path, name: str, shard_names: list[str], work: str, dense2: list[str] | None = None) -> str:
    (root / name / ".work" / work).mkdir(parents=True, exist_ok=True)
    entry = {"path": ".embeddings", "folder": FOLDER, "shards": shard_names}
    manifest = {"embedding_store": entry, "work": {"key": work}}
    if dense2 is not None:  # the second model's vectors, as the publish stage records them
        second = {"path": ".embeddings", "folder": FOLDER, "shards": dense2}
        manifest["sources"] = {"sources": ["dense", "dense2"], "dense2": {"embedding_store": second}}
    return write_version(root, name, tables={"triplets": pa.table({"a": [1]})}, manifest=manifest).name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for shard in ("shard-a", "shard-b", "shard-c", "shard-d", "shard-other", "shard-unnamed"):
        make_shard(tmp_path, shard)
    version(tmp_path, "ds", ["shard-a", "shard-b"], "w1")
    version(tmp_path, "ds", ["shard-b", "shard-c", "shard-other"], "w2")
    version(tmp_path, "ds", ["shard-b", "shard-d"], "w3")
    version(tmp_path, "other", ["shard-other"], "x1")
    return tmp_path


def test_gc_removes_old_versions_and_only_their_embeddings(root: Path) -> None:
    result = collect_garbage(root, "ds", keep=1)

    assert result.versions == ["v0001", "v0002"]
    assert list_versions(root / "ds") == ["v0003"]
    # a and c were used only by removed versions; b and d by v0003; "other" by another dataset
    assert shards(root) == {"shard-b", "shard-d", "shard-other", "shard-unnamed"}
    assert not list((root / ".embeddings" / FOLDER).glob("shard-a.*"))
    assert sorted(result.work_dirs) == ["w1", "w2"]
    assert sorted(p.name for p in (root / "ds" / ".work").iterdir()) == ["w3"]
    assert result.bytes_freed > 0


def test_gc_removes_the_evaluations_of_the_versions_it_removes(root: Path) -> None:
    from negminer.evaluation.records import evaluations_dir

    for name in ("v0001", "v0003"):
        folder = evaluations_dir(root / "ds" / name)
        folder.mkdir(parents=True)
        (folder / "record.json").write_text("{}")

    assert collect_garbage(root, "ds", keep=1, dry_run=True).evaluations == ["v0001"]
    assert (root / "ds" / "evaluations" / "v0001").is_dir()
    result = collect_garbage(root, "ds", keep=1)

    assert result.evaluations == ["v0001"]
    assert sorted(p.name for p in (root / "ds" / "evaluations").iterdir()) == ["v0003"]


def test_gc_dry_run_removes_nothing(root: Path) -> None:
    result = collect_garbage(root, "ds", keep=1, dry_run=True)

    assert result.versions == ["v0001", "v0002"] and len(result.shards) == 2
    assert list_versions(root / "ds") == ["v0001", "v0002", "v0003"]
    assert len(shards(root)) == 6


def test_gc_never_removes_latest(root: Path) -> None:
    (root / "ds" / LATEST).write_text("v0001\n")  # rolled back by hand

    collect_garbage(root, "ds", keep=1)

    assert list_versions(root / "ds") == ["v0001", "v0003"]
    assert "shard-a" in shards(root) and "shard-c" not in shards(root)


def test_gc_keeps_work_folders_in_use(root: Path) -> None:
    with work_lock(root / "ds" / ".work" / "w1"):
        result = collect_garbage(root, "ds", keep=1)
    assert result.work_dirs == ["w2"]
    assert (root / "ds" / ".work" / "w1").is_dir()


def test_gc_keeps_shards_a_running_flow_has_assembled(root: Path) -> None:
    work = root / "ds" / ".work" / "running"
    work.mkdir()
    (work / "embed.json").write_text(
        json.dumps({"store": {"root": str(root / ".embeddings"), "folder": FOLDER, "shards": ["shard-a"]}})
    )
    with work_lock(work):
        collect_garbage(root, "ds", keep=1)
    assert "shard-a" in shards(root) and "shard-c" not in shards(root)


def test_gc_frees_and_keeps_the_second_model_s_shards_like_the_first_s(tmp_path: Path) -> None:
    for shard in ("first-1", "second-1", "first-2", "second-2", "second-running"):
        make_shard(tmp_path, shard)
    version(tmp_path, "ds", ["first-1"], "w1", dense2=["second-1", "second-running"])
    version(tmp_path, "ds", ["first-2"], "w2", dense2=["second-2"])
    running = tmp_path / "ds" / ".work" / "running" / "dense2-abc"
    running.mkdir(parents=True)
    store = {"root": str(tmp_path / ".embeddings"), "folder": FOLDER, "shards": ["second-running"]}
    (running / "embed.json").write_text(json.dumps({"store": store}))
    make_shard(tmp_path, "second-running")
    with work_lock(running.parent):
        result = collect_garbage(tmp_path, "ds", keep=1)
    assert result.versions == ["v0001"]
    assert shards(tmp_path) == {"first-2", "second-2", "second-running"}


def test_gc_rejects_keep_below_one(root: Path) -> None:
    with pytest.raises(StorageError, match="--keep"):
        collect_garbage(root, "ds", keep=0)
    with pytest.raises(StorageError, match="no such dataset"):
        collect_garbage(root, "missing", keep=1)


@pytest.mark.parametrize("name", ["..", "../ds", "/tmp"])
def test_gc_refuses_a_name_that_points_outside_the_root(root: Path, name: str) -> None:
    from negminer.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset name"):
        collect_garbage(root / "ds", name, keep=1)


def test_prune_skips_kept_and_busy_work_folders(tmp_path: Path) -> None:
    for key in ("a", "b", "c"):
        (tmp_path / "ds" / ".work" / key).mkdir(parents=True)
    with work_lock(tmp_path / "ds" / ".work" / "b"):
        removed = prune_work_dirs(tmp_path / "ds", keep={"a"})
    assert [p.name for p in removed] == ["c"]
    assert sorted(p.name for p in (tmp_path / "ds" / ".work").iterdir()) == ["a", "b"]


def test_stale_staging_of_dead_writers_is_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead = tmp_path / f".staging-{host}-999999999-0123456789ab"  # above any pid_max: no such process
    alive = tmp_path / f".staging-{host}-{os.getpid()}-ba9876543210"
    for path in (dead, alive):
        path.mkdir()
        (path / "triplets.parquet").write_bytes(b"partial")

    assert remove_stale_staging(tmp_path) == [dead]
    assert alive.is_dir() and not dead.exists()


def test_gc_holds_the_idle_folders_until_they_are_removed(root: Path, monkeypatch) -> None:
    """A run that starts on an idle folder while gc is deciding waits, then works in a fresh folder."""
    import negminer.storage.retention as retention

    work = root / "ds" / ".work" / "w1"
    locked, gc_done, seen = threading.Event(), threading.Event(), []

    def run() -> None:
        with work_lock(work):
            locked.set()
            gc_done.wait(10)
            seen.append((work / ".lock").is_file())
            seen.append(prune_work_dirs(root / "ds", keep={"w3"}))

    shards_used = retention._shards_used

    def start_a_run_meanwhile(*args, **kwargs):
        if not seen:  # the first call only
            seen.append("started")
            threading.Thread(target=run, daemon=True).start()
            locked.wait(0.5)  # set at once unless gc holds the folder
        return shards_used(*args, **kwargs)

    monkeypatch.setattr(retention, "_shards_used", start_a_run_meanwhile)
    result = collect_garbage(root, "ds", keep=1)
    gc_done.set()
    assert locked.wait(10)
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "w1" in result.work_dirs
    assert seen == ["started", True, []]  # the run's folder exists, and pruning sees it busy


def test_a_run_whose_folder_is_removed_while_it_waits_for_the_lock_makes_it_again(tmp_path: Path) -> None:
    work = tmp_path / "ds" / ".work" / "k"
    work.mkdir(parents=True)
    locked = threading.Event()

    def remove_holding_the_lock() -> None:  # what prune and gc do
        with (work / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            locked.set()
            time.sleep(0.3)  # the run below opens the lock file and waits
            shutil.rmtree(work)

    remover = threading.Thread(target=remove_holding_the_lock)
    remover.start()
    locked.wait(5)
    with work_lock(work):
        remover.join()
        assert (work / ".lock").is_file()
        assert prune_work_dirs(tmp_path / "ds", keep=set()) == [] and work.is_dir()


def test_prune_skips_a_folder_removed_after_it_was_listed(tmp_path: Path, monkeypatch) -> None:
    for key in ("a", "b", "c"):
        (tmp_path / "ds" / ".work" / key).mkdir(parents=True)
    is_dir = Path.is_dir

    def removed_right_after_the_check(self: Path) -> bool:
        answer = is_dir(self)
        if self.name == "b" and answer:
            shutil.rmtree(self)  # another prune or gc
        return answer

    monkeypatch.setattr(Path, "is_dir", removed_right_after_the_check)
    removed = prune_work_dirs(tmp_path / "ds", keep={"a"})
    assert [p.name for p in removed] == ["c"]
