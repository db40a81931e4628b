"""Alignment and uniformity equal Wang & Isola's formulas, computed the obvious O(n²) way."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from negminer.evaluation.geometry import (
    alignment,
    seeded_sample,
    seeded_sample_of_batches,
    squared_distance_edges,
    uniformity,
    uniformity_with_histogram,
)


def naive_alignment(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Mean over pairs of ||x/|x| − y/|y| ||^alpha, one pair at a time."""
    values = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64), strict=True):
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        values.append(math.sqrt(sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))) ** alpha)
    return sum(values) / len(values)


def naive_uniformity(x: np.ndarray, t: float) -> float:
    """log of the mean over every pair i < j of exp(−t·||x_i − x_j||²), the full matrix at once."""
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    squared = ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(axis=2)
    i, j = np.triu_indices(len(unit), k=1)
    return float(np.log(np.mean(np.exp(-t * squared[i, j]))))


def torch_reference(x: np.ndarray, y: np.ndarray, *, alpha: float, t: float) -> tuple[float, float]:
    """The paper's own code (github.com/SsnL/align_uniform), on normalised float64 tensors."""
    torch = pytest.importorskip("torch")
    fx = torch.nn.functional.normalize(torch.from_numpy(x.astype(np.float64)), dim=1)
    fy = torch.nn.functional.normalize(torch.from_numpy(y.astype(np.float64)), dim=1)
    align = (fx - fy).norm(p=2, dim=1).pow(alpha).mean()
    uniform = torch.pdist(fx, p=2).pow(2).mul(-t).exp().mean().log()
    return float(align), float(uniform)


@pytest.fixture(scope="module")
def sample_vectors(sample_dir: Path, model) -> tuple[np.ndarray, np.ndarray]:
    """The shipped sample's 225 (claim, abstract) pairs embedded by the packaged model."""
    pairs = pq.read_table(sample_dir / "pairs.parquet")
    encode = dict(batch_size=64, convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False)
    kept, model.max_seq_length = model.max_seq_length, 64  # the session's model: put back after
    try:
        return tuple(model.encode(pairs[side].to_pylist(), **encode) for side in ("anchor", "positive"))
    finally:
        model.max_seq_length = kept


@pytest.mark.slow
def test_alignment_and_uniformity_equal_the_formulas_on_the_shipped_sample(sample_vectors) -> None:
    anchors, positives = sample_vectors
    # the model ends in Normalize(); scaled rows check that the functions normalise
    scale = np.random.default_rng(0).uniform(0.2, 5.0, size=(len(anchors), 1))
    anchors, positives = anchors * scale, positives * scale[::-1]
    together = np.concatenate([anchors, positives])
    measured_alignment = alignment(anchors, positives, alpha=2, batch_rows=50)
    measured_uniformity = uniformity(together, t=2, block_rows=64)

    assert measured_alignment == pytest.approx(naive_alignment(anchors, positives, 2), abs=1e-9)
    assert measured_uniformity == pytest.approx(naive_uniformity(together, 2), abs=1e-9)
    reference = torch_reference(anchors, positives, alpha=2, t=2)
    assert (measured_alignment, uniformity(anchors, t=2, block_rows=64)) == pytest.approx(reference, abs=1e-9)
    # claims and their abstracts are related: positives sit closer than two random texts (d² = 2)
    assert 0.3 < measured_alignment < 1.5 and -4.0 < measured_uniformity < -1.0


def test_blocks_and_batches_do_not_change_the_figures() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(101, 8)), rng.normal(size=(101, 8))
    exact = naive_uniformity(x, 2.0)
    for block_rows in (1, 7, 100, 101, 500):
        assert uniformity(x, t=2.0, block_rows=block_rows) == pytest.approx(exact, abs=1e-12)
    aligned = {alignment(x, y, alpha=2.0, batch_rows=rows) for rows in (1, 10, 101, 1000)}
    assert len(aligned) == 1, "exact sums: the batch size changes no bit"
    assert aligned.pop() == pytest.approx(naive_alignment(x, y, 2.0), abs=1e-12)
    assert alignment(x, y, alpha=1.0, batch_rows=10) == pytest.approx(naive_alignment(x, y, 1.0), abs=1e-12)
    assert uniformity(x, t=0.5, block_rows=9) == pytest.approx(naive_uniformity(x, 0.5), abs=1e-12)


def test_known_values_and_edge_cases() -> None:
    opposite = np.array([[2.0, 0.0], [-3.0, 0.0]])
    assert uniformity(opposite, t=2, block_rows=1) == pytest.approx(-8.0)  # one pair at d² = 4
    assert alignment(opposite[:1], opposite[1:], alpha=2, batch_rows=1) == pytest.approx(4.0)
    assert alignment(opposite[:1], opposite[:1] * 5, alpha=2, batch_rows=1) == 0.0  # same direction
    assert math.isnan(uniformity(opposite[:1], t=2, block_rows=4))  # no pair
    # far apart points stay finite where exp underflows in float64 (the log-sum-exp's job)
    assert uniformity(opposite, t=400, block_rows=1) == pytest.approx(-1600.0)


def test_the_histogram_counts_every_distinct_pair_once() -> None:
    x = np.random.default_rng(5).normal(size=(40, 6))
    edges = squared_distance_edges(10)
    result = uniformity_with_histogram(x, t=2, block_rows=7, edges=edges)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(40, k=1)
    expected = np.histogram(((unit[i] - unit[j]) ** 2).sum(axis=1), bins=edges)[0]
    assert result.pairs == 780 and result.histogram.tolist() == expected.tolist()


def test_the_sample_depends_on_ids_and_seed_not_on_order() -> None:
    ids = [f"doc-{i}" for i in range(500)]
    picked = {ids[i] for i in seeded_sample(ids, size=50, seed=7)}
    shuffled = list(reversed(ids))
    assert {shuffled[i] for i in seeded_sample(shuffled, size=50, seed=7)} == picked
    batches = [ids[k : k + 33] for k in range(0, 500, 33)]
    assert seeded_sample_of_batches(batches, size=50, seed=7).tolist() == seeded_sample(ids, size=50, seed=7).tolist()
    assert {ids[i] for i in seeded_sample(ids, size=50, seed=8)} != picked
    assert sorted(seeded_sample(ids, size=600, seed=7).tolist()) == list(range(500))
