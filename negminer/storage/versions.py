"""Dataset versions: ``ROOT/NAME/VERSION/`` complete or absent, and ``ROOT/NAME/LATEST``.

A version is assembled in a hidden staging folder, its manifest (with every file's rows and
sha256) written last, then the folder is renamed into place and ``LATEST`` replaced, both
under a lock on ``ROOT/NAME/.lock`` so concurrent writers get distinct versions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from negminer import __version__
from negminer.errors import ConfigError, StorageError
from negminer.storage.atomic import sha256_file, write_bytes_atomic, write_parquet_atomic

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_STAGING_RE = re.compile(r"^\.staging-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{12}$")


@contextlib.contextmanager
def _locked(dataset_dir: Path) -> Iterator[None]:
    with (dataset_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dataset_lock(dataset_dir: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock that publishing a version holds (``ROOT/NAME/.lock``); retention takes it too."""
    return _locked(Path(dataset_dir))


def remove_stale_staging(dataset_dir: str | Path) -> list[Path]:
    """Remove staging folders left by writers on this host that died (killed mid-write).

    A staging folder is named after its writer's host and process id; one whose process is
    gone can never be published, so removing it frees the space and nothing else.
    """
    dataset_dir = Path(dataset_dir)
    removed = []
    for path in dataset_dir.glob(".staging-*") if dataset_dir.is_dir() else ():
        match = _STAGING_RE.match(path.name)
        if match and match["host"] == socket.gethostname() and not _alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d stale staging folder(s) in %s", len(removed), dataset_dir)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dataset_name_problem(name: str) -> str | None:
    """Why `name` cannot name a dataset folder under ROOT, or None when it can."""
    if _NAME_RE.fullmatch(name):
        return None
    return f"dataset name {name!r} must be letters, digits, '.', '_' or '-'"


def check_dataset_name(name: str) -> None:
    """Raise ConfigError unless `name` can name a dataset: entry points call it before any work.

    Example:
        >>> check_dataset_name("scifact-v2")
    """
    if problem := dataset_name_problem(name):
        raise ConfigError(problem)


def list_versions(dataset_dir: str | Path) -> list[str]:
    """Complete versions (those with a manifest), oldest first."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        return []
    found = [p.name for p in dataset_dir.iterdir() if _VERSION_RE.match(p.name) and (p / MANIFEST).exists()]
    return sorted(found, key=lambda name: int(name[1:]))


def latest_version(dataset_dir: str | Path) -> str | None:
    path = Path(dataset_dir) / LATEST
    return path.read_text().strip() if path.exists() else None


def read_manifest(version_dir: str | Path) -> dict[str, Any]:
    """The version's manifest; StorageError when it is missing or not valid JSON."""
    path = Path(version_dir) / MANIFEST
    if not path.exists():
        raise StorageError(f"{version_dir}: not a complete dataset version (no {MANIFEST})")
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise StorageError(f"{path}: corrupt manifest ({err})") from err


def write_version(
    root: str | Path,
    name: str,
    *,
    tables: dict[str, pa.Table],
    manifest: dict[str, Any],
    parent: str | None = None,
    files: dict[str, str | Path] | None = None,
) -> Path:
    """Write `tables` as Parquet files plus the manifest as a new version, atomically.

    Args:
        root: the datasets root folder.
        name: dataset name (a folder under root).
        tables: file stem -> table, e.g. ``{"triplets": t, "candidates": c}``.
        manifest: content of manifest.json; ``files``, ``version``, ``parent`` and
            ``created_at`` are filled in here.
        parent: the version this one derives from; default the current LATEST.
        files: file stem -> an existing Parquet file to publish as it is (hard-linked when
            on the same file system, else copied), for tables too large to hold in memory.

    Returns:
        Path of the new version folder.

    Example:
        >>> write_version("datasets", "scifact", tables={"triplets": t}, manifest={})  # doctest: +SKIP
    """
    if problem := dataset_name_problem(name):
        raise StorageError(problem)
    dataset_dir = Path(root) / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    staging = dataset_dir / f".staging-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        written = {f"{stem}.parquet": _write_table(staging / f"{stem}.parquet", t) for stem, t in tables.items()}
        for stem, source in (files or {}).items():
            written[f"{stem}.parquet"] = _place_file(Path(source), staging / f"{stem}.parquet")
        return _publish(dataset_dir, staging, {**manifest, "files": written}, parent)
    except OSError as err:
        raise StorageError(f"{dataset_dir}: cannot write dataset version ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_table(path: Path, table: pa.Table) -> dict[str, Any]:
    write_parquet_atomic(path, table)
    return {"rows": table.num_rows, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _place_file(source: Path, target: Path) -> dict[str, Any]:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    rows = pq.ParquetFile(target).metadata.num_rows
    return {"rows": rows, "sha256": sha256_file(target), "bytes": target.stat().st_size}


def _publish(dataset_dir: Path, staging: Path, manifest: dict[str, Any], parent: str | None) -> Path:
    with _locked(dataset_dir):
        existing = [int(p.name[1:]) for p in dataset_dir.iterdir() if _VERSION_RE.match(p.name)]
        version = f"v{max(existing, default=0) + 1:04d}"
        full = {
            **manifest,
            "schema_version": SCHEMA_VERSION,
            "negminer_version": __version__,
            "version": version,
            "parent": parent if parent is not None else latest_version(dataset_dir),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_bytes_atomic(staging / MANIFEST, json.dumps(full, indent=2, sort_keys=True).encode())
        target = dataset_dir / version
        staging.rename(target)
        _set_latest(dataset_dir, version)
    logger.info("wrote dataset version %s", target)
    return target


def _set_latest(dataset_dir: Path, version: str) -> None:
    write_bytes_atomic(dataset_dir / LATEST, f"{version}\n".encode())


def finish_publish(dataset_dir: str | Path, version: str, *, parent: str | None) -> bool:
    """Make `version`, already in place, LATEST if LATEST still names `parent` (a publish that
    died between the rename and LATEST); whether `version` is LATEST afterwards."""
    dataset_dir = Path(dataset_dir)
    with _locked(dataset_dir):
        latest = latest_version(dataset_dir)
        if latest == parent:
            _set_latest(dataset_dir, version)
            return True
        return latest == version


def verify_version(version_dir: str | Path) -> list[str]:
    """Problems with a version (missing files, row or sha256 mismatch); empty if sound."""
    version_dir = Path(version_dir)
    try:
        manifest = read_manifest(version_dir)
    except StorageError as err:
        return [str(err)]
    problems = []
    for fname, info in manifest.get("files", {}).items():
        path = version_dir / fname
        if not path.exists():
            problems.append(f"{fname}: missing")
            continue
        if sha256_file(path) != info["sha256"]:
            problems.append(f"{fname}: sha256 differs from the manifest")
        elif pq.ParquetFile(path).metadata.num_rows != info["rows"]:
            problems.append(f"{fname}: row count differs from the manifest")
    return problems
