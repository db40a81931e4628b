"""Alignment and uniformity of an embedding space (Wang & Isola, 2020), in bounded memory.

Both are defined on L2-normalised vectors f(x) (every function here normalises its inputs,
so raw model outputs give the same figures as normalised ones):

* alignment = E over positive pairs (x, y) of ||f(x) − f(y)||_2^alpha (alpha = 2 in the
  paper): lower means positives sit closer.
* uniformity = log E over pairs of exp(−t·||f(x) − f(y)||_2²) (t = 2): more negative means
  the vectors spread more evenly over the sphere.

They follow the paper's reference code exactly::

    align = (x - y).norm(p=2, dim=1).pow(alpha).mean()
    uniform = torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()

so uniformity averages over the n·(n−1)/2 distinct pairs i < j, as ``torch.pdist`` does. No
n×n matrix is built: pairwise terms are computed block by block (`block_rows` rows at a time)
and combined with a running log-sum-exp. Sums are exact (``math.fsum``) or taken in a fixed
block order, so a figure depends on the vectors and their order only, never on batch sizes of
the reader.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from negminer.mining.strategies import stable_hash64

MAX_SQUARED_DISTANCE = 4.0  # between unit vectors


def normalize(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float64 rows scaled to unit length (all-zero rows stay zero, like torch's F.normalize)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def pair_distances(x: np.ndarray, y: np.ndarray, *, alpha: float) -> np.ndarray:
    """(n,) ||f(x_i) − f(y_i)||_2^alpha of paired rows of `x` and `y` (both (n, d))."""
    if x.shape != y.shape:
        raise ValueError(f"paired rows need equal shapes, got {x.shape} and {y.shape}")
    return np.linalg.norm(normalize(x) - normalize(y), axis=1) ** alpha


def alignment(x: np.ndarray, y: np.ndarray, *, alpha: float, batch_rows: int) -> float:
    """Mean ||f(x_i) − f(y_i)||^alpha over paired rows, `batch_rows` rows at a time.

    Args:
        x, y: (n, d) vectors; row i of `x` and row i of `y` are a positive pair (memory-mapped
            arrays are read one batch at a time).
        alpha: the exponent (2 in the paper).
        batch_rows: rows read per step.

    Example:
        >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> alignment(x, np.array([[0.0, 1.0], [0.0, 1.0]]), alpha=2, batch_rows=1)
        1.0
    """
    batches = ((x[i : i + batch_rows], y[i : i + batch_rows]) for i in range(0, len(x), batch_rows))
    return alignment_of_batches(batches, alpha=alpha)


def alignment_of_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], *, alpha: float) -> float:
    """:func:`alignment` over (x, y) batches as a reader streams them; NaN when there are none."""
    count = 0

    def values() -> Iterable[float]:
        nonlocal count
        for x, y in batches:
            count += len(x)
            yield from pair_distances(x, y, alpha=alpha).tolist()

    total = math.fsum(values())  # exact, so the batch sizes cannot change the figure
    return total / count if count else math.nan


@dataclass(frozen=True)
class Uniformity:
    """:func:`uniformity_with_histogram`'s result.

    Attributes:
        value: log mean exp(−t·d²) over the distinct pairs (NaN for fewer than two vectors).
        pairs: the number of distinct pairs, n·(n−1)/2.
        histogram: counts of the pairs' squared distances d² in `edges`' bins.
    """

    value: float
    pairs: int
    histogram: np.ndarray


def uniformity(vectors: np.ndarray, *, t: float, block_rows: int) -> float:
    """log of the mean of exp(−t·||f(x_i) − f(x_j)||²) over the pairs i < j.

    Args:
        vectors: (n, d); n of a few thousand is plenty (a seeded sample, :func:`seeded_sample`).
        t: the kernel's scale (2 in the paper).
        block_rows: rows per block: memory is O(block_rows²), never O(n²).

    Example:
        >>> round(uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]]), t=2, block_rows=8), 6)  # d² = 4
        -8.0
    """
    return uniformity_with_histogram(vectors, t=t, block_rows=block_rows, edges=None).value


def uniformity_with_histogram(
    vectors: np.ndarray, *, t: float, block_rows: int, edges: np.ndarray | None
) -> Uniformity:
    """:func:`uniformity`, and the histogram of the pairs' squared distances in `edges` (if given)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1, got {block_rows}")
    unit = normalize(vectors)
    n = len(unit)
    histogram = np.zeros(0 if edges is None else len(edges) - 1, np.int64)
    peak, scaled_sum = -math.inf, 0.0  # log-sum-exp so far: peak + log(scaled_sum)
    for start in range(0, n, block_rows):
        rows = unit[start : start + block_rows]
        for other in range(start, n, block_rows):
            squared = _block_squared_distances(rows, unit[other : other + block_rows], diagonal=other == start)
            if squared.size == 0:
                continue
            if edges is not None:
                histogram += np.histogram(squared, bins=edges)[0]
            logits = -t * squared
            block_peak = float(logits.max())
            if block_peak > peak:
                scaled_sum *= math.exp(peak - block_peak)
                peak = block_peak
            scaled_sum += float(np.exp(logits - peak).sum())
    pairs = n * (n - 1) // 2
    value = peak + math.log(scaled_sum) - math.log(pairs) if pairs else math.nan
    return Uniformity(value, pairs, histogram)


def _block_squared_distances(rows: np.ndarray, others: np.ndarray, *, diagonal: bool) -> np.ndarray:
    """Flat squared distances between unit rows and unit others; only j > i on a diagonal block."""
    squared = np.clip(2.0 - 2.0 * (rows @ others.T), 0.0, MAX_SQUARED_DISTANCE)
    if diagonal:
        return squared[np.triu_indices(len(rows), k=1, m=len(others))]
    return squared.ravel()


def seeded_sample(ids: Sequence[str], *, size: int, seed: int) -> np.ndarray:
    """Positions of `size` of `ids` chosen by a seeded hash of each id, in hash order.

    The same ids and seed give the same sample whatever their order (DESIGN.md: sampling
    hashes ids, never row numbers or global random state); all of them when `size` >= len(ids).

    Example:
        >>> sorted(seeded_sample(["a", "b", "c"], size=3, seed=1).tolist())
        [0, 1, 2]
    """
    return seeded_sample_of_batches([ids], size=size, seed=seed)


def seeded_sample_of_batches(batches: Iterable[Sequence[str]], *, size: int, seed: int) -> np.ndarray:
    """:func:`seeded_sample` over ids read batch by batch: memory O(size + batch), positions
    counted across the batches."""
    if size < 0:
        raise ValueError(f"size must be non-negative, got {size}")
    best_hash, best_id = np.empty(0, np.uint64), np.empty(0, str)
    best_position = np.empty(0, np.int64)
    offset = 0
    for batch in batches:
        ids = np.asarray(list(batch), dtype=str)
        hashes = stable_hash64([f"{seed}\x1f{i}" for i in ids.tolist()])
        positions = np.arange(offset, offset + len(ids), dtype=np.int64)
        offset += len(ids)
        all_hash = np.concatenate([best_hash, hashes])
        all_id = np.concatenate([best_id, ids]) if len(best_id) else ids
        order = np.lexsort((all_id, all_hash))[:size]  # ties of the hash: by id
        best_hash, best_id = all_hash[order], all_id[order]
        best_position = np.concatenate([best_position, positions])[order]
    return best_position


def squared_distance_edges(bins: int) -> np.ndarray:
    """`bins` + 1 equal-width bin edges over the squared distances of unit vectors, [0, 4]."""
    return np.linspace(0.0, MAX_SQUARED_DISTANCE, bins + 1)
