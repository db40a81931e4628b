"""Curation in bounded memory: judges fitted on a sample of anchors, candidates judged shard by shard.

Contract of :func:`curate_files`: reads the candidate file (search contract, sorted by
anchor) and writes the curated candidates, the flagged table and the training pairs, as
:func:`negminer.curation.curate_candidates` would. Up to ``curate.fit_anchors`` anchors (and
one shard) it is that one pass, byte for byte. Above it the judges are fitted on the rows of a
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
from negminer.curation.context import pool_context
from negminer.curation.curate import Pool, anchor_families, curate_candidates, describe_rows
from negminer.curation.judges import fit_judges, judge
from negminer.curation.lexical import TextSource, text_list
from negminer.curation.policy import KINDS, apply_policies, training_pairs
from negminer.errors import ConfigError
from negminer.mining.strategies import pair_priority
from negminer.storage.atomic import write_parquet_atomic
from negminer.storage.parquet_stream import StagedParquetWriter

logger = logging.getLogger(__name__)

_SAMPLE_SALT = 0x5A3D  # separates the sample's draw from the folds' (both hash the family)


class CurationPaths(NamedTuple):
    curated: Path
    flagged: Path
    training_pairs: Path


class CurationSummary(NamedTuple):
    counts: dict[str, int]
    noise: dict[str, Any]


def curate_files(
    candidates_path: str | Path,
    paths: CurationPaths,
    *,
    pairs: pa.Table,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_texts: TextSource,
    doc_texts: TextSource,
    config: CurateConfig,
    anchor_ids: list[str] | None = None,
    doc_ids: list[str] | None = None,
) -> CurationSummary:
    """Curate the candidate file into `paths` (see the module docstring)."""
    n_anchors = len(anchor_vectors)
    if n_anchors <= min(config.fit_anchors, config.shard_anchors):
        result = curate_candidates(
            pq.read_table(candidates_path),
            pairs=pairs,
            anchor_vectors=anchor_vectors,
            doc_vectors=doc_vectors,
            anchor_texts=text_list(anchor_texts),
            doc_texts=text_list(doc_texts),
            config=config,
            anchor_ids=anchor_ids,
            doc_ids=doc_ids,
        )
        write_parquet_atomic(paths.curated, result.candidates)
        write_parquet_atomic(paths.flagged, result.flagged)
        write_parquet_atomic(paths.training_pairs, training_pairs(pairs, result.excluded_pairs))
        return CurationSummary(result.counts, result.noise)
    if config.issue_rule == "find_label_issues":
        raise ConfigError(
            f"curate.issue_rule find_label_issues ranks every row at once, which needs every anchor in one "
            f"pass: set curate.fit_anchors and curate.shard_anchors to at least {n_anchors}, or use confident_joint"
        )
    return _curate_in_shards(
        Path(candidates_path),
        paths,
        pairs=pairs,
        anchor_vectors=anchor_vectors,
        doc_vectors=doc_vectors,
        anchor_texts=anchor_texts,
        doc_texts=doc_texts,
        config=config,
        anchor_ids=anchor_ids,
        doc_ids=doc_ids,
    )


def _curate_in_shards(
    candidates_path: Path,
    paths: CurationPaths,
    *,
    pairs: pa.Table,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_texts: TextSource,
    doc_texts: TextSource,
    config: CurateConfig,
    anchor_ids: list[str] | None,
    doc_ids: list[str] | None,
) -> CurationSummary:
    start = time.perf_counter()
    family, family_hash = anchor_families(text_list(anchor_texts))
    context = pool_context(
        _batches(candidates_path, None),
        anchor_vectors=anchor_vectors,
        family=family,
        doc_texts=doc_texts,
        config=config,
    )
    pool = Pool(pairs, family, family_hash, anchor_vectors, doc_vectors, anchor_texts, doc_texts, context)
    sample = sample_anchors(family, family_hash, limit=config.fit_anchors, seed=config.seed)
    fitted = describe_rows(
        _rows_of(candidates_path, sample), pairs=_pairs_of(pairs, sample), anchors=sample, pool=pool, config=config
    )
    judges = fit_judges(fitted, n_docs=len(doc_vectors), family=family, config=config)
    del fitted
    logger.info("curation: judges fitted on %d of %d anchors", len(sample), len(anchor_vectors))
    counts: dict[str, int] = {}
    flagged, excluded = [], []
    rows_per_anchor = max(1, -(-pq.ParquetFile(candidates_path).metadata.num_rows // len(anchor_vectors)))
    with StagedParquetWriter(paths.curated) as curated:
        for table in _batches(candidates_path, config.shard_anchors * rows_per_anchor):
            anchors = np.unique(table.column("anchor_idx").to_numpy()).astype(np.int64)
            described = describe_rows(table, pairs=_pairs_of(pairs, anchors), anchors=anchors, pool=pool, config=config)
            scored = judge(described, judges, n_docs=len(doc_vectors), config=config, fitted_rows=False)
            result = apply_policies(scored, table, config=config, anchor_ids=anchor_ids, doc_ids=doc_ids)
            curated.write(result.candidates)
            flagged.append(result.flagged)
            excluded.append(result.excluded_pairs)
            for key, value in result.counts.items():
                counts[key] = counts.get(key, 0) + value
        curated.commit()
    counts["skipped"] = int(judges.skipped is not None)
    write_parquet_atomic(paths.flagged, _merge_flagged(flagged))
    write_parquet_atomic(paths.training_pairs, training_pairs(pairs, np.concatenate(excluded)))
    logger.info("curation: %s in %.1fs", counts, time.perf_counter() - start)
    return CurationSummary(counts, judges.noise)


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


def _batches(path: Path, batch_rows: int | None) -> Iterator[pa.Table]:
    """The candidate file in tables of whole anchors (about `batch_rows` rows; None: row groups)."""
    from negminer.mining.streaming import anchor_batches

    if batch_rows is None:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.metadata.num_row_groups):
            yield parquet.read_row_group(group, columns=["doc_idx", "score"])
        return
    yield from anchor_batches(path, batch_rows)


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
