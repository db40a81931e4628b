"""Publish stage: the dataset version (manifest last, LATEST replaced) from the stages' files.

The manifest depends only on the inputs, the config and the parent (no timings), so a
resumed run writes the bytes an uninterrupted one would. ``changes`` compares the version
with its parent, the LATEST version when it is written. This run's work folder is kept as
the cache of the next run; the dataset's other idle work folders are removed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, NamedTuple

from negminer.config import PipelineConfig
from negminer.mining.allocator import releases_memory
from negminer.stages.refs import (
    AuditLoadRef,
    CurateRef,
    EmbedRef,
    ReadRef,
    SearchRef,
    SecondDenseRef,
    SelectRef,
    StoreRef,
)
from negminer.stages.workdir import read_marker, write_marker
from negminer.storage.atomic import sha256_file

logger = logging.getLogger(__name__)

PUBLISHING = "publishing.json"  # in the work folder while publish_stage publishes: {"parent": ...}
PUBLISHED = "published.json"  # the versions published from the work folder: {"versions": [...]}
WORK_TABLES = ("rejects", "anchors", "docs", "pairs")


class StageRefs(NamedTuple):
    """What the publish stage records: every earlier stage's reference."""

    read: ReadRef
    embed: EmbedRef
    search: SearchRef
    curate: CurateRef
    select: SelectRef
    second: SecondDenseRef | None = None  # the dense2 source, when mine.sources names it


@releases_memory
def publish_stage(work_dir: str | Path, root: str | Path, name: str, *, config: PipelineConfig, refs: StageRefs) -> str:
    """Publish the dataset version and prune older work folders; the version's path.

    Idempotent: a call that follows one which published its version and then failed (a task
    retry) returns that version instead of publishing the same content again.
    """
    from negminer.storage.retention import prune_work_dirs
    from negminer.storage.versions import latest_version, remove_stale_staging, write_version

    work_dir = Path(work_dir)
    dataset_dir = Path(root) / name
    remove_stale_staging(dataset_dir)
    files = version_files(work_dir, refs)  # published as they are (no reading back into memory)
    version = _published_before(work_dir, dataset_dir, files)
    if version is None:
        parent = latest_version(dataset_dir)
        manifest = _version_manifest(work_dir, root, name, config=config, refs=refs)
        manifest["changes"] = _changes(dataset_dir, parent, files, refs.select.score_quantiles)
        # The intent goes first: a retry after the publish below finds the version by it.
        write_marker(work_dir / PUBLISHING, {"parent": parent})
        version = write_version(root, name, tables={}, files=files, manifest=manifest, parent=parent)
    _record_published(work_dir, version)
    prune_work_dirs(dataset_dir, keep={work_dir.name})
    (work_dir / PUBLISHING).unlink(missing_ok=True)
    return str(version)


def version_files(work_dir: Path, refs: StageRefs) -> dict[str, str | Path]:
    """Table stem -> file of every table the version publishes."""
    files: dict[str, str | Path] = {"triplets": refs.select.triplets, "candidates": refs.select.selected}
    files.update(refs.select.tables)
    if refs.curate.flagged is not None:
        files["flagged"] = refs.curate.flagged
    files.update({stem: work_dir / f"{stem}.parquet" for stem in WORK_TABLES if stem not in files})
    return files


def _version_manifest(
    work_dir: Path, root: str | Path, name: str, *, config: PipelineConfig, refs: StageRefs
) -> dict[str, Any]:
    """The manifest of a mined version, but for ``changes`` and what write_version fills in."""
    published = read_marker(work_dir / PUBLISHED)
    return {
        "name": name,
        "config": config.model_dump(mode="json"),
        "model": refs.embed.model.to_json(),
        "inputs": refs.read.inputs.to_json(),
        "counts": {
            **refs.read.counts,
            **refs.select.counts,
            **refs.curate.counts,
            "embedding": _embedding_counts(refs.embed, published=published),
            "candidates": refs.search.rows,
        },
        "score_quantiles": refs.select.score_quantiles,
        "noise": refs.curate.noise,  # cleanlab's estimated label noise
        "policies": _policies(config, refs),
        "selection": _selection(config, refs),
        "search_depth": refs.search.depth,
        "index": refs.search.index,
        **({"sources": _sources(refs, root)} if refs.search.sources else {}),
        "work": {"key": work_dir.name},
        "embedding_store": _store_entry(refs.embed.store, root),
        "diagnostics": _diagnostics(work_dir, config=config, refs=refs),
    }


def _selection(config: PipelineConfig, refs: StageRefs) -> dict[str, Any]:
    """Selection's figures, and what ``strategy: auto`` chose (negminer.mining.auto_strategy)."""
    from negminer.mining.auto_strategy import auto_choice

    choice = auto_choice(config.mine.selection, refs.curate.noise)
    return {**refs.select.selection, **({"auto_strategy": choice} if choice else {})}


def _policies(config: PipelineConfig, refs: StageRefs) -> dict[str, str] | None:
    """The curation actions applied, ``auto`` resolved from the estimate (None without curation)."""
    from negminer.curation.policy import applied_actions

    return applied_actions(config.curate, refs.curate.noise) if config.curate.enabled else None


def _diagnostics(work_dir: Path, *, config: PipelineConfig, refs: StageRefs) -> dict[str, Any] | None:
    """Alignment, uniformity and the unlabelled-positive share (negminer.evaluation.diagnostics)."""
    from negminer.evaluation.diagnostics import version_diagnostics

    if not config.diagnostics.enabled:
        return None
    judged = refs.curate.flagged is not None and not (refs.curate.counts.get("curation") or {}).get("skipped")
    return version_diagnostics(
        work_dir,
        candidates=refs.select.selected,
        flagged=refs.curate.flagged if judged else None,
        config=config.diagnostics,
    )


def _changes(
    dataset_dir: Path, parent: str | None, files: dict[str, str | Path], score_quantiles: dict[str, Any]
) -> dict[str, Any] | None:
    """The new version's ``changes`` against `parent` (None for a first version)."""
    from negminer.storage.lineage import version_changes

    return version_changes(dataset_dir / parent if parent else None, files=files, score_quantiles=score_quantiles)


def _published_before(work_dir: Path, dataset_dir: Path, files: dict[str, str | Path]) -> Path | None:
    """The version an earlier call published from this work folder before it failed, if any.

    That call left its intent (:data:`PUBLISHING`); its version is one newer than the parent
    it names, with that parent, this work key and files of the same sha256.
    """
    from negminer.storage.versions import list_versions, read_manifest

    intent = read_marker(work_dir / PUBLISHING)
    if intent is None:
        return None
    wanted: dict[str, str] | None = None
    for version in reversed(list_versions(dataset_dir)):
        if version == intent["parent"]:
            break
        manifest = read_manifest(dataset_dir / version)
        if manifest.get("parent") != intent["parent"] or (manifest.get("work") or {}).get("key") != work_dir.name:
            continue
        wanted = wanted or {f"{stem}.parquet": sha256_file(path) for stem, path in files.items()}
        if {fname: info["sha256"] for fname, info in manifest.get("files", {}).items()} == wanted:
            return _as_latest(dataset_dir, version, parent=intent["parent"])
    return None


def _as_latest(dataset_dir: Path, version: str, *, parent: str | None) -> Path | None:
    """`version` (published by an earlier attempt) once it is LATEST, or None to publish anew.

    The attempt may have died between the rename into place and writing LATEST: then LATEST
    still names its parent and is moved on. If another version has become LATEST since, this
    call is no retry of the last publish, and a new version is published as before.
    """
    from negminer.storage.versions import finish_publish

    if not finish_publish(dataset_dir, version, parent=parent):
        return None
    logger.info("%s was published by an earlier attempt of this write; not publishing it again", version)
    return dataset_dir / version


def _record_published(work_dir: Path, version: Path) -> None:
    """Add `version` to the work folder's ``published.json`` (once)."""
    published = (read_marker(work_dir / PUBLISHED) or {}).get("versions", [])
    if str(version) not in published:
        write_marker(work_dir / PUBLISHED, {"versions": [*published, str(version)]})


def _embedding_counts(embed: EmbedRef, *, published: dict[str, Any] | None) -> dict[str, Any]:
    """Texts embedded for this version: none when a version of the same inputs was published before."""
    counts = embed.manifest_counts()
    if not published:
        return counts
    return {stem: {**c, "embedded": 0, "reused": c["rows"]} for stem, c in counts.items()}


def _sources(refs: StageRefs, root: str | Path) -> dict[str, Any]:
    """The search's ``sources``, with the store shards of the dense2 model's vectors (gc keeps or frees them)."""
    sources = dict(refs.search.sources or {})
    if refs.second is not None and "dense2" in sources:
        sources["dense2"] = {**sources["dense2"], "embedding_store": _store_entry(refs.second.store, root)}
    return sources


def _store_entry(store: StoreRef | None, root: str | Path) -> dict[str, Any] | None:
    """The store a version's vectors came from: its path relative to ROOT when inside it."""
    if store is None:
        return None
    path = Path(store.root)
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path(root).resolve())
    return {"path": str(path), "folder": store.folder, "shards": list(store.shards)}


@releases_memory
def audit_load_stage(version_dir: str | Path, root: str | Path) -> AuditLoadRef:
    """Load the version's flagged pairs into the audit database (``ROOT/audit.db`` by default)."""
    import os

    from negminer.audit.db import default_url, open_db
    from negminer.audit.loader import load_version

    if not (Path(version_dir) / "flagged.parquet").exists():
        return AuditLoadRef(loaded=0)
    engine = open_db(os.environ.get("NEGMINER_AUDIT_DB") or default_url(root))
    try:
        return AuditLoadRef(loaded=load_version(engine, version_dir).rows, version=str(version_dir))
    finally:
        engine.dispose()
