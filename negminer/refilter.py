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
New curation policies (the ``curate`` section's ``*_action`` keys, :func:`refilter_policies`)
are applied to the parent's flags instead (:mod:`negminer.curation.reapply`): ``flagged`` and
``pairs`` are then rewritten. A config file is checked as ``mine`` checks it, and a setting
that would need a new embedding, search or curation is refused by name.
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
import pyarrow.parquet as pq

from negminer.config import CurateConfig, MineConfig, PipelineConfig, RetrievalConfig, read_yaml_sections
from negminer.errors import ConfigError, StorageError
from negminer.mining.auto_strategy import auto_choice, resolve_strategy
from negminer.mining.difficulty import STAGE_STEMS
from negminer.storage.atomic import sha256_file
from negminer.storage.lineage import version_changes
from negminer.storage.versions import MANIFEST, check_dataset_name, read_manifest, verify_version, write_version

logger = logging.getLogger(__name__)

# Files that derive_files writes; every other file of the parent is carried over.
DERIVED_FILES = ("triplets", "candidates", "scored", *STAGE_STEMS)
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
    keep (e.g. ``num_negatives``). The file is checked as ``mine`` checks it (unknown sections
    and keys are errors); a setting refilter cannot apply without embedding, searching or
    judging again (``input``, ``embed``, ``index``, the retrieval keys of ``mine``, ``curate``
    other than its ``*_action`` policies) that differs from the parent's is refused, naming
    each such key. The ``curate`` policies are read by :func:`refilter_policies`.

    Args:
        version_dir: the parent dataset version.
        config_path: YAML file laid out like ``PipelineConfig``.
        **overrides: ``mine`` keys, e.g. ``strategy="semi-hard"``, ``num_negatives=5``
            (None values are ignored).

    Example:
        >>> mine = refilter_config("datasets/scifact/v0001", "strict.yaml")  # doctest: +SKIP
    """
    parent = PipelineConfig.model_validate(read_manifest(version_dir)["config"])
    raw = read_yaml_sections(config_path) if config_path is not None else {}
    source = str(config_path or "options")
    mine_raw = {**(raw.get("mine") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    given = PipelineConfig.from_dict({**raw, "mine": mine_raw}, source=source)  # unknown keys: errors, as in mine
    fixed = _needs_a_new_run(raw, mine_raw, given, parent)
    if fixed:
        raise ConfigError(
            f"{source}: refilter selects again from the stored candidates and cannot change "
            f"{', '.join(fixed)} (they need a new embedding, search or curation): run `negminer mine` to change them"
        )
    mine_raw.update({key: getattr(parent.mine, key) for key in _RETRIEVAL})
    return PipelineConfig.from_dict({"mine": mine_raw}, source=source).mine


def refilter_policies(version_dir: str | Path, config_path: str | Path | None = None) -> CurateConfig | None:
    """The parent's curation settings with the file's ``curate`` ``*_action`` policies; None when unchanged.

    Example:
        >>> policies = refilter_policies("datasets/scifact/v0001", "keep-duplicates.yaml")  # doctest: +SKIP
    """
    from negminer.curation.reapply import POLICY_KEYS

    parent = PipelineConfig.model_validate(read_manifest(version_dir)["config"]).curate
    raw = (read_yaml_sections(config_path).get("curate") or {}) if config_path is not None else {}
    chosen = {key: raw[key] for key in POLICY_KEYS if key in raw}
    merged = PipelineConfig.from_dict({"curate": {**parent.model_dump(), **chosen}}, source=str(config_path)).curate
    return None if merged == parent else merged


def _needs_a_new_run(
    raw: dict[str, Any], mine_raw: dict[str, Any], given: PipelineConfig, parent: PipelineConfig
) -> list[str]:
    """The keys given in `raw` / `mine_raw` that differ from the parent's and refilter cannot apply."""
    from negminer.curation.reapply import POLICY_KEYS

    given_keys = {section: list(raw.get(section) or {}) for section in ("input", "embed", "index", "curate")}
    given_keys["curate"] = [key for key in given_keys["curate"] if key not in POLICY_KEYS]
    given_keys["mine"] = [key for key in mine_raw if key in RetrievalConfig.model_fields]
    return [
        f"{section}.{key}"
        for section, keys in given_keys.items()
        for key in keys
        if getattr(getattr(given, section), key) != getattr(getattr(parent, section), key)
    ]


def refilter(
    version_dir: str | Path,
    *,
    mine: MineConfig,
    curation: CurateConfig | None = None,
    root: str | Path | None = None,
    name: str | None = None,
    batch_rows: int | None = None,
) -> RefilterResult:
    """Write a new dataset version selected from `version_dir`'s stored candidate table.

    Args:
        version_dir: a complete dataset version (``ROOT/NAME/VERSION``).
        mine: the new selection settings; ``search_depth`` must be the parent's (see
            :func:`refilter_config`).
        curation: the parent's curation settings with new ``*_action`` policies
            (:func:`refilter_policies`), applied to the parent's flags; None keeps the parent's.
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
        change = _policy_change(version_dir, curation, noise=manifest.get("noise"))
        selection = resolve_strategy(mine, manifest.get("noise"))
        derived, audit_counts, rewritten = _derive(version_dir, scratch, selection, change, batch_rows=batch_rows)
        carried = {s: version_dir / f"{s}.parquet" for s in _stems(manifest) if s not in DERIVED_FILES}
        files = {**carried, **rewritten, **derived.paths}
        new_manifest = _child_manifest(manifest, version_dir, mine, derived, time.perf_counter() - start)
        new_manifest["counts"]["audit"] = audit_counts
        if change is not None:
            new_manifest["config"]["curate"] = curation.model_dump(mode="json")
            new_manifest["policies"] = change.actions
            new_manifest["counts"]["curation"] = {**new_manifest["counts"].get("curation", {}), **change.counts}
        new_manifest["changes"] = version_changes(version_dir, files=files, score_quantiles=derived.score_quantiles)
        if new_manifest.get("diagnostics"):
            new_manifest["diagnostics"] = _reselected_diagnostics(new_manifest, files)
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


def _policy_change(version_dir: Path, curation: CurateConfig | None, *, noise: dict[str, Any] | None) -> Any:
    """The parent's flags under `curation`'s policies (None: no new policies, or nothing flagged)."""
    from negminer.curation.reapply import PolicyChange

    path = version_dir / "flagged.parquet"
    if curation is None or not path.exists():
        return None
    n_docs = pq.ParquetFile(version_dir / "docs.parquet").metadata.num_rows
    return PolicyChange(pq.read_table(path), curation, n_docs=n_docs, noise=noise)


def _derive(
    version_dir: Path, scratch: Path, mine: MineConfig, change: Any, *, batch_rows: int | None
) -> tuple[Any, dict[str, int], dict[str, Path]]:
    """Select from the parent's candidate file in batches into `scratch` (new policies and audit
    decisions applied); also the flagged table and pairs rewritten under new policies."""
    from negminer.audit.feedback import load_decisions
    from negminer.curation.decisions import BatchedFeedback
    from negminer.mining.streaming import BATCH_ROWS, derive_files
    from negminer.storage.atomic import write_parquet_atomic

    tables = {stem: pq.read_table(version_dir / f"{stem}.parquet") for stem in ("anchors", "docs", "pairs")}
    pairs = tables["pairs"] if change is None else change.training_pairs(tables["pairs"])
    candidates = version_dir / "candidates.parquet"
    dataset_dir = version_dir.resolve().parent
    feedback = BatchedFeedback(
        load_decisions(dataset_dir.parent, dataset_dir.name),
        schema=pq.read_schema(candidates),
        anchors=tables["anchors"],
        docs=tables["docs"],
        pairs=pairs,
        extra_positives=mine.audit_extra_positives,
        held_out=_held_out_pairs(version_dir) if change is None else change.held_out(),
    )
    files = derive_files(
        candidates,
        {stem: scratch / f"{stem}.parquet" for stem in DERIVED_FILES},
        anchors=tables["anchors"],
        docs=tables["docs"],
        pairs=feedback.pairs,
        config=mine,
        transform=feedback if change is None else (lambda batch: feedback(change(batch))),
        batch_rows=batch_rows or BATCH_ROWS,
    )
    rewritten = {}
    if change is not None:
        rewritten["flagged"] = write_parquet_atomic(scratch / "flagged.parquet", change.flagged)
        rewritten["pairs"] = write_parquet_atomic(scratch / "pairs.parquet", pairs)
    return files, feedback.counts, rewritten


def _held_out_pairs(version_dir: Path) -> pa.Table | None:
    """The given positives curation left out of the version's pairs, from its flagged table.

    Their cosine is the flagged row's ``feature_score``; other pair columns stay null.
    """
    path = version_dir / "flagged.parquet"
    if not path.exists():
        return None
    from negminer.curation.reapply import held_out_positives

    flagged = pq.read_table(path)
    if not {"kind", "action", "pair_idx", "anchor_idx", "doc_idx"} <= set(flagged.column_names):
        return None
    return held_out_positives(flagged)


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
    if choice := auto_choice(mine, parent.get("noise")):
        manifest["selection"] = {**derived.selection, "auto_strategy": choice}
    manifest["derived_from"] = {
        "path": str(version_dir.resolve()),
        "version": parent.get("version", version_dir.name),
        "manifest_sha256": sha256_file(version_dir / MANIFEST),
        "by": "refilter",
        "seconds": round(seconds, 3),
    }
    return manifest


def _reselected_diagnostics(manifest: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """The parent's diagnostics with the new negatives' histogram and unlabelled-positive share."""
    from negminer.config import DiagnosticsConfig
    from negminer.evaluation.diagnostics import reselected_diagnostics

    config = DiagnosticsConfig.model_validate(manifest["config"].get("diagnostics") or {})
    return reselected_diagnostics(
        manifest["diagnostics"], candidates=files["candidates"], flagged=files.get("flagged"), config=config
    )


def _nothing_embedded(embedding: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The parent's embedding tallies with every text reused: refilter embeds nothing.

    The other keys (``rows``, ``truncated``) stay: the version's scores still come from those
    vectors, so the report's truncation warning still applies.
    """
    return {
        stem: {**tally, "embedded": 0, "reused": tally.get("reused", 0) + tally.get("embedded", 0)}
        for stem, tally in embedding.items()
    }
