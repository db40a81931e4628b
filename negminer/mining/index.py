"""FAISS index choice: exact inner product up to a size, approximate beyond it, with the
approximate index tuned at run time until its recall@k against exact search reaches a target.

Contract: :func:`build_search_index` returns the index and an :class:`IndexReport` (the
factory string, search parameters and measured recall) that the manifest records. Exact
search has recall 1.0 by construction and is not measured.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from negminer.errors import ConfigError
from negminer.mining.vectors import read_rows, take_rows
from negminer.storage.atomic import atomic_path

logger = logging.getLogger(__name__)

FLAT = "Flat"
# Doc rows read (as float32) per block when adding to an index or searching exactly: 384-d
# blocks of 384 MB, so the transient copies stay small next to the index itself.
BLOCK_ROWS = 262_144


class IndexReport(NamedTuple):
    factory: str
    params: dict[str, int]
    recall: float | None
    recall_sample: int
    k: int
    gpu: bool
    seconds: float


class IndexShard(NamedTuple):
    """One index file over the consecutive docs ``[first, stop)`` of the pool."""

    path: str
    first: int
    stop: int
    params: dict[str, int]
    use_gpu: bool | None  # as IndexConfig.use_gpu: None loads it on the GPUs when faiss sees one


def choose_factory(n_docs: int, dim: int, *, kind: str, exact_max_docs: int) -> str:
    """The FAISS factory string for `kind` ("auto", "flat" or any factory string)."""
    if kind.lower() == "flat":
        return FLAT
    if kind != "auto":
        return kind
    if n_docs <= exact_max_docs:
        return FLAT
    nlist = 1 << round(math.log2(4 * math.sqrt(n_docs)))
    # float32 vectors above ~4 GB are stored as 8-bit scalars (a quarter of the memory).
    storage = "SQ8" if n_docs * dim * 4 > 4 * 1024**3 else "Flat"
    return f"IVF{nlist},{storage}"


def exact_topk(queries: np.ndarray, doc_vectors: np.ndarray, k: int, *, block: int = BLOCK_ROWS) -> np.ndarray:
    """Exact top-k doc ids by inner product, streaming the docs in blocks; shape (n_queries, k)."""
    import faiss

    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for first in range(0, len(doc_vectors), block):
        part = read_rows(doc_vectors, first, first + block)
        flat = faiss.IndexFlatIP(part.shape[1])
        flat.add(part)
        scores, ids = flat.search(queries, min(k, len(part)))
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids + first], axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
    return best_ids


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k found by the approximate search."""
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(len(e), 1) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def build_search_index(
    doc_vectors: np.ndarray,
    *,
    sample_queries: np.ndarray,
    k: int,
    kind: str,
    exact_max_docs: int,
    min_recall: float,
    use_gpu: bool | None,
    seed: int,
    max_probe: int | None = None,
) -> tuple[Any, IndexReport]:
    """Build the index for `doc_vectors` (n_docs, dim) and tune it to `min_recall`.

    Args:
        doc_vectors: normalised float32 document vectors (may be a memory map).
        sample_queries: (m, dim) anchors used to measure recall@k of an approximate index.
        k: the depth the search will use (recall is measured at this k).
        kind: "auto", "flat", or a FAISS factory string such as "IVF4096,Flat" or "HNSW32".
        exact_max_docs: "auto" uses exact search up to this many docs.
        min_recall: target recall@k against exact search on the sample.
        use_gpu: put the index on all GPUs; None means when faiss sees one.
        seed: seed for the training sample.
        max_probe: the largest IVF nprobe the tuning may reach (None: every list), which bounds
            the share of the vectors each query scans whatever recall that leaves.

    Example:
        >>> index, report = build_search_index(docs, sample_queries=anchors[:1000], k=100, kind="auto",
        ...     exact_max_docs=200_000, min_recall=0.98, use_gpu=None, seed=12)  # doctest: +SKIP
        >>> report.recall  # doctest: +SKIP
    """
    import faiss

    start = time.perf_counter()
    n_docs, dim = doc_vectors.shape
    factory = choose_factory(n_docs, dim, kind=kind, exact_max_docs=exact_max_docs)
    index = _new_index(dim, factory)
    if (lists := _ivf_lists(index)) is not None and n_docs < lists:
        # FAISS cannot train fewer points than lists (e.g. the last, small shard of a pool)
        logger.warning("%d docs are too few to train %s (%d lists): searching them exactly", n_docs, factory, lists)
        factory = FLAT
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(_training_sample(doc_vectors, index, seed))
    for first in range(0, n_docs, BLOCK_ROWS):
        index.add(read_rows(doc_vectors, first, first + BLOCK_ROWS))
    gpu = _want_gpu(use_gpu)
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if factory == FLAT:
        return index, IndexReport(factory, {}, None, 0, k, gpu, time.perf_counter() - start)
    params, recall = _tune(index, doc_vectors, sample_queries, k, min_recall, max_probe)
    report = IndexReport(factory, params, recall, len(sample_queries), k, gpu, time.perf_counter() - start)
    logger.info("index %s %s: recall@%d %.4f on %d anchors", factory, params, k, recall, len(sample_queries))
    return index, report


def _new_index(dim: int, factory: str) -> Any:
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:  # FAISS prefixes its message with the C++ function and source line
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(err).strip()) or type(err).__name__
        raise ConfigError(f"index.kind: FAISS cannot build {factory!r} for {dim}-d vectors ({reason})") from err
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:  # e.g. HNSW over PQ codes: L2 only, scores not cosines
        raise ConfigError(
            f"index.kind: FAISS builds {factory!r} with L2 distance only, not inner product "
            "(its scores would not be cosines); choose another kind, e.g. 'HNSW32,SQ8' or 'IVF4096,PQ64'"
        )
    return index


def _training_sample(doc_vectors: np.ndarray, index: Any, seed: int) -> np.ndarray:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    wanted = 64 * ivf.nlist if ivf is not None else 100_000
    n = len(doc_vectors)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, wanted), replace=False))
    return take_rows(doc_vectors, rows)


def _want_gpu(use_gpu: bool | None) -> bool:
    import faiss

    available = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    if use_gpu and not available:
        logger.warning("use_gpu requested but faiss sees no GPU; searching on CPU")
    return available if use_gpu is None else bool(use_gpu and available)


def _tune(
    index: Any, doc_vectors: np.ndarray, queries: np.ndarray, k: int, min_recall: float, max_probe: int | None
) -> tuple[dict, float]:
    """Double nprobe (IVF, up to `max_probe`) or efSearch (HNSW) until recall@k reaches `min_recall`."""
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    exact = exact_topk(queries, doc_vectors, k)
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    knob = _knob(index)
    if knob is None:  # nothing to tune (flat PQ/SQ codes, NSG, ...): the recall is measured and reported
        _, approx = index.search(queries, k)
        recall = recall_at_k(approx, exact)
        if recall < min_recall:
            logger.warning("index recall@%d %.4f is below %.2f; it has no search knob", k, recall, min_recall)
        return {}, recall
    name, value, limit = knob
    if name == "nprobe" and max_probe is not None:
        value, limit = min(value, max_probe), min(limit, max_probe)
    while True:
        space.set_index_parameter(index, name, value)
        _, approx = index.search(queries, k)
        recall = recall_at_k(approx, exact)
        if recall >= min_recall or value >= limit:
            if recall < min_recall:
                logger.warning("index recall@%d %.4f stays below %.2f at %s=%d", k, recall, min_recall, name, value)
            return {name: value}, recall
        value = min(value * 2, limit)


def _knob(index: Any) -> tuple[str, int, int] | None:
    """(parameter, first value, limit) that trades speed for recall; None where the index has none."""
    lists = _ivf_lists(index)
    if lists is not None:
        return "nprobe", min(8, lists), lists
    if _is_hnsw(index):
        return "efSearch", 64, 8192
    return None


def _is_hnsw(index: Any) -> bool:
    """Whether `index` (or the index a transform or id map wraps) is an HNSW graph."""
    import faiss

    while index is not None:
        index = faiss.downcast_index(index) if not _is_gpu(index) else index
        if hasattr(index, "hnsw") or "Hnsw" in type(index).__name__ or "Cagra" in type(index).__name__:
            return True
        index = getattr(index, "index", None)  # IndexPreTransform, IndexIDMap: the wrapped index
    return False


def _ivf_lists(index: Any) -> int | None:
    """The number of inverted lists of an IVF index, on CPU or GPU; None for other kinds."""
    import faiss

    if _is_gpu(index):  # GpuIndexIVF* (IndexIVFInterface) expose nprobe and nlist themselves
        if not hasattr(index, "nprobe"):
            return None
        return int(index.nlist) if hasattr(index, "nlist") else int(index.getNumLists())
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nlist)


def _is_gpu(index: Any) -> bool:
    return "Gpu" in type(index).__name__


def extend_search_index(
    index: Any,
    doc_vectors: np.ndarray,
    *,
    first_new: int,
    factory: str,
    sample_queries: np.ndarray,
    k: int,
    min_recall: float,
) -> tuple[Any, IndexReport]:
    """Add ``doc_vectors[first_new:]`` to `index`, built earlier over ``doc_vectors[:first_new]``.

    A flat index extended this way is identical to one built over all of `doc_vectors`; a
    trained one (IVF) keeps its centroids, and an approximate one is re-tuned to `min_recall`.

    Example:
        >>> index, report = extend_search_index(old, docs, first_new=old.ntotal, factory="Flat",
        ...     sample_queries=anchors[:1000], k=100, min_recall=0.98)  # doctest: +SKIP
    """
    start = time.perf_counter()
    if index.ntotal != first_new or first_new > len(doc_vectors):
        raise ValueError(f"index holds {index.ntotal} vectors, expected {first_new} of {len(doc_vectors)}")
    for first in range(first_new, len(doc_vectors), BLOCK_ROWS):
        index.add(read_rows(doc_vectors, first, first + BLOCK_ROWS))
    if factory == FLAT:
        return index, IndexReport(factory, {}, None, 0, k, False, time.perf_counter() - start)
    params, recall = _tune(index, doc_vectors, sample_queries, k, min_recall, None)
    return index, IndexReport(factory, params, recall, len(sample_queries), k, False, time.perf_counter() - start)


def retune_index(
    path: str | Path, doc_vectors: np.ndarray, sample_queries: np.ndarray, *, k: int, min_recall: float
) -> tuple[dict[str, int], float]:
    """Tune a saved approximate index over `doc_vectors` on `sample_queries`, as a fresh build would.

    An index taken over from another run was tuned on that run's anchors; tuning it again on
    this run's makes its parameters (and so the search) the same as building it here.
    """
    import faiss

    params, recall = _tune(faiss.read_index(str(path)), doc_vectors, sample_queries, k, min_recall, None)
    return params, recall


def doc_ranges(n_docs: int, shard_docs: int) -> list[tuple[int, int]]:
    """Consecutive (first, stop) doc ranges of at most `shard_docs` docs.

    Example:
        >>> doc_ranges(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(first, min(first + shard_docs, n_docs)) for first in range(0, n_docs, shard_docs)]


def build_index_shards(
    doc_vectors: np.ndarray, *, shard_docs: int, path_of: Any, **options: Any
) -> list[tuple[IndexShard, IndexReport]]:
    """Build and save one index per range of `shard_docs` docs, one at a time (memory: one shard).

    Args:
        doc_vectors: (n_docs, dim) normalised float32 (may be a memory map).
        shard_docs: docs per shard.
        path_of: shard number -> the path its index is saved to.
        options: :func:`build_search_index`'s keyword arguments (the factory, recall target
            and tuning apply to each shard on its own).

    Example:
        >>> build_index_shards(docs, shard_docs=1_000_000, path_of=lambda i: f"index.s{i}.faiss",
        ...     sample_queries=anchors[:1000], k=100, kind="auto", exact_max_docs=200_000,
        ...     min_recall=0.98, use_gpu=None, seed=12)  # doctest: +SKIP
    """
    ranges = enumerate(doc_ranges(len(doc_vectors), shard_docs))
    return [build_index_shard(doc_vectors, first, stop, path_of(i), **options) for i, (first, stop) in ranges]


def build_index_shard(
    doc_vectors: np.ndarray,
    first: int,
    stop: int,
    path: str | Path,
    *,
    k: int,
    use_gpu: bool | None,
    **options: Any,
) -> tuple[IndexShard, IndexReport]:
    """Build the index of docs ``[first, stop)``, tuned on its own, and save it to `path`.

    The returned shard loads on the GPUs as `use_gpu` says; `options` are the rest of
    :func:`build_search_index`'s keyword arguments.
    """
    index, report = build_search_index(doc_vectors[first:stop], k=min(k, stop - first), use_gpu=use_gpu, **options)
    save_index(index, path)
    logger.info("index shard %s: docs %d-%d, %s %s", Path(path).name, first, stop, report.factory, report.params)
    return IndexShard(str(path), first, stop, report.params, use_gpu), report


def search_index_shards(
    shards: list[IndexShard], anchor_vectors: np.ndarray, first: int, stop: int, k: int, *, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, doc ids) of anchors ``[first, stop)`` over all index shards.

    Each shard's index is loaded once and searched for every anchor of the range, then
    dropped; FAISS's ``ResultHeap`` keeps each anchor's best k across shards, so over flat
    shards the result is exact top-k of the whole pool. Memory: one shard's index plus
    ``(stop - first) * k`` results. Missing slots (fewer than k docs) have id -1.

    Example:
        >>> scores, ids = search_index_shards(shards, anchors, 0, len(anchors), 100, batch_size=4096)  # doctest: +SKIP
    """
    import faiss

    heap = faiss.ResultHeap(stop - first, k, keep_max=True)
    for shard in shards:
        index = load_index(shard.path, params=shard.params, use_gpu=shard.use_gpu)
        depth = min(k, index.ntotal)
        for low in range(first, stop, batch_size):
            high = min(low + batch_size, stop)
            scores, ids = index.search(read_rows(anchor_vectors, low, high), depth)
            ids = np.where(ids >= 0, ids + shard.first, -1)
            heap.add_result_subset(np.arange(low - first, high - first), scores, ids)
        del index
    heap.finalize()
    return heap.D, heap.I


def save_index(index: Any, path: str | Path) -> Path:
    """Write `index` (moved to the CPU if it lives on a GPU) atomically to `path`."""
    import faiss

    path = Path(path)
    cpu = faiss.index_gpu_to_cpu(index) if _is_gpu(index) else index
    with atomic_path(path) as tmp:
        faiss.write_index(cpu, str(tmp))
    return path


def load_index(path: str | Path, *, params: dict[str, int] | None = None, use_gpu: bool | None) -> Any:
    """Read an index written by :func:`save_index`, apply its search `params`, optionally on GPUs."""
    import faiss

    index = faiss.read_index(str(path))
    if _want_gpu(use_gpu):
        index = faiss.index_cpu_to_all_gpus(index)
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    for name, value in (params or {}).items():
        space.set_index_parameter(index, name, value)
    return index
