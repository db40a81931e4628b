"""What changed between a dataset version and its parent, and one line per version for ``runs``.

Contract of :func:`version_changes` (the manifest's ``changes``; None for a first version):

* ``parent``: the parent's version name.
* ``triplets``, ``pairs``, ``docs``: ``{"added": n, "removed": n, "kept": n}``. Triplet rows
  are compared as multisets of their full rows, pairs by (anchor id, positive doc id), docs by
  doc id. A table the parent lacks is left out.
* ``score_quantiles_drift``: for every score kind and quantile both versions report, the new
  value minus the parent's, rounded to 4 decimals.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.storage.versions import latest_version, list_versions, read_manifest

logger = logging.getLogger(__name__)


def version_changes(
    parent_dir: str | Path | None,
    *,
    tables: dict[str, pa.Table],
    score_quantiles: dict[str, dict[str, float]],
) -> dict[str, Any] | None:
    """Rows added and removed, and score-quantile drift, of a new version against `parent_dir`.

    Args:
        parent_dir: the parent version folder, or None for a first version.
        tables: the new version's tables by file stem (``triplets``, ``pairs``, ``anchors``, ``docs``).
        score_quantiles: the new version's ``score_quantiles`` (kind -> quantile -> score).

    Example:
        >>> version_changes("datasets/nightly/v0003", tables=tables, score_quantiles=q)  # doctest: +SKIP
        {'parent': 'v0003', 'triplets': {'added': 120, 'removed': 4, 'kept': 2280}, ...}
    """
    if parent_dir is None:
        return None
    parent_dir = Path(parent_dir)
    parent = read_manifest(parent_dir)
    out: dict[str, Any] = {"parent": parent["version"]}
    old = {stem: _read(parent_dir, stem) for stem in ("triplets", "pairs", "anchors", "docs")}
    if old["triplets"] is not None and "triplets" in tables:
        out["triplets"] = _diff(_row_keys(old["triplets"]), _row_keys(tables["triplets"]))
    if None not in (old["pairs"], old["anchors"], old["docs"]):
        out["pairs"] = _diff(
            _pair_keys(old["pairs"], old["anchors"], old["docs"]),
            _pair_keys(tables["pairs"], tables["anchors"], tables["docs"]),
        )
    if old["docs"] is not None:
        out["docs"] = _diff(
            Counter(old["docs"].column("doc_id").to_pylist()), Counter(tables["docs"].column("doc_id").to_pylist())
        )
    out["score_quantiles_drift"] = quantile_drift(parent.get("score_quantiles", {}), score_quantiles)
    return out


def lineage_tables(files: dict[str, str | Path]) -> dict[str, pa.Table]:
    """The tables of a new version's files (stem -> Parquet path) that :func:`version_changes` compares."""
    return {stem: pq.read_table(files[stem]) for stem in ("triplets", "pairs", "anchors", "docs") if stem in files}


def quantile_drift(old: dict[str, dict[str, float]], new: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """New minus old for every (kind, quantile) present in both, rounded to 4 decimals."""
    drift = {}
    for kind, values in new.items():
        shared = sorted(set(values) & set(old.get(kind, {})))
        if shared:
            drift[kind] = {q: round(values[q] - old[kind][q], 4) for q in shared}
    return drift


def _read(version_dir: Path, stem: str) -> pa.Table | None:
    path = version_dir / f"{stem}.parquet"
    return pq.read_table(path) if path.exists() else None


def _diff(old: Counter, new: Counter) -> dict[str, int]:
    return {
        "added": sum((new - old).values()),
        "removed": sum((old - new).values()),
        "kept": sum((old & new).values()),
    }


def _row_keys(table: pa.Table, *, batch_rows: int = 65536) -> Counter:
    """Multiset of row digests over every column (cast to text, nulls as empty), in batches."""
    keys: Counter = Counter()
    for batch in table.to_batches(max_chunksize=batch_rows):
        columns = [pc.fill_null(_as_text(column), "") for column in batch.columns]
        joined = pc.binary_join_element_wise(*columns, "\x1f") if len(columns) > 1 else columns[0]
        keys.update(hashlib.blake2b(row.encode(), digest_size=12).digest() for row in joined.to_pylist())
    return keys


def _as_text(column: pa.Array) -> pa.Array:
    """A column cast to text; a list column (labeled-list views) as its length and items."""
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return pc.cast(column, pa.string())
    items = pc.binary_join(pc.cast(column, pa.list_(pa.string())), "\x1e")
    return pc.binary_join_element_wise(pc.cast(pc.list_value_length(column), pa.string()), items, "\x1d")


def _pair_keys(pairs: pa.Table, anchors: pa.Table, docs: pa.Table) -> Counter:
    anchor_ids = anchors.column("anchor_id").take(pairs.column("anchor_idx")).to_pylist()
    doc_ids = docs.column("doc_id").take(pairs.column("doc_idx")).to_pylist()
    return Counter(zip(anchor_ids, doc_ids, strict=True))


@dataclass(frozen=True)
class VersionSummary:
    """One complete version as ``negminer runs`` lists it."""

    version: str
    created_at: str
    parent: str | None
    latest: bool
    pairs: int | None
    triplet_rows: int | None
    negatives: int | None
    rejected: int | None
    embedded: int | None
    added: int | None
    removed: int | None


def version_summaries(dataset_dir: str | Path) -> list[VersionSummary]:
    """Every complete version of a dataset, oldest first, with its counts from the manifest.

    Example:
        >>> [s.version for s in version_summaries("datasets/nightly")]  # doctest: +SKIP
        ['v0001', 'v0002']
    """
    dataset_dir = Path(dataset_dir)
    latest = latest_version(dataset_dir)
    return [_summary(name, read_manifest(dataset_dir / name), name == latest) for name in list_versions(dataset_dir)]


def _summary(name: str, manifest: dict[str, Any], latest: bool) -> VersionSummary:
    counts = manifest.get("counts", {})
    embedding = counts.get("embedding") or {}
    triplets = (manifest.get("changes") or {}).get("triplets") or {}
    return VersionSummary(
        version=name,
        created_at=manifest.get("created_at", ""),
        parent=manifest.get("parent"),
        latest=latest,
        pairs=counts.get("pairs"),
        triplet_rows=counts.get("triplet_rows", manifest.get("files", {}).get("triplets.parquet", {}).get("rows")),
        negatives=counts.get("negatives"),
        rejected=counts.get("rejected_rows"),
        embedded=sum(s.get("embedded", 0) for s in embedding.values()) if embedding else None,
        added=triplets.get("added"),
        removed=triplets.get("removed"),
    )
