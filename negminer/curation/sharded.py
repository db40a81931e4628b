"""Curation in bounded memory: judges fitted on a sample of anchors, candidates judged shard by shard.

Contract: together, :func:`fit_curation`, :func:`curate_shard` over :func:`shard_ranges` and
:func:`merge_parts` read the candidate file (search contract, sorted by anchor) and write the
curated candidates, the flagged table and the training pairs, as
:func:`negminer.curation.curate_candidates` would (:func:`negminer.stages.curate_stage` runs
them; the flow maps the shards). Up to ``curate.fit_anchors`` anchors (and one shard)
:func:`curate_one_pass` is that one pass, byte for byte. Above it the judges are fitted on the rows of a
seeded sample of anchor families (about ``fit_anchors`` anchors), then every anchor's rows are
described and judged ``curate.shard_anchors`` anchors at a time: memory follows those two
sizes and the pool's context (each anchor's nearest anchors, one key per candidate row, one
count per document), not the number of candidate rows. A row is judged by the model of its
anchor's fold, so a sampled anchor gets the same verdict as in the fit, and every other anchor
is judged by models that never saw it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import CurateConfig
from negminer.curation.context import PoolContext, pool_context, text_hashes
from negminer.curation.curate import Pool, anchor_families, curate_candidates, describe_rows
from negminer.curation.judges import Judges, fit_judges, judge
from negminer.curation.lexical import TextSource, text_list
from negminer.curation.policy import KINDS, IdSource, apply_policies, curated_training_pairs
from negminer.errors import ConfigError
from negminer.mining.strategies import pair_priority
from negminer.storage.atomic import write_parquet_atomic
from negminer.storage.parquet_stream import StagedParquetWriter, read_row_range

logger = logging.getLogger(__name__)

_SAMPLE_SALT = 0x5A3D  # separates the sample's draw from the folds' (both hash the family)


class CurationPaths(NamedTuple):
    curated: Path
    flagged: Path
    training_pairs: Path


class CurationSummary(NamedTuple):
    counts: dict[str, int]
    noise: dict[str, Any]


class PoolInputs(NamedTuple):
    """The read stage's tables and vectors every part of curation reads (see the stage)."""

    pairs: pa.Table
    anchor_vectors: np.ndarray
    doc_vectors: np.ndarray
    anchor_texts: TextSource
    doc_texts: TextSource
    anchor_ids: IdSource | None = None
    doc_ids: IdSource | None = None
    doc_keys: pa.Array | None = None  # the read stage's 16-byte text keys by doc_idx (else hashed from the texts)
    anchor_keys: pa.Array | None = None  # the same by anchor_idx


class FittedCuration(NamedTuple):
    """The judges fitted on a sample of anchors and the pool context every shard shares."""

    family: np.ndarray
    family_hash: np.ndarray
    context: PoolContext
    judges: Judges
    sample_size: int


class ShardResult(NamedTuple):
    curated: pa.Table
    flagged: pa.Table
    excluded_pairs: np.ndarray
    counts: dict[str, int]


def one_pass(n_anchors: int, config: CurateConfig) -> bool:
    """Whether every anchor is curated in one pass (as :func:`curate_candidates` does)."""
    return n_anchors <= min(config.fit_anchors, config.shard_anchors)


def curate_one_pass(
    candidates_path: str | Path, paths: CurationPaths, pool: PoolInputs, *, config: CurateConfig
) -> CurationSummary:
    """Every anchor fitted and judged at once: :func:`curate_candidates` on the whole file."""
    result = curate_candidates(
        pq.read_table(candidates_path),
        pairs=pool.pairs,
        anchor_vectors=pool.anchor_vectors,
        doc_vectors=pool.doc_vectors,
        anchor_texts=text_list(pool.anchor_texts),
        doc_texts=text_list(pool.doc_texts),
        config=config,
        anchor_ids=pool.anchor_ids,
        doc_ids=pool.doc_ids,
    )
    write_parquet_atomic(paths.curated, result.candidates)
    write_parquet_atomic(paths.flagged, result.flagged)
    write_parquet_atomic(
        paths.training_pairs, curated_training_pairs(pool.pairs, result.excluded_pairs, result.flagged)
    )
    return CurationSummary(result.counts, result.noise)


def fit_curation(candidates_path: str | Path, pool: PoolInputs, *, config: CurateConfig) -> FittedCuration:
    """The pool context, and the judges fitted on a seeded sample of about ``fit_anchors`` anchors."""
    if config.issue_rule == "find_label_issues":
        raise ConfigError(
            "curate.issue_rule find_label_issues ranks every row at once, which needs every anchor in one pass: "
            f"set curate.fit_anchors and curate.shard_anchors to at least {len(pool.anchor_vectors)}, "
            "or use confident_joint"
        )
    start = time.perf_counter()
    candidates_path = Path(candidates_path)
    family, family_hash = anchor_families(pool.anchor_texts, keys=pool.anchor_keys)
    context = pool_context(
        lambda: _batches(candidates_path, None),
        anchor_vectors=pool.anchor_vectors,
        family=family,
        family_hash=family_hash,
        doc_texts=pool.doc_texts,
        doc_hash=text_hashes(pool.doc_texts, keys=pool.doc_keys),
        config=config,
    )
    sample = sample_anchors(family, family_hash, limit=config.fit_anchors, seed=config.seed)
    described = describe_rows(
        _rows_of(candidates_path, sample),
        pairs=_pairs_of(pool.pairs, sample),
        anchors=sample,
        pool=_pool(pool, family, family_hash, context),
        config=config,
    )
    judges = fit_judges(described, n_docs=len(pool.doc_vectors), family=family, config=config)
    logger.info(
        "curation: judges fitted on %d of %d anchors in %.1fs",
        len(sample),
        len(pool.anchor_vectors),
        time.perf_counter() - start,
    )
    return FittedCuration(family, family_hash, context, judges, len(sample))


def shard_ranges(candidates_path: str | Path, *, n_anchors: int, config: CurateConfig) -> list[tuple[int, int]]:
    """Candidate row ranges ``[first, stop)`` of about ``shard_anchors`` whole anchors each."""
    parquet = pq.ParquetFile(candidates_path)
    rows_per_anchor = max(1, -(-parquet.metadata.num_rows // max(n_anchors, 1)))
    ranges, first = [], 0
    for table in _batches(Path(candidates_path), config.shard_anchors * rows_per_anchor, columns=["anchor_idx"]):
        ranges.append((first, first + table.num_rows))
        first += table.num_rows
    return ranges


def curate_shard(
    fitted: FittedCuration,
    candidates_path: str | Path,
    rows: tuple[int, int],
    pool: PoolInputs,
    *,
    config: CurateConfig,
) -> ShardResult:
    """Describe and judge the anchors of candidate rows ``[first, stop)`` with the fitted judges."""
    table = read_row_range(candidates_path, *rows).combine_chunks()
    anchors = np.unique(table.column("anchor_idx").to_numpy()).astype(np.int64)
    described = describe_rows(
        table,
        pairs=_pairs_of(pool.pairs, anchors),
        anchors=anchors,
        pool=_pool(pool, fitted.family, fitted.family_hash, fitted.context),
        config=config,
    )
    scored = judge(described, fitted.judges, n_docs=len(pool.doc_vectors), config=config, fitted_rows=False)
    result = apply_policies(scored, table, config=config, anchor_ids=pool.anchor_ids, doc_ids=pool.doc_ids)
    return ShardResult(result.candidates, result.flagged, result.excluded_pairs, result.counts)


def merge_parts(
    curated: list[pa.Table | str],
    flagged: list[pa.Table | str],
    *,
    excluded: np.ndarray,
    counts: list[dict[str, int]],
    paths: CurationPaths,
    pairs: pa.Table,
    noise: dict[str, Any] | None,
    skipped: bool,
) -> CurationSummary:
    """The merge of shard parts given as tables or as Parquet files (read one at a time)."""
    total: dict[str, int] = {}
    for part in counts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    total["skipped"] = int(skipped)
    with StagedParquetWriter(paths.curated) as writer:
        for part in curated:
            writer.write(pq.read_table(part) if isinstance(part, str) else part)
        writer.commit()
    tables = [pq.read_table(part) if isinstance(part, str) else part for part in flagged]
    merged = _merge_flagged(tables)
    write_parquet_atomic(paths.flagged, merged)
    write_parquet_atomic(paths.training_pairs, curated_training_pairs(pairs, np.sort(excluded), merged))
    logger.info("curation: %s", total)
    return CurationSummary(total, noise)


def _pool(pool: PoolInputs, family: np.ndarray, family_hash: np.ndarray, context: PoolContext) -> Pool:
    return Pool(
        pool.pairs,
        family,
        family_hash,
        pool.anchor_vectors,
        pool.doc_vectors,
        pool.anchor_texts,
        pool.doc_texts,
        context,
    )


def sample_anchors(family: np.ndarray, family_hash: np.ndarray, *, limit: int, seed: int) -> np.ndarray:
    """About `limit` anchors (whole families) drawn by a seeded hash of their text, sorted.

    Example:
        >>> sample_anchors(np.arange(4), np.arange(4, dtype=np.uint64), limit=4, seed=0).tolist()
        [0, 1, 2, 3]
    """
    if len(family) <= limit:
        return np.arange(len(family), dtype=np.int64)
    salt = np.full(len(family_hash), _SAMPLE_SALT, np.uint64)
    priority = pair_priority(family_hash.astype(np.uint64), salt, seed)
    cutoff = np.sort(priority)[limit - 1]
    return np.nonzero(priority <= cutoff)[0].astype(np.int64)


def _batches(path: Path, batch_rows: int | None, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The candidate file in tables of whole anchors (about `batch_rows` rows; None: row groups)."""
    from negminer.mining.streaming import anchor_batches

    if batch_rows is None:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.metadata.num_row_groups):
            yield parquet.read_row_group(group, columns=["doc_idx", "score"])
        return
    yield from anchor_batches(path, batch_rows, columns=columns)


def _rows_of(path: Path, anchors: np.ndarray) -> pa.Table:
    """The candidate rows of `anchors`, in file order."""
    wanted = pa.array(anchors)
    parts = [table.filter(pc.is_in(table.column("anchor_idx"), value_set=wanted)) for table in _batches(path, 1 << 20)]
    return pa.concat_tables(parts).combine_chunks()


def _pairs_of(pairs: pa.Table, anchors: np.ndarray) -> pa.Table:
    return pairs.filter(
        pc.is_in(pairs.column("anchor_idx"), value_set=pa.array(anchors, pairs.schema.field("anchor_idx").type))
    )


def _merge_flagged(parts: list[pa.Table]) -> pa.Table:
    """The shards' flagged rows, most suspicious first within each kind (as in one pass)."""
    table = pa.concat_tables(parts, promote_options="default")
    ordered = []
    for kind in KINDS:
        rows = table.filter(pc.equal(table.column("kind"), kind))
        ordered.append(rows.take(pc.sort_indices(rows, [("quality", "ascending")])))
    return pa.concat_tables(ordered)
