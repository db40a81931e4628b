"""Derive a new dataset version from a stored one, without embedding or searching again.

A dataset version keeps every retrieved candidate (``candidates.parquet``) with the anchors,
docs and pairs it refers to, so any strategy can be re-applied to it: :func:`refilter` reads
the version, selects negatives with new settings through the same
:func:`negminer.mining.streaming.derive_files` that ``mine`` uses, and writes a new version
whose manifest names its parent. Retrieval settings (``search_depth``), the input options and
the model are the parent's and cannot change here: that needs a new ``mine`` run.

Files of the parent that selection does not produce (``anchors``, ``docs``, ``pairs``,
``rejects``, curation's ``flagged``, …) are carried over unchanged; curation flags on the
candidate table (``flagged_false_negative``, ``excluded_by_audit``) keep dropping their rows.
The manifest's ``changes`` compare the new version with that parent, and its embedding counts
say nothing was embedded.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import MineConfig, PipelineConfig, read_yaml_sections
from negminer.errors import ConfigError, StorageError
from negminer.storage.atomic import sha256_file
from negminer.storage.lineage import lineage_tables, version_changes
from negminer.storage.versions import MANIFEST, check_dataset_name, read_manifest, verify_version, write_version

logger = logging.getLogger(__name__)

# Files that derive_files writes; every other file of the parent is carried over.
DERIVED_FILES = ("triplets", "candidates", "scored")
REQUIRED_FILES = ("candidates", "anchors", "docs", "pairs")
_RETRIEVAL = ("search_depth", "search_batch_size")
_MANIFEST_OWN = ("files", "version", "parent", "created_at", "schema_version", "negminer_version")


class RefilterResult(NamedTuple):
    path: Path
    counts: dict[str, Any]
    seconds: float


def refilter_config(
    version_dir: str | Path,
    config_path: str | Path | None = None,
    **overrides: Any,
) -> MineConfig:
    """The mine settings for refiltering `version_dir`: a YAML file's ``mine`` section + overrides.

    Retrieval settings come from the parent; every other ``mine`` setting starts from its
    default (or the chosen preset's), not from the parent's, so a file or override that
    switches the strategy does not inherit the old strategy's options: give every setting to
    keep (e.g. ``num_negatives``). A file that sets a different ``search_depth``,
    or ``input`` / ``embed`` sections that differ from the parent's, is refused with a
    message that says to run ``mine`` again.

    Args:
        version_dir: the parent dataset version.
        config_path: YAML file laid out like ``PipelineConfig`` (only ``mine`` is used).
        **overrides: ``mine`` keys, e.g. ``strategy="semi-hard"``, ``num_negatives=5``
            (None values are ignored).

    Example:
        >>> mine = refilter_config("datasets/scifact/v0001", "strict.yaml")  # doctest: +SKIP
    """
    parent = PipelineConfig.model_validate(read_manifest(version_dir)["config"])
    raw = read_yaml_sections(config_path) if config_path is not None else {}
    source = str(config_path or "options")
    for section in ("input", "embed"):
        if section in raw:
            given = PipelineConfig.from_dict({section: raw[section]}, source=source)
            if getattr(given, section) != getattr(parent, section):
                raise ConfigError(
                    f"{source}: refilter keeps the parent's {section!r} settings; run `negminer mine` to change them"
                )
    mine_raw = {**(raw.get("mine") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    depth = parent.mine.search_depth
    if mine_raw.get("search_depth", depth) != depth:
        raise ConfigError(
            f"{source}: mine.search_depth {mine_raw['search_depth']} differs from the stored "
            f"retrieval ({depth}); narrow the window with range_max, or run `negminer mine` again"
        )
    mine_raw.update({key: getattr(parent.mine, key) for key in _RETRIEVAL})
    return PipelineConfig.from_dict({"mine": mine_raw}, source=source).mine


def refilter(
    version_dir: str | Path,
    *,
    mine: MineConfig,
    root: str | Path | None = None,
    name: str | None = None,
    batch_rows: int | None = None,
) -> RefilterResult:
    """Write a new dataset version selected from `version_dir`'s stored candidate table.

    Args:
        version_dir: a complete dataset version (``ROOT/NAME/VERSION``).
        mine: the new selection settings; ``search_depth`` must be the parent's (see
            :func:`refilter_config`).
        root: datasets root of the new version (default: the parent's root).
        name: dataset name of the new version (default: the parent's name).
        batch_rows: candidate rows selected at a time (default
            :data:`negminer.mining.streaming.BATCH_ROWS`); the output does not depend on it.

    Returns:
        RefilterResult(path of the new version, its selection counts, seconds taken).

    Example:
        >>> result = refilter("datasets/scifact/v0001", mine=MineConfig(strategy="semi-hard"))  # doctest: +SKIP
        >>> result.path  # doctest: +SKIP
        PosixPath('datasets/scifact/v0002')
    """
    start = time.perf_counter()
    version_dir = Path(version_dir)
    name = name or version_dir.parent.name
    check_dataset_name(name)
    manifest = _checked_manifest(version_dir, mine)
    root = Path(root) if root is not None else version_dir.parent.parent
    scratch = _scratch_dir(root / name)
    try:
        derived, audit_counts = _derive(version_dir, scratch, mine, batch_rows=batch_rows)
        carried = {s: version_dir / f"{s}.parquet" for s in _stems(manifest) if s not in DERIVED_FILES}
        files = {**carried, **derived.paths}
        new_manifest = _child_manifest(manifest, version_dir, mine, derived, time.perf_counter() - start)
        new_manifest["counts"]["audit"] = audit_counts
        new_manifest["changes"] = version_changes(
            version_dir, tables=lineage_tables(files), score_quantiles=derived.score_quantiles
        )
        same_dataset = root.resolve() / name == version_dir.parent.resolve()
        path = write_version(
            root,
            name,
            tables={},
            files=files,
            manifest=new_manifest,
            parent=version_dir.name if same_dataset else str(version_dir.resolve()),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("refiltered %s into %s", version_dir, path)
    return RefilterResult(path, derived.counts, time.perf_counter() - start)


def _derive(
    version_dir: Path, scratch: Path, mine: MineConfig, *, batch_rows: int | None
) -> tuple[Any, dict[str, int]]:
    """Select from the parent's candidate file in batches into `scratch` (audit decisions applied)."""
    from negminer.audit.feedback import load_decisions
    from negminer.curation.decisions import BatchedFeedback
    from negminer.mining.streaming import BATCH_ROWS, derive_files

    tables = {stem: pq.read_table(version_dir / f"{stem}.parquet") for stem in ("anchors", "docs", "pairs")}
    candidates = version_dir / "candidates.parquet"
    dataset_dir = version_dir.resolve().parent
    feedback = BatchedFeedback(
        load_decisions(dataset_dir.parent, dataset_dir.name),
        schema=pq.read_schema(candidates),
        anchors=tables["anchors"],
        docs=tables["docs"],
        pairs=tables["pairs"],
        extra_positives=mine.audit_extra_positives,
        held_out=_held_out_pairs(version_dir),
    )
    files = derive_files(
        candidates,
        {stem: scratch / f"{stem}.parquet" for stem in DERIVED_FILES},
        anchors=tables["anchors"],
        docs=tables["docs"],
        pairs=feedback.pairs,
        config=mine,
        transform=feedback,
        batch_rows=batch_rows or BATCH_ROWS,
    )
    return files, feedback.counts


def _held_out_pairs(version_dir: Path) -> pa.Table | None:
    """The given positives curation left out of the version's pairs, from its flagged table.

    Their cosine is the flagged row's ``feature_score``; other pair columns stay null.
    """
    path = version_dir / "flagged.parquet"
    if not path.exists():
        return None
    flagged = pq.read_table(path)
    if not {"kind", "action", "pair_idx", "anchor_idx", "doc_idx"} <= set(flagged.column_names):
        return None
    mask = pc.and_(
        pc.and_(pc.equal(flagged.column("kind"), "false_positive"), pc.not_equal(flagged.column("action"), "keep")),
        pc.is_valid(flagged.column("pair_idx")),
    )
    held = flagged.filter(mask)
    columns = {name: held.column(name) for name in ("pair_idx", "anchor_idx", "doc_idx")}
    if "feature_score" in held.column_names:
        columns["score"] = held.column("feature_score")
    return pa.table(columns)


def _scratch_dir(dataset_dir: Path) -> Path:
    """A folder beside the versions for the derived files (named like a staging folder, so a
    killed refilter's leftovers are removed by :func:`negminer.storage.versions.remove_stale_staging`)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    path = dataset_dir / f".staging-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def _stems(manifest: dict[str, Any]) -> list[str]:
    return [fname.removesuffix(".parquet") for fname in manifest["files"] if fname.endswith(".parquet")]


def _checked_manifest(version_dir: Path, mine: MineConfig) -> dict[str, Any]:
    problems = verify_version(version_dir)
    if problems:
        raise StorageError(f"{version_dir}: cannot refilter an unsound version: " + "; ".join(problems))
    manifest = read_manifest(version_dir)
    missing = [s for s in REQUIRED_FILES if f"{s}.parquet" not in manifest.get("files", {})]
    if missing:
        raise StorageError(
            f"{version_dir}: lacks {', '.join(f'{s}.parquet' for s in missing)}; "
            f"run `negminer mine` to write a version that can be refiltered"
        )
    depth = manifest["config"]["mine"]["search_depth"]
    if mine.search_depth != depth:
        raise ConfigError(
            f"search_depth {mine.search_depth} differs from the stored retrieval ({depth}): "
            f"build the settings with refilter_config, or run `negminer mine` again"
        )
    return manifest


def _child_manifest(
    parent: dict[str, Any], version_dir: Path, mine: MineConfig, derived: Any, seconds: float
) -> dict[str, Any]:
    manifest = {k: v for k, v in parent.items() if k not in _MANIFEST_OWN}
    manifest["config"] = {**parent["config"], "mine": mine.model_dump(mode="json")}
    manifest["counts"] = {**parent.get("counts", {}), **derived.counts}
    if embedding := manifest["counts"].get("embedding"):
        manifest["counts"]["embedding"] = _nothing_embedded(embedding)
    manifest["score_quantiles"] = derived.score_quantiles
    manifest["selection"] = derived.selection
    manifest["derived_from"] = {
        "path": str(version_dir.resolve()),
        "version": parent.get("version", version_dir.name),
        "manifest_sha256": sha256_file(version_dir / MANIFEST),
        "by": "refilter",
        "seconds": round(seconds, 3),
    }
    return manifest


def _nothing_embedded(embedding: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The parent's embedding tallies with every text reused: refilter embeds nothing.

    The other keys (``rows``, ``truncated``) stay: the version's scores still come from those
    vectors, so the report's truncation warning still applies.
    """
    return {
        stem: {**tally, "embedded": 0, "reused": tally.get("reused", 0) + tally.get("embedded", 0)}
        for stem, tally in embedding.items()
    }
