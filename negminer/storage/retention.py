"""Retention: what a dataset still needs, and removing the rest.

* Work folders (``ROOT/NAME/.work/<key>/``) hold a run's stage outputs; the newest one is
  kept after a run as the cache of the next (same inputs: nothing recomputed; grown inputs:
  its index is extended). A running flow holds a shared lock on ``<key>/.lock``
  (:func:`work_lock`); pruning and gc take an exclusive one without waiting, skip busy
  folders and hold it until the folder is removed (a run that was waiting for it then makes
  the folder again).
* :func:`collect_garbage` keeps the newest `keep` complete versions and always the LATEST
  one, and removes the other versions, the embedding-store shards that only removed versions
  used (every manifest and work folder under ROOT is consulted, so datasets sharing a store
  keep theirs), work folders no kept version names and no run holds, and staging folders of
  dead writers. Shards that no manifest names (a run still embedding) are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from negminer.errors import StorageError
from negminer.storage.versions import (
    check_dataset_name,
    dataset_lock,
    latest_version,
    list_versions,
    read_manifest,
    remove_stale_staging,
)

logger = logging.getLogger(__name__)

WORK = ".work"
EVALUATIONS = "evaluations"  # ROOT/NAME/evaluations/VERSION: the evaluations of a version, beside it
_SHARD_SUFFIXES = (".keys.npy", ".vec.npy", ".len.npy")  # keys first: it makes a shard visible


_LOCK_TRIES = 100


@contextlib.contextmanager
def work_lock(work_dir: str | Path) -> Iterator[None]:
    """Hold a shared lock on `work_dir` while a run uses it, so pruning skips it.

    Pruning and gc remove a folder while they hold its lock exclusively: a run that opened the
    lock file before then gets its lock on a removed file, so it makes the folder again and
    locks that one.
    """
    work_dir = Path(work_dir)
    for _ in range(_LOCK_TRIES):
        handle = _open_lock(work_dir, create=True)
        if handle is None:
            continue
        fcntl.flock(handle, fcntl.LOCK_SH)
        if _is_current(handle, work_dir):
            break
        handle.close()
    else:
        raise StorageError(f"{work_dir}: removed {_LOCK_TRIES} times while taking its lock; is a gc looping?")
    with handle:
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock(work_dir: Path, *, create: bool) -> IO[str] | None:
    """The open lock file of `work_dir`, or None when the folder is gone (removed meanwhile)."""
    if create:
        work_dir.mkdir(parents=True, exist_ok=True)
    try:
        return (work_dir / ".lock").open("a")
    except FileNotFoundError:
        return None


def _is_current(handle: IO[str], work_dir: Path) -> bool:
    """Whether the locked file is still `work_dir`'s lock file, not one removed with its folder."""
    try:
        on_disk = os.stat(work_dir / ".lock")
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _lock_if_idle(work_dir: Path) -> IO[str] | None:
    """`work_dir`'s lock file, locked exclusively; None when a run holds it or the folder is gone.

    Closing the file releases the lock: keep it open until the folder is removed.
    """
    handle = _open_lock(work_dir, create=False)
    if handle is None:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.info("work folder %s is in use; kept", work_dir)
        handle.close()
        return None
    if not _is_current(handle, work_dir):
        handle.close()
        return None
    return handle


def prune_work_dirs(dataset_dir: str | Path, *, keep: set[str]) -> list[Path]:
    """Remove the work folders of `dataset_dir` whose key is not in `keep` and no run holds."""
    work_root = Path(dataset_dir) / WORK
    removed = []
    for path in sorted(work_root.iterdir()) if work_root.is_dir() else ():
        if path.is_dir() and path.name not in keep and _remove_if_idle(path):
            removed.append(path)
    if removed:
        logger.info("removed %d work folder(s) of %s", len(removed), dataset_dir)
    return removed


def _remove_if_idle(path: Path) -> bool:
    handle = _lock_if_idle(path)
    if handle is None:
        return False
    with handle:
        # Renamed first, so a run that starts now makes a new folder rather than writing into this one.
        trash = path.with_name(f".removing-{path.name}-{uuid.uuid4().hex[:8]}")
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    return True


class GcResult(NamedTuple):
    versions: list[str]
    shards: list[str]
    work_dirs: list[str]
    staging: list[str]
    bytes_freed: int
    evaluations: list[str]  # the removed versions that had evaluations beside them


def collect_garbage(root: str | Path, name: str, *, keep: int, dry_run: bool = False) -> GcResult:
    """Remove old versions of ``ROOT/NAME``, their evaluations and the embeddings only they used.

    Args:
        root: the datasets root folder.
        name: the dataset name.
        keep: how many of the newest complete versions to keep (≥ 1); LATEST is always kept.
        dry_run: report what would be removed without removing it.

    Returns:
        GcResult with the removed version names, shard files, work folders, staging folders
        and the bytes they held.

    Example:
        >>> collect_garbage("datasets", "nightly", keep=7).versions  # doctest: +SKIP
        ['v0001', 'v0002']
    """
    check_dataset_name(name)  # "..", "/x" or "a/b" would point gc outside ROOT
    if keep < 1:
        raise StorageError(f"--keep must be at least 1 (got {keep}); the LATEST version is never removed")
    root, dataset_dir = Path(root), Path(root) / name
    if not dataset_dir.is_dir():
        raise StorageError(f"{dataset_dir}: no such dataset")
    # The idle work folders stay locked until they are removed: a run starting on one waits.
    with dataset_lock(dataset_dir), contextlib.ExitStack() as held:
        doomed = _doomed_versions(dataset_dir, keep)
        doomed_paths = [dataset_dir / v for v in doomed]
        work = _idle_work_dirs(dataset_dir, exclude=set(doomed_paths), held=held)
        still_used = _shards_used(
            root,
            _all_manifest_dirs(root, exclude=set(doomed_paths)),
            work_dirs=[w for w in _all_work_dirs(root) if w not in work],
        )
        shards = _shards_used(root, doomed_paths) - still_used
        evaluations = [p for p in (dataset_dir / EVALUATIONS / v for v in doomed) if p.is_dir()]
        paths = [*doomed_paths, *evaluations, *(f for s in sorted(shards) for f in _shard_files(s)), *work]
        freed = sum(_size(p) for p in paths)
        if not dry_run:
            _remove(paths)
    staging = [] if dry_run else remove_stale_staging(dataset_dir)
    return GcResult(
        versions=doomed,
        shards=sorted(str(s) for s in shards),
        work_dirs=sorted(p.name for p in work),
        staging=[p.name for p in staging],
        bytes_freed=freed,
        evaluations=[p.name for p in evaluations],
    )


def _doomed_versions(dataset_dir: Path, keep: int) -> list[str]:
    versions = list_versions(dataset_dir)
    kept = set(versions[-keep:]) | {latest_version(dataset_dir)}
    return [v for v in versions if v not in kept]


def _all_manifest_dirs(root: Path, *, exclude: set[Path]) -> list[Path]:
    dirs = []
    for dataset in (p for p in root.iterdir() if p.is_dir()):
        dirs += [dataset / v for v in list_versions(dataset) if dataset / v not in exclude]
    return dirs


def _all_work_dirs(root: Path) -> list[Path]:
    return [p for p in root.glob(f"*/{WORK}/*") if p.is_dir()]


def _shards_used(root: Path, version_dirs: list[Path], *, work_dirs: list[Path] = ()) -> set[Path]:
    """The store shard paths (without suffix) that these versions and work folders name."""
    used: set[Path] = set()
    for version_dir in version_dirs:
        manifest = read_manifest(version_dir)
        second = ((manifest.get("sources") or {}).get("dense2") or {}).get("embedding_store")
        used |= _store_entry_shards(root, manifest.get("embedding_store")) | _store_entry_shards(root, second)
    for work_dir in work_dirs:
        for embed in (work_dir / "embed.json", *work_dir.glob("dense2-*/embed.json")):  # stages/second_dense.py
            if embed.exists():
                used |= _store_entry_shards(root, json.loads(embed.read_text()).get("store"))
    return used


def _store_entry_shards(root: Path, entry: dict[str, Any] | None) -> set[Path]:
    if not entry:
        return set()
    store = Path(entry.get("path") or entry.get("root", ""))
    folder = (store if store.is_absolute() else root / store) / entry["folder"]
    return {folder / shard for shard in entry.get("shards", [])}


def _shard_files(shard: Path) -> list[Path]:
    return [shard.with_name(shard.name + suffix) for suffix in _SHARD_SUFFIXES]


def _idle_work_dirs(dataset_dir: Path, *, exclude: set[Path], held: contextlib.ExitStack) -> list[Path]:
    """Work folders that no kept version names and no running flow holds, locked until `held` closes."""
    kept_versions = [dataset_dir / v for v in list_versions(dataset_dir) if dataset_dir / v not in exclude]
    needed = {(read_manifest(v).get("work") or {}).get("key") for v in kept_versions}
    work_root = dataset_dir / WORK
    idle = []
    for path in sorted(work_root.iterdir()) if work_root.is_dir() else ():
        if path.is_dir() and path.name not in needed and (handle := _lock_if_idle(path)) is not None:
            held.enter_context(handle)
            idle.append(path)
    return idle


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _remove(paths: list[Path]) -> None:
    """Remove files and folders; a folder is first renamed away so readers never see it half gone."""
    for path in paths:
        if path.is_dir():
            trash = path.with_name(f".removing-{path.name}")
            path.rename(trash)
            shutil.rmtree(trash)
        else:
            path.unlink(missing_ok=True)
        logger.info("removed %s", path)
