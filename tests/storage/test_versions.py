"""Dataset versions: layout, numbering, all-or-nothing writes, verification, concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import negminer.storage.versions as versions
from negminer.errors import StorageError
from negminer.storage.versions import (
    latest_version,
    list_versions,
    read_manifest,
    verify_version,
    write_version,
)


def tables(tag: str = "x") -> dict[str, pa.Table]:
    return {
        "triplets": pa.table(
            {
                "anchor": [f"{tag} q1", f"{tag} q2"],
                "positive": ["p1", "p2"],
                "negative": ["n1", "n2"],
            }
        ),
        "candidates": pa.table({"anchor_idx": pa.array([0, 0, 1], pa.int32()), "score": [0.9, 0.5, 0.7]}),
    }


def leftovers(dataset_dir: Path) -> list[str]:
    return [p.name for p in dataset_dir.iterdir() if p.name.startswith(".staging")]


def test_layout_of_a_version(tmp_path):
    t = tables()
    path = write_version(tmp_path, "scifact", tables=t, manifest={"name": "scifact", "counts": {"in": 2}})
    assert path == tmp_path / "scifact" / "v0001"
    assert sorted(p.name for p in path.iterdir()) == [
        "candidates.parquet",
        "manifest.json",
        "triplets.parquet",
    ]
    for stem, table in t.items():
        assert pq.read_table(path / f"{stem}.parquet").equals(table)
    assert (tmp_path / "scifact" / "LATEST").read_text().strip() == "v0001"
    assert latest_version(tmp_path / "scifact") == "v0001"
    assert list_versions(tmp_path / "scifact") == ["v0001"]


def test_manifest_records_rows_and_real_sha256(tmp_path):
    t = tables()
    path = write_version(tmp_path, "ds", tables=t, manifest={"name": "ds", "counts": {"in": 2}})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest == read_manifest(path)
    assert manifest["version"] == "v0001"
    assert manifest["parent"] is None
    assert manifest["name"] == "ds" and manifest["counts"] == {"in": 2}
    assert isinstance(manifest["schema_version"], int)
    assert "negminer_version" in manifest and "created_at" in manifest
    assert set(manifest["files"]) == {"triplets.parquet", "candidates.parquet"}
    for stem, table in t.items():
        info = manifest["files"][f"{stem}.parquet"]
        data = (path / f"{stem}.parquet").read_bytes()
        assert info["rows"] == table.num_rows
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert verify_version(path) == []


def test_versions_are_numbered_and_chain_their_parents(tmp_path):
    paths = [write_version(tmp_path, "ds", tables=tables(str(i)), manifest={}) for i in range(3)]
    assert [p.name for p in paths] == ["v0001", "v0002", "v0003"]
    assert [read_manifest(p)["parent"] for p in paths] == [None, "v0001", "v0002"]
    assert latest_version(tmp_path / "ds") == "v0003"
    assert list_versions(tmp_path / "ds") == ["v0001", "v0002", "v0003"]
    # each version keeps its own tables
    assert pq.read_table(paths[0] / "triplets.parquet").column("anchor")[0].as_py() == "0 q1"
    assert pq.read_table(paths[2] / "triplets.parquet").column("anchor")[0].as_py() == "2 q1"


def test_explicit_parent_is_recorded(tmp_path):
    write_version(tmp_path, "ds", tables=tables(), manifest={})
    write_version(tmp_path, "ds", tables=tables(), manifest={})
    third = write_version(tmp_path, "ds", tables=tables(), manifest={}, parent="v0001")
    assert read_manifest(third)["parent"] == "v0001"
    assert latest_version(tmp_path / "ds") == "v0003"


def test_version_parent_and_created_at_are_filled_in_even_if_the_manifest_has_them(tmp_path):
    # e.g. a refilter that starts from the parent's manifest
    write_version(tmp_path, "ds", tables=tables(), manifest={})
    stale = read_manifest(tmp_path / "ds" / "v0001")
    path = write_version(tmp_path, "ds", tables=tables(), manifest=stale)
    manifest = read_manifest(path)
    assert manifest["version"] == "v0002"
    assert manifest["parent"] == "v0001"


def test_files_are_filled_in_even_if_the_manifest_has_them(tmp_path):
    path = write_version(tmp_path, "ds", tables=tables(), manifest={"files": {"bogus.parquet": {}}})
    assert set(read_manifest(path)["files"]) == {"triplets.parquet", "candidates.parquet"}


def test_no_staging_folder_is_left_behind(tmp_path):
    for _ in range(2):
        write_version(tmp_path, "ds", tables=tables(), manifest={})
    dataset_dir = tmp_path / "ds"
    assert leftovers(dataset_dir) == []
    assert sorted(p.name for p in dataset_dir.iterdir() if not p.name.startswith(".")) == [
        "LATEST",
        "v0001",
        "v0002",
    ]


def fail_after_first_file(monkeypatch):
    real = versions.write_parquet_atomic
    calls = []

    def flaky(path, table):
        calls.append(path)
        if len(calls) > 1:
            Path(path).write_bytes(b"half a file")
            raise OSError("disk full")
        return real(path, table)

    monkeypatch.setattr(versions, "write_parquet_atomic", flaky)
    return calls


def test_failed_table_write_publishes_nothing(tmp_path, monkeypatch):
    write_version(tmp_path, "ds", tables=tables("old"), manifest={})
    dataset_dir = tmp_path / "ds"
    before = sorted(p.name for p in dataset_dir.iterdir())
    calls = fail_after_first_file(monkeypatch)
    with pytest.raises(StorageError, match="disk full"):
        write_version(tmp_path, "ds", tables=tables("new"), manifest={})
    assert len(calls) == 2
    assert latest_version(dataset_dir) == "v0001"
    assert list_versions(dataset_dir) == ["v0001"]
    assert not (dataset_dir / "v0002").exists()
    assert sorted(p.name for p in dataset_dir.iterdir()) == before
    assert leftovers(dataset_dir) == []
    assert verify_version(dataset_dir / "v0001") == []
    # the next successful write takes the next number
    monkeypatch.undo()
    assert write_version(tmp_path, "ds", tables=tables(), manifest={}).name == "v0002"


def test_failed_first_version_leaves_no_latest(tmp_path, monkeypatch):
    fail_after_first_file(monkeypatch)
    with pytest.raises(StorageError):
        write_version(tmp_path, "ds", tables=tables(), manifest={})
    assert latest_version(tmp_path / "ds") is None
    assert list_versions(tmp_path / "ds") == []
    assert leftovers(tmp_path / "ds") == []


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "sp ace"])
def test_bad_dataset_names_are_refused(tmp_path, name):
    with pytest.raises(StorageError):
        write_version(tmp_path, name, tables=tables(), manifest={})


def test_verify_detects_a_tampered_file(tmp_path):
    path = write_version(tmp_path, "ds", tables=tables(), manifest={})
    other = pa.table({"anchor": ["evil"], "positive": ["p"], "negative": ["n"]})
    pq.write_table(other, path / "triplets.parquet")
    problems = verify_version(path)
    assert len(problems) == 1
    assert "triplets.parquet" in problems[0] and "sha256" in problems[0]


def test_verify_detects_a_missing_file(tmp_path):
    path = write_version(tmp_path, "ds", tables=tables(), manifest={})
    (path / "candidates.parquet").unlink()
    problems = verify_version(path)
    assert len(problems) == 1
    assert "candidates.parquet" in problems[0] and "missing" in problems[0]


def test_verify_detects_a_row_count_mismatch(tmp_path):
    path = write_version(tmp_path, "ds", tables=tables(), manifest={})
    manifest = read_manifest(path)
    manifest["files"]["triplets.parquet"]["rows"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_version(path)
    assert len(problems) == 1 and "triplets.parquet" in problems[0]


def test_verify_without_manifest(tmp_path):
    path = write_version(tmp_path, "ds", tables=tables(), manifest={})
    (path / "manifest.json").unlink()
    assert len(verify_version(path)) == 1
    assert list_versions(tmp_path / "ds") == []
    with pytest.raises(StorageError):
        read_manifest(path)


def test_a_corrupt_manifest_is_a_storage_error_naming_the_file(tmp_path):
    path = write_version(tmp_path, "ds", tables=tables(), manifest={})
    (path / "manifest.json").write_text('{"version": "v0001", ')
    with pytest.raises(StorageError, match=r"manifest\.json.*line 1 column"):
        read_manifest(path)
    problems = verify_version(path)
    assert len(problems) == 1 and str(path / "manifest.json") in problems[0]


def _writer(root: str, writer: int, barrier) -> None:
    barrier.wait()
    for i in range(3):
        write_version(
            root,
            "shared",
            tables={"triplets": pa.table({"writer": [writer], "i": [i]})},
            manifest={"writer": writer, "i": i},
        )


def test_concurrent_writers_get_distinct_complete_versions(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    dataset_dir = tmp_path / "shared"
    names = list_versions(dataset_dir)
    assert names == [f"v{n:04d}" for n in range(1, 7)]
    seen = set()
    for name in names:
        assert verify_version(dataset_dir / name) == []
        manifest = read_manifest(dataset_dir / name)
        assert manifest["version"] == name
        seen.add((manifest["writer"], manifest["i"]))
        row = pq.read_table(dataset_dir / name / "triplets.parquet").to_pylist()[0]
        assert (row["writer"], row["i"]) == (manifest["writer"], manifest["i"])
    assert seen == {(w, i) for w in range(2) for i in range(3)}
    assert latest_version(dataset_dir) == "v0006"
    assert [read_manifest(dataset_dir / n)["parent"] for n in names] == [None, *names[:-1]]
    assert leftovers(dataset_dir) == []
