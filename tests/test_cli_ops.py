"""The operations commands `negminer runs` and `negminer gc` (real CLI, synthetic versions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from negminer.storage.versions import list_versions, write_version


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "negminer", *args], capture_output=True, text=True, env=os.environ, timeout=120
    )


def make_versions(root: Path, n: int) -> None:
    counts = {
        "pairs": 10,
        "triplet_rows": 30,
        "negatives": 30,
        "rejected_rows": 1,
        "embedding": {"anchors": {"embedded": 10}, "docs": {"embedded": 5}},
    }
    for i in range(n):
        changes = None if i == 0 else {"triplets": {"added": i, "removed": 0, "kept": 30}}
        write_version(
            root, "nightly", tables={"triplets": pa.table({"a": [i]})}, manifest={"counts": counts, "changes": changes}
        )


def test_runs_lists_versions_with_counts(tmp_path: Path) -> None:
    make_versions(tmp_path, 3)
    result = run_cli("runs", "nightly", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "version",
        "created_at",
        "parent",
        "pairs",
        "triplets",
        "negatives",
        "rejected",
        "embedded",
        "+rows",
        "-rows",
    ]
    assert lines[1].split()[0] == "v0001" and lines[1].split()[2:] == ["-", "10", "30", "30", "1", "15", "-", "-"]
    assert lines[3].split()[:2] == ["v0003", "*"] and lines[3].split()[-2:] == ["2", "0"]


def test_runs_of_unknown_dataset_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("runs", "nope", "--out", str(tmp_path))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "no complete versions" in result.stderr


def test_runs_refuses_a_name_that_points_outside_the_root(tmp_path: Path) -> None:
    write_version(tmp_path, "ds", tables={"pairs": pa.table({"x": [1]})}, manifest={})
    result = run_cli("runs", "..", "--out", str(tmp_path / "ds"))
    assert result.returncode == 1 and "dataset name '..'" in result.stderr


def test_gc_keeps_the_newest(tmp_path: Path) -> None:
    make_versions(tmp_path, 4)
    dry = run_cli("gc", "nightly", "--keep", "2", "--out", str(tmp_path), "--dry-run")
    assert dry.returncode == 0 and "would remove 2 version(s) v0001 v0002" in dry.stdout
    assert list_versions(tmp_path / "nightly") == ["v0001", "v0002", "v0003", "v0004"]

    result = run_cli("gc", "nightly", "--keep", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("removed 2 version(s) v0001 v0002")
    assert list_versions(tmp_path / "nightly") == ["v0003", "v0004"]

    bad = run_cli("gc", "nightly", "--keep", "0", "--out", str(tmp_path))
    assert bad.returncode == 1 and "--keep must be at least 1" in bad.stderr


def test_a_usage_error_is_shown_as_one_and_exits_2(tmp_path: Path) -> None:
    result = run_cli("runs", "ds", "--out", str(tmp_path), "--debug")
    assert result.returncode == 2 and "No such option: --debug" in result.stderr
    assert "rerun with --debug" not in result.stderr and "NoSuchOption" not in result.stderr
