"""Difficulty tiers: exact thresholds from the run's margins, tiers per candidate and per view row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from negminer.config import SelectionConfig
from negminer.errors import ConfigError
from negminer.mining.difficulty import (
    STAGE_STEMS,
    DifficultyThresholds,
    candidate_tiers,
    difficulty_thresholds,
    tier_names,
)
from negminer.mining.formats import scored_view, training_view, view_tiers


def candidates(n: int = 2000, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    positive_score = np.repeat(rng.uniform(0.4, 0.9, n // 20), 20).astype(np.float32)
    score = rng.uniform(-0.1, 0.95, n).astype(np.float32)
    is_positive = rng.random(n) < 0.05
    return pa.table({"score": score, "positive_score": positive_score, "is_positive": is_positive})


def test_thresholds_are_numpy_quantiles_of_the_non_positive_margins_whatever_the_batches():
    table = candidates()
    margin = (table["score"].to_numpy() - table["positive_score"].to_numpy())[~table["is_positive"].to_numpy()]
    expected = np.quantile(margin, [0.5, 0.9])
    for size in (table.num_rows, 333, 1):
        batches = table.to_batches(max_chunksize=size)
        got = difficulty_thresholds(batches, batches[::-1], medium_quantile=0.5, hard_quantile=0.9)
        # StreamedQuantiles interpolates in float32, numpy in float64
        assert got == pytest.approx(expected.tolist(), abs=1e-6), size


def test_tiers_split_at_the_thresholds_and_positives_have_none():
    table = pa.table(
        {
            "score": pa.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.9], pa.float32()),
            "positive_score": pa.array([0.6] * 6, pa.float32()),
            "is_positive": [False, False, False, False, False, True],
        }
    )
    margins = (table["score"].to_numpy() - table["positive_score"].to_numpy()).astype(np.float64)
    thresholds = DifficultyThresholds(float(margins[1]), float(margins[3]))  # ties go to the harder tier
    codes = candidate_tiers(table, thresholds)
    assert tier_names(codes).to_pylist() == ["easy", "medium", "medium", "hard", "hard", None]
    assert candidate_tiers(table, DifficultyThresholds(None, None)).tolist() == [-1] * 6


PAIRS = pa.table({"anchor_idx": [0, 1, 0, 2], "doc_idx": [0, 1, 2, 3]})
ANCHORS = pa.array(["a0", "a1", "a2"])
DOCS = pa.array([f"d{i}" for i in range(9)])
GRID = np.array([[4, 5, 6], [7, -1, -1], [8, 4, 5]])
TIERS = np.array([[0, 2, 1], [1, -1, -1], [0, 0, 1]], np.int8)


@pytest.mark.parametrize("output_format", ["triplet", "n-tuple", "labeled-list", "labeled-pair"])
def test_a_rows_tier_is_its_hardest_negatives_and_the_scored_view_shows_it(output_format):
    view = training_view(PAIRS, ANCHORS, DOCS, GRID, output_format=output_format)
    codes = view_tiers(PAIRS, GRID, TIERS, output_format=output_format)
    assert len(codes) == view.num_rows
    expected = {
        "triplet": [0, 2, 1, 1, 0, 2, 1, 0, 0, 1],  # pair by pair, slot by slot
        "n-tuple": [2, 2, 1],  # anchor 1 has one negative: no row
        "labeled-list": [2, 1, 2, 1],
        "labeled-pair": [-1, -1, 0, 2, 1, -1, 1, -1, 0, 0, 1],  # positives have no tier
    }[output_format]
    assert codes.tolist() == expected
    scored = scored_view(
        PAIRS,
        ANCHORS,
        DOCS,
        GRID,
        pair_scores=np.zeros(4),
        negative_scores=np.zeros(GRID.shape),
        output_format=output_format,
        negative_tiers=TIERS,
    )
    assert scored.column("difficulty").to_pylist() == tier_names(codes).to_pylist()
    assert scored.drop_columns(["difficulty", "score" if output_format == "labeled-pair" else "scores"]) == view


def test_curriculum_settings_are_checked():
    assert STAGE_STEMS == ("curriculum-1-easy", "curriculum-2-medium", "curriculum-3-hard")
    with pytest.raises((ConfigError, ValueError), match="labeled-pair"):
        SelectionConfig(output_curriculum=True, output_format="labeled-pair")
    with pytest.raises((ConfigError, ValueError), match="difficulty_medium_quantile"):
        SelectionConfig(difficulty_medium_quantile=0.9, difficulty_hard_quantile=0.5)
