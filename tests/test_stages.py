"""The stages as plain functions: publish_stage publishes once per run, retried or not.

The stages before it run for real (read → search → select) on 40 sample pairs, with seeded
random vectors in place of the model, so these tests stay fast.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import PipelineConfig
from negminer.storage.versions import latest_version, list_versions, read_manifest, verify_version, write_version

CONFIG = PipelineConfig.from_dict({"mine": {"search_depth": 20, "num_negatives": 3}})


@pytest.fixture
def refs(random_vector_run, tmp_path: Path) -> dict[str, Any]:
    """What the flow hands publish_stage: the stage references of one run, and its work folder."""
    work, read, embed = random_vector_run(tmp_path, CONFIG)
    search = stages.search_stage(work, config=CONFIG.mine.retrieval, index_config=CONFIG.index)
    curate = stages.curate_stage(work, search, config=CONFIG.curate.model_copy(update={"enabled": False}))
    select = stages.select_stage(work, curate, config=CONFIG.mine.selection)
    return {
        "work_dir": work,
        "refs": stages.StageRefs(read=read, embed=embed, search=search, curate=curate, select=select),
    }


def write(refs: dict[str, Any], root: Path) -> Path:
    return Path(stages.publish_stage(refs["work_dir"], root, "toy", config=CONFIG, refs=refs["refs"]))


def fail_once(monkeypatch, target: Any, attribute: str, *, when: Any = lambda *args: True) -> None:
    """Make `target.attribute` raise ENOSPC on its first call that `when` accepts."""
    original = getattr(target, attribute)
    failed = []

    def failing(*args, **kwargs):
        if not failed and when(*args):
            failed.append(True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attribute, failing)


def published(refs: dict[str, Any]) -> list[str]:
    return [Path(v).name for v in json.loads((refs["work_dir"] / "published.json").read_text())["versions"]]


def test_a_retry_after_the_version_was_published_returns_it(refs, tmp_path, monkeypatch):
    import negminer.stages.publish as publish

    fail_once(monkeypatch, publish, "write_marker", when=lambda path, content: path.name == "published.json")
    with pytest.raises(OSError, match="No space left"):
        write(refs, tmp_path / "out")
    assert list_versions(tmp_path / "out" / "toy") == ["v0001"]

    version = write(refs, tmp_path / "out")  # the task's retry

    assert version == tmp_path / "out" / "toy" / "v0001"
    assert list_versions(tmp_path / "out" / "toy") == ["v0001"] and verify_version(version) == []
    assert published(refs) == ["v0001"]


def test_a_retry_after_pruning_failed_does_not_record_the_version_twice(refs, tmp_path, monkeypatch):
    import negminer.storage.retention as retention

    fail_once(monkeypatch, retention, "prune_work_dirs")
    with pytest.raises(OSError, match="No space left"):
        write(refs, tmp_path / "out")

    version = write(refs, tmp_path / "out")

    assert version.name == "v0001" and list_versions(tmp_path / "out" / "toy") == ["v0001"]
    assert published(refs) == ["v0001"]


def test_a_retry_after_publishing_failed_publishes(refs, tmp_path, monkeypatch):
    import negminer.storage.versions as versions

    fail_once(monkeypatch, versions, "_publish")
    with pytest.raises(Exception, match="No space left"):
        write(refs, tmp_path / "out")
    assert list_versions(tmp_path / "out" / "toy") == []

    assert write(refs, tmp_path / "out").name == "v0001"
    assert published(refs) == ["v0001"]


def test_a_retry_after_latest_failed_makes_the_published_version_latest(refs, tmp_path, monkeypatch):
    import negminer.storage.versions as versions

    fail_once(monkeypatch, versions, "write_bytes_atomic", when=lambda path, data: Path(path).name == "LATEST")
    with pytest.raises(Exception, match="No space left"):
        write(refs, tmp_path / "out")
    assert list_versions(tmp_path / "out" / "toy") == ["v0001"] and latest_version(tmp_path / "out" / "toy") is None

    assert write(refs, tmp_path / "out").name == "v0001"
    assert latest_version(tmp_path / "out" / "toy") == "v0001"


def test_a_rerun_after_another_version_became_latest_publishes_anew(refs, tmp_path, monkeypatch):
    import negminer.storage.retention as retention

    fail_once(monkeypatch, retention, "prune_work_dirs")
    with pytest.raises(OSError, match="No space left"):
        write(refs, tmp_path / "out")
    first = tmp_path / "out" / "toy" / "v0001"
    manifest = {"work": read_manifest(first)["work"]}
    write_version(tmp_path / "out", "toy", tables={"pairs": pq.read_table(first / "pairs.parquet")}, manifest=manifest)

    assert write(refs, tmp_path / "out").name == "v0003"
    assert latest_version(tmp_path / "out" / "toy") == "v0003"


def test_a_new_run_after_a_complete_write_publishes_a_new_version(refs, tmp_path):
    first = write(refs, tmp_path / "out")
    second = write(refs, tmp_path / "out")
    assert (first.name, second.name) == ("v0001", "v0002")
    assert published(refs) == ["v0001", "v0002"]


def test_only_a_store_other_than_the_default_changes_the_work_folder(sample_dir: Path, tmp_path: Path) -> None:
    root, pairs = tmp_path / "out", sample_dir / "pairs.parquet"

    def work(store: Path | None, config: PipelineConfig = CONFIG) -> Path:
        return stages.work_dir_for(root, "d", pairs=pairs, corpus=None, config=config, store=store)

    assert work(None) == work(root / ".embeddings") == work(tmp_path / "out" / "." / ".embeddings")
    assert work(tmp_path / "a") != work(None) and work(tmp_path / "a") != work(tmp_path / "b")
