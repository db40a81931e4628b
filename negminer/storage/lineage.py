"""What changed between a dataset version and its parent, and one line per version for ``runs``.

Contract of :func:`version_changes` (the manifest's ``changes``; None for a first version):

* ``parent``: the parent's version name.
* ``triplets``, ``pairs``, ``docs``: ``{"added": n, "removed": n, "kept": n}``. Triplet rows
  are compared as multisets of their full rows, pairs by (anchor id, positive doc id), docs by
  doc id. A table the parent lacks is left out.
* ``score_quantiles_drift``: for every score kind and quantile both versions report, the new
  value minus the parent's, rounded to 4 decimals.
* ``negatives``: how the chosen negatives moved, compared by (anchor id, doc id) from both
  versions' ``candidates.parquet`` (:func:`negative_changes`): ``added``, ``removed``, ``kept``
  and, when both tables have a ``difficulty`` column, ``by_difficulty``: the added and removed
  ones per tier and the kept ones per (parent tier, new tier), e.g. ``{"hard": {"easy": 3}}``:
  three negatives that were hard are now easy (the re-mining loop's signal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.mining.difficulty import TIERS, tier_counts
from negminer.mining.strategies import pair_priority, stable_hash64
from negminer.storage.versions import latest_version, list_versions, read_manifest

logger = logging.getLogger(__name__)

BATCH_ROWS = 65536  # rows read at a time; the counts do not depend on it
_STEMS = ("triplets", "pairs", "anchors", "docs")


def version_changes(
    parent_dir: str | Path | None,
    *,
    files: dict[str, str | Path],
    score_quantiles: dict[str, dict[str, float]],
) -> dict[str, Any] | None:
    """Rows added and removed, and score-quantile drift, of a new version against `parent_dir`.

    Both versions' files are read in batches of :data:`BATCH_ROWS` rows; what is kept is one
    64-bit hash per row (triplets, pairs, anchors, docs), never the rows themselves.

    Args:
        parent_dir: the parent version folder, or None for a first version.
        files: the new version's Parquet files by stem (``triplets``, ``pairs``, ``anchors``, ``docs``).
        score_quantiles: the new version's ``score_quantiles`` (kind -> quantile -> score).

    Example:
        >>> version_changes("datasets/nightly/v0003", files=files, score_quantiles=q)  # doctest: +SKIP
        {'parent': 'v0003', 'triplets': {'added': 120, 'removed': 4, 'kept': 2280}, ...}
    """
    if parent_dir is None:
        return None
    parent_dir = Path(parent_dir)
    parent = read_manifest(parent_dir)
    out: dict[str, Any] = {"parent": parent["version"]}
    old = {stem: parent_dir / f"{stem}.parquet" for stem in _STEMS if (parent_dir / f"{stem}.parquet").exists()}
    new = {stem: Path(files[stem]) for stem in _STEMS if stem in files}
    if "triplets" in old and "triplets" in new:
        out["triplets"] = multiset_changes(_row_hashes(old["triplets"]), _row_hashes(new["triplets"]))
    if "docs" in old:
        old_docs, new_docs = _row_hashes(old["docs"], columns=["doc_id"]), _row_hashes(new["docs"], columns=["doc_id"])
        if "pairs" in old and "anchors" in old:
            out["pairs"] = multiset_changes(_pair_hashes(old, old_docs), _pair_hashes(new, new_docs))
        # after the pairs: multiset_changes sorts the doc hashes, which _pair_hashes looks up by doc_idx
        out["docs"] = multiset_changes(old_docs, new_docs)
    out["score_quantiles_drift"] = quantile_drift(parent.get("score_quantiles", {}), score_quantiles)
    if (parent_dir / "candidates.parquet").exists() and "candidates" in files:
        out["negatives"] = negative_changes(parent_dir / "candidates.parquet", Path(files["candidates"]))
    return out


def negative_changes(old_candidates: str | Path, new_candidates: str | Path) -> dict[str, Any]:
    """Added, removed and kept chosen negatives of two candidate tables, and their tiers' moves.

    Memory: one 64-bit hash and one tier code per chosen negative, never the rows.

    Example:
        >>> negative_changes("v0001/candidates.parquet", "v0002/candidates.parquet")  # doctest: +SKIP
        {'added': 2, 'removed': 2, 'kept': 1, 'by_difficulty': {'added': {'easy': 0, 'medium': 1, 'hard': 1}, ...}}
    """
    (old, old_tiers), (new, new_tiers) = _chosen_negatives(old_candidates), _chosen_negatives(new_candidates)
    kept_old = np.isin(old, new)
    kept_new = np.isin(new, old)
    out: dict[str, Any] = {
        "added": int((~kept_new).sum()),
        "removed": int((~kept_old).sum()),
        "kept": int(kept_old.sum()),
    }
    if old_tiers is None or new_tiers is None:
        return out
    order = np.argsort(new, kind="stable")
    now = new_tiers[order][np.searchsorted(new[order], old[kept_old])].astype(np.int64)
    before = old_tiers[kept_old].astype(np.int64)
    both = (before >= 0) & (now >= 0)
    n = len(TIERS)
    moves = np.bincount(before[both] * n + now[both], minlength=n * n).reshape(n, n)
    out["by_difficulty"] = {
        "added": tier_counts(new_tiers[~kept_new]),
        "removed": tier_counts(old_tiers[~kept_old]),
        "kept": {TIERS[i]: {TIERS[j]: int(moves[i, j]) for j in range(n)} for i in range(n)},
    }
    return out


def _chosen_negatives(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(chosen,) uint64 hash of each chosen negative's (anchor id, doc id) and its tier code (None without tiers)."""
    file = pq.ParquetFile(path)
    has_tiers = "difficulty" in file.schema_arrow.names
    columns = ["anchor_id", "doc_id", "negative_slot", *(["difficulty"] if has_tiers else [])]
    hashes, tiers = [], []
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        chosen = pa.Table.from_batches([batch]).filter(pc.is_valid(batch.column("negative_slot")))
        anchors = stable_hash64(chosen.column("anchor_id").to_pylist())
        docs = stable_hash64(chosen.column("doc_id").to_pylist())
        hashes.append(pair_priority(anchors, docs, 0))
        if has_tiers:
            codes = pc.index_in(chosen.column("difficulty"), value_set=pa.array(TIERS))
            tiers.append(pc.fill_null(codes, -1).to_numpy().astype(np.int8))
    out = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    if not has_tiers:
        return out, None
    return out, np.concatenate(tiers) if tiers else np.empty(0, np.int8)


def quantile_drift(old: dict[str, dict[str, float]], new: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """New minus old for every (kind, quantile) present in both, rounded to 4 decimals."""
    drift = {}
    for kind, values in new.items():
        shared = sorted(set(values) & set(old.get(kind, {})))
        if shared:
            drift[kind] = {q: round(values[q] - old[kind][q], 4) for q in shared}
    return drift


def multiset_changes(old: np.ndarray, new: np.ndarray) -> dict[str, int]:
    """Added, removed and kept rows of two multisets of row hashes (sorts both in place).

    The same numbers as ``Counter``'s ``new - old``, ``old - new`` and ``old & new``: a hash
    present ``a`` times in `old` and ``b`` times in `new` keeps ``min(a, b)`` rows.

    Example:
        >>> multiset_changes(np.array([1, 1, 2], np.uint64), np.array([1, 3], np.uint64))
        {'added': 1, 'removed': 2, 'kept': 1}
    """
    old.sort()
    new.sort()
    old_values, old_counts = _runs(old)
    new_values, new_counts = _runs(new)
    at = np.minimum(np.searchsorted(old_values, new_values), max(old_values.size - 1, 0))
    shared = old_values[at] == new_values if old_values.size else np.zeros(new_values.size, bool)
    kept = int(np.minimum(old_counts[at[shared]], new_counts[shared]).sum())
    return {"added": new.size - kept, "removed": old.size - kept, "kept": kept}


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of a sorted array and how often each occurs."""
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if ordered.size else np.zeros(0, np.int64)
    return ordered[starts], np.diff(np.r_[starts, ordered.size])


def _row_hashes(path: Path, *, columns: list[str] | None = None) -> np.ndarray:
    """(rows,) uint64: a 64-bit hash of each row of a Parquet file over `columns` (default all).

    The hashed text is every column cast to text (nulls as empty) joined by ``\\x1f``. With a
    64-bit hash two different rows collide with a chance of about n² / 2⁶⁵ (3e-6 for 10 million
    rows), so the counts are those of comparing the rows themselves.
    """
    file = pq.ParquetFile(path)
    out = np.empty(file.metadata.num_rows, np.uint64)
    start = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        texts = [pc.fill_null(_as_text(column), "") for column in batch.columns]
        joined = pc.binary_join_element_wise(*texts, "\x1f") if len(texts) > 1 else texts[0]
        out[start : start + batch.num_rows] = stable_hash64(joined.to_pylist())
        start += batch.num_rows
    return out


def _as_text(column: pa.Array) -> pa.Array:
    """A column cast to text; a list column (labeled-list views) as its length and items."""
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return pc.cast(column, pa.string())
    items = pc.binary_join(pc.cast(column, pa.list_(pa.string())), "\x1e")
    return pc.binary_join_element_wise(pc.cast(pc.list_value_length(column), pa.string()), items, "\x1d")


def _pair_hashes(paths: dict[str, Path], doc_hashes: np.ndarray) -> np.ndarray:
    """(pairs,) uint64: a hash of each pair's (anchor id, doc id), ids looked up by row number."""
    anchor_hashes = _row_hashes(paths["anchors"], columns=["anchor_id"])
    file = pq.ParquetFile(paths["pairs"])
    out = np.empty(file.metadata.num_rows, np.uint64)
    start = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=["anchor_idx", "doc_idx"]):
        anchors = anchor_hashes[batch.column("anchor_idx").to_numpy()]
        docs = doc_hashes[batch.column("doc_idx").to_numpy()]
        # an order-sensitive mix of the two id hashes (seed 0): (a, d) and (d, a) differ
        out[start : start + batch.num_rows] = pair_priority(anchors, docs, 0)
        start += batch.num_rows
    return out


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
