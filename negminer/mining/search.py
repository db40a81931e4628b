"""Exact inner-product search over the document pool, streamed to a candidate table.

Contract of the candidate table (one row per anchor and retrieved document, ranked by score):
``anchor_idx`` int32, ``doc_idx`` int32, ``rank`` int32 (0-based raw rank, positives
included), ``score`` float32 (cosine), ``positive_score`` float32 (lowest cosine between the
anchor and any of its known positives), ``is_positive`` bool (a known positive by id),
``same_text_as_positive`` bool (normalised text equals a positive's), ``same_text_as_anchor``
bool. Anchors whose normalised texts are equal share their positives: a positive of one is
never a negative of the other. With candidate sources besides the dense index (:class:`Hybrid`)
the table has one more column, ``source`` string (``dense``, ``bm25``, ``dense+bm25``, ...: the
views that proposed the row), ``rank`` is the rank in the fused list and ``score`` stays the cosine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.mining.vectors import read_rows, take_rows
from negminer.storage.atomic import atomic_write

# Normalised-text keys (negminer.textkeys.text_key), as bytes or an Arrow binary column.
TextKeys = list[bytes] | pa.Array | pa.ChunkedArray

if TYPE_CHECKING:
    from collections.abc import Callable

    from negminer.mining.bm25 import Bm25Shard

logger = logging.getLogger(__name__)

CANDIDATE_SCHEMA = pa.schema(
    [
        ("anchor_idx", pa.int32()),
        ("doc_idx", pa.int32()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("positive_score", pa.float32()),
        ("is_positive", pa.bool_()),
        ("same_text_as_positive", pa.bool_()),
        ("same_text_as_anchor", pa.bool_()),
    ]
)
HYBRID_SCHEMA = CANDIDATE_SCHEMA.append(pa.field("source", pa.string()))
# The order of the names in a ``source`` value ("dense+bm25+dense2"), whatever the config's order.
SOURCE_ORDER = ("dense", "bm25", "dense2")


class Hybrid(NamedTuple):
    """Candidate sources besides (or instead of) the dense index, fused per anchor (see fusion.py)."""

    sources: tuple[str, ...]  # in config order: "dense", "bm25", "dense2"
    fusion: str
    rrf_k: int
    bm25_shards: list[Bm25Shard]
    anchor_texts: Callable[[int, int], Iterable[list[str]]]  # texts of anchors [first, stop), in batches
    doc_keys: np.ndarray  # (n_docs,) uint64 hash of each doc id: breaks ties whatever the corpus's row order
    second: SecondView | None = None  # the dense2 source


class SecondView(NamedTuple):
    """A second embedding model's vectors (rows as the first model's) and its index (or index shards)."""

    anchor_vectors: np.ndarray
    doc_vectors: np.ndarray
    index: Any


class SearchResult(NamedTuple):
    path: Path
    rows: int
    depth: int
    seconds: float
    source_counts: dict[str, int] | None = None  # candidate rows by source (hybrid searches only)


class _Exclusions(NamedTuple):
    anchor_family: np.ndarray  # (n_anchors,) smallest anchor_idx with the same normalised text
    positive_keys: np.ndarray  # sorted anchor_family * n_docs + doc_idx
    positive_group_keys: np.ndarray  # sorted anchor_family * n_groups + text group of positive
    doc_group: np.ndarray  # (n_docs,) text group of each doc
    anchor_group: np.ndarray  # (n_anchors,) text group of the anchor's text, -1 if no doc has it
    n_groups: int


def build_index(doc_vectors: np.ndarray):
    """An exact inner-product FAISS index over `doc_vectors` (n_docs, dim), float32."""
    import faiss

    index = faiss.IndexFlatIP(doc_vectors.shape[1])
    index.add(np.ascontiguousarray(doc_vectors, dtype=np.float32))
    return index


def positive_scores(
    anchor_vectors: np.ndarray, doc_vectors: np.ndarray, pair_anchor: np.ndarray, pair_doc: np.ndarray
) -> np.ndarray:
    """Cosine of each (anchor, positive) pair, shape (n_pairs,)."""
    out = np.empty(len(pair_anchor), np.float32)
    for first in range(0, len(out), 65536):
        a = take_rows(anchor_vectors, pair_anchor[first : first + 65536])
        d = take_rows(doc_vectors, pair_doc[first : first + 65536])
        out[first : first + 65536] = np.einsum("ij,ij->i", a, d)
    return out


def search_candidates(
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    out_path: str | Path,
    *,
    pair_anchor: np.ndarray,
    pair_doc: np.ndarray,
    doc_text_keys: TextKeys,
    anchor_text_keys: TextKeys,
    search_depth: int,
    batch_size: int,
    index: Any = None,
    anchor_range: tuple[int, int] | None = None,
    hybrid: Hybrid | None = None,
) -> SearchResult:
    """Retrieve the top candidates of every anchor and write the candidate table.

    Each anchor gets ``search_depth`` plus its number of known positives candidates (capped
    at the pool size), so excluding positives never leaves it short. With `anchor_range` only
    those anchors are searched (one shard of the work); the depth and exclusions still come
    from all pairs, so the shards' tables, concatenated in order with
    :func:`merge_candidate_files`, equal the table of one call over every anchor.

    Args:
        anchor_vectors: (n_anchors, dim) normalised float32.
        doc_vectors: (n_docs, dim) normalised float32.
        out_path: where the candidate table (Parquet) is written atomically.
        pair_anchor: (n_pairs,) anchor_idx of each known positive pair.
        pair_doc: (n_pairs,) doc_idx of each known positive pair.
        doc_text_keys: normalised-text key of each doc.
        anchor_text_keys: normalised-text key of each anchor.
        search_depth: candidates per anchor besides its positives.
        batch_size: anchors searched at once.
        index: a FAISS index over `doc_vectors` (see :mod:`negminer.mining.index`), or a list
            of :class:`~negminer.mining.index.IndexShard` (one index per range of docs, merged
            per anchor); None builds an exact inner-product index.
        anchor_range: (first, stop) anchor rows to search; None searches every anchor.
        hybrid: the candidate sources to fuse (adds the ``source`` column); None: the dense index alone.

    Example:
        >>> search_candidates(a, d, "candidates.parquet", pair_anchor=pa_, pair_doc=pd_,
        ...     doc_text_keys=dk, anchor_text_keys=ak, search_depth=100, batch_size=4096)  # doctest: +SKIP
    """
    start = time.perf_counter()
    out_path = Path(out_path)
    n_anchors, n_docs = len(anchor_vectors), len(doc_vectors)
    start_row, stop_row = _check_range(anchor_range, n_anchors)
    exclusions = _exclusions(pair_anchor, pair_doc, doc_text_keys, anchor_text_keys, n_docs)
    pos_score = np.full(n_anchors, np.inf, np.float32)
    in_range = (pair_anchor >= start_row) & (pair_anchor < stop_row)
    np.minimum.at(
        pos_score,
        pair_anchor[in_range],
        positive_scores(anchor_vectors, doc_vectors, pair_anchor[in_range], pair_doc[in_range]),
    )
    max_positives = _max_positives_per_family(pair_anchor, anchor_text_keys)
    depth = min(n_docs, search_depth + max_positives)
    if hybrid is None:
        found = _top_docs(anchor_vectors, doc_vectors, index, (start_row, stop_row), depth, batch_size)
        batches = (_candidate_batch(first, scores, ids, pos_score, exclusions, n_docs) for first, scores, ids in found)
        rows = _write_candidates(out_path, batches)
        counts = None
    else:
        found = _hybrid_docs(anchor_vectors, doc_vectors, index, (start_row, stop_row), depth, batch_size, hybrid)
        counts = {}
        batches = (
            _counted(_candidate_batch(first, scores, ids, pos_score, exclusions, n_docs, source), counts)
            for first, scores, ids, source in found
        )
        rows = _write_candidates(out_path, batches, schema=HYBRID_SCHEMA)
    logger.info("searched %d anchors × %d docs, depth %d", stop_row - start_row, n_docs, depth)
    return SearchResult(out_path, rows, depth, time.perf_counter() - start, counts)


def _hybrid_docs(
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    index: Any,
    anchor_range: tuple[int, int],
    depth: int,
    batch_size: int,
    hybrid: Hybrid,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[str]]]:
    """(first anchor, cosines, doc ids, sources) per batch of anchors: each source's top `depth`, fused."""
    from negminer.mining.bm25 import search_bm25_shards
    from negminer.mining.fusion import dense_scores, fuse_lists, source_names

    start_row, stop_row = anchor_range
    names = tuple(name for name in SOURCE_ORDER if name in hybrid.sources)  # "dense+bm25" in any config order
    dense = _top_docs(anchor_vectors, doc_vectors, index, anchor_range, depth, batch_size)
    second = hybrid.second
    if second is not None:
        dense2 = _top_docs(second.anchor_vectors, second.doc_vectors, second.index, anchor_range, depth, batch_size)
    for first in range(start_row, stop_row, batch_size):
        stop = min(first + batch_size, stop_row)
        lists = {}
        if "dense" in names:
            lists["dense"] = next(dense)[1:]
        if "bm25" in names:
            lists["bm25"] = search_bm25_shards(
                hybrid.bm25_shards, hybrid.anchor_texts(first, stop), stop - first, depth, doc_keys=hybrid.doc_keys
            )
        if "dense2" in names:
            lists["dense2"] = next(dense2)[1:]
        options = {"depth": depth, "fusion": hybrid.fusion, "rrf_k": hybrid.rrf_k, "doc_keys": hybrid.doc_keys}
        fused = fuse_lists([lists[name] for name in names], **options)
        scores = dense_scores(fused.ids, first, anchor_vectors, doc_vectors, lists.get("dense"))
        yield first, scores, fused.ids, source_names(fused.sources.reshape(-1), names)


def _counted(table: pa.Table, counts: dict[str, int]) -> pa.Table:
    for source, n in zip(
        *np.unique(table.column("source").to_numpy(zero_copy_only=False), return_counts=True), strict=True
    ):
        counts[str(source)] = counts.get(str(source), 0) + int(n)
    return table


def _top_docs(
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    index: Any,
    anchor_range: tuple[int, int],
    depth: int,
    batch_size: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first anchor, scores, doc ids) per batch of anchors, from one index or index shards."""
    from negminer.mining.index import search_index_shards

    start_row, stop_row = anchor_range
    if isinstance(index, list):
        scores, ids = search_index_shards(index, anchor_vectors, start_row, stop_row, depth, batch_size=batch_size)
        for first in range(start_row, stop_row, batch_size):
            rows = slice(first - start_row, min(first + batch_size, stop_row) - start_row)
            yield first, scores[rows], ids[rows]
        return
    index = build_index(doc_vectors) if index is None else index
    for first in range(start_row, stop_row, batch_size):
        scores, ids = index.search(read_rows(anchor_vectors, first, min(first + batch_size, stop_row)), depth)
        yield first, scores, ids


def _check_range(anchor_range: tuple[int, int] | None, n_anchors: int) -> tuple[int, int]:
    if anchor_range is None:
        return 0, n_anchors
    first, stop = anchor_range
    if not 0 <= first <= stop <= n_anchors:
        raise ValueError(f"anchor_range {anchor_range} is not within the {n_anchors} anchors")
    return first, stop


def merge_candidate_files(parts: list[str | Path], out_path: str | Path) -> int:
    """Concatenate candidate tables of consecutive anchor shards into one table, atomically.

    The shards come from :func:`search_candidates` with consecutive ``anchor_range`` values;
    every anchor's candidates lie in exactly one shard, so concatenation in shard order is the
    exact merge. Row groups are streamed: memory stays at one row group.

    Returns:
        The rows written.

    Example:
        >>> merge_candidate_files(["part-0.parquet", "part-1.parquet"], "candidates.parquet")  # doctest: +SKIP
    """
    schema = pq.read_schema(parts[0]) if parts else CANDIDATE_SCHEMA
    return _write_candidates(out_path, _row_groups(parts), schema=schema.remove_metadata())


def _row_groups(parts: list[str | Path]) -> Iterator[pa.Table]:
    for part in parts:
        source = pq.ParquetFile(part)
        for group in range(source.num_row_groups):
            yield source.read_row_group(group)


def _write_candidates(out_path: str | Path, tables: Iterable[pa.Table], *, schema: pa.Schema = CANDIDATE_SCHEMA) -> int:
    """Write `tables` as the candidate table at `out_path`, one write per table; returns the rows.

    The file is staged under a unique temp name beside `out_path` and moved into place
    (:func:`~negminer.storage.atomic.atomic_write`): runs sharing a work folder may write the
    same table at once without clobbering each other's temp file.
    """
    rows = 0

    def write(handle: IO[bytes]) -> None:
        nonlocal rows
        with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table)
                rows += table.num_rows

    atomic_write(out_path, write)
    return rows


def _exclusions(
    pair_anchor: np.ndarray,
    pair_doc: np.ndarray,
    doc_text_keys: TextKeys,
    anchor_text_keys: TextKeys,
    n_docs: int,
) -> _Exclusions:
    doc_keys = pc.dictionary_encode(_key_array(doc_text_keys))  # group ids in order of first appearance
    doc_group = doc_keys.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    anchor_keys = _key_array(anchor_text_keys)
    anchor_group = pc.index_in(anchor_keys, value_set=doc_keys.dictionary)
    anchor_group = pc.fill_null(anchor_group, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    n_groups = max(len(doc_keys.dictionary), 1)
    family = _first_with_same_key(anchor_keys)
    pair_family = family[pair_anchor]
    return _Exclusions(
        anchor_family=family,
        positive_keys=np.unique(pair_family * n_docs + pair_doc),
        positive_group_keys=np.unique(pair_family * n_groups + doc_group[pair_doc]),
        doc_group=doc_group,
        anchor_group=anchor_group,
        n_groups=n_groups,
    )


def _key_array(keys: TextKeys) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        return keys.combine_chunks()
    return keys if isinstance(keys, pa.Array) else pa.array(keys, pa.binary())


def _first_with_same_key(keys: pa.Array) -> np.ndarray:
    """(n,) for each row, the first row with its key (an anchor's family)."""
    group = pc.dictionary_encode(keys).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    _, first = np.unique(group, return_index=True)
    return first[group].astype(np.int64)


def _candidate_batch(
    first: int,
    scores: np.ndarray,
    ids: np.ndarray,
    pos_score: np.ndarray,
    ex: _Exclusions,
    n_docs: int,
    source: list[str] | None = None,
) -> pa.Table:
    n, depth = ids.shape
    anchor = np.repeat(np.arange(first, first + n, dtype=np.int64), depth)
    doc = ids.reshape(-1).astype(np.int64)
    valid = doc >= 0
    extra = {} if source is None else {"source": pa.array(source, pa.string()).filter(pa.array(valid))}
    anchor, doc, score = anchor[valid], doc[valid], scores.reshape(-1)[valid]
    rank = np.tile(np.arange(depth, dtype=np.int32), n)[valid]
    group = ex.doc_group[doc]
    family = ex.anchor_family[anchor]
    return pa.table(
        {
            "anchor_idx": anchor.astype(np.int32),
            "doc_idx": doc.astype(np.int32),
            "rank": rank,
            "score": score.astype(np.float32),
            "positive_score": pos_score[anchor],
            "is_positive": _isin_sorted(family * n_docs + doc, ex.positive_keys),
            "same_text_as_positive": _isin_sorted(family * ex.n_groups + group, ex.positive_group_keys),
            "same_text_as_anchor": ex.anchor_group[anchor] == group,
            **extra,
        },
        schema=CANDIDATE_SCHEMA if source is None else HYBRID_SCHEMA,
    )


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(values), bool)
    pos = np.searchsorted(sorted_keys, values).clip(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == values


def _max_positives_per_family(pair_anchor: np.ndarray, anchor_text_keys: TextKeys) -> int:
    if len(pair_anchor) == 0:
        return 0
    family = _first_with_same_key(_key_array(anchor_text_keys))
    return int(np.bincount(family[pair_anchor]).max())
