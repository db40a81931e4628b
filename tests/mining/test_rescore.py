"""A cross-encoder's scores in place of the cosines for the selection rules (``mine.cross_encoder``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from negminer.config import MineConfig
from negminer.errors import ConfigError
from negminer.mining.rescore import POSITIVE_SCORE, SCORE, CrossEncoderRescorer, load_rescorer, texts_of
from tests.mining.test_strategies import candidates, chosen, ladder, outcome, select


class _TableCrossEncoder:
    """Scores the pair (anchor text, doc text) from a fixed table; records every pair asked."""

    def __init__(self, scores: dict[tuple[str, str], float]) -> None:
        self.scores, self.asked = scores, []

    def predict(self, pairs, batch_size=64, show_progress_bar=False):
        self.asked.extend(pairs)
        return np.array([self.scores.get(pair, 0.0) for pair in pairs], np.float32)


ANCHORS = ["a0", "a1"]
DOCS = [f"d{i}" for i in range(6)]


def rescorer(model, pairs: list[tuple[int, int]], **config) -> CrossEncoderRescorer:
    table = pa.table({"anchor_idx": [a for a, _ in pairs], "doc_idx": [d for _, d in pairs]})
    return CrossEncoderRescorer(
        model,
        pairs=table,
        anchor_texts=lambda rows: [ANCHORS[i] for i in rows],
        doc_texts=lambda rows: [DOCS[i] for i in rows],
        config=MineConfig(strategy="naive", cross_encoder="unused", **config),
    )


def test_only_rows_that_can_become_negatives_are_scored():
    model = _TableCrossEncoder({("a0", "d1"): 3.0, ("a0", "d2"): 5.0, ("a0", "d0"): 4.0, ("a0", "d5"): 2.0})
    batch = candidates(ladder(0, 5))  # doc 0 is the positive (same text too)
    batch = batch.append_column("flagged_false_negative", pa.array([False, False, False, True, False]))
    out = rescorer(model, [(0, 0), (0, 5)], range_max=4)(batch)
    assert out.column(SCORE).to_pylist() == [None, 3.0, 5.0, None, None]  # positive, flagged, rank 4 not asked
    # the lowest score over the anchor's pairs, on every row of the anchor
    assert out.column(POSITIVE_SCORE).to_pylist() == [2.0] * 5
    assert sorted(model.asked) == [("a0", "d0"), ("a0", "d1"), ("a0", "d2"), ("a0", "d5")]


def test_a_pair_is_scored_once_per_batch_and_an_anchor_without_pairs_has_no_positive_score():
    model = _TableCrossEncoder({("a1", "d1"): 1.0})
    rows = [{**row, "doc_idx": 1} for row in ladder(1, 3, positives=())]  # doc 1 three times
    out = rescorer(model, [(0, 0)])(candidates(rows))
    assert out.column(SCORE).to_pylist() == [1.0, 1.0, 1.0]
    assert np.isnan(out.column(POSITIVE_SCORE).to_numpy()).all()
    assert model.asked == [("a1", "d1")]


def test_the_margin_and_the_top_order_follow_the_cross_encoder():
    # cosines 0.95 − 0.05·rank against a positive cosine of 0.9: relative_margin 0.05 drops doc 1
    # (0.90 > 0.855) and keeps docs 2–4; the cross-encoder (positive 8.0, bound 7.6) drops doc 2
    model = _TableCrossEncoder({("a0", "d0"): 8.0, ("a0", "d1"): 1.0, ("a0", "d2"): 7.8, ("a0", "d3"): 6.0})
    table = rescorer(model, [(0, 0)])(candidates(ladder(0, 5)))
    by_cross_encoder = select(table, relative_margin=0.05, num_negatives=2)
    reasons = outcome(by_cross_encoder)
    assert [reasons[(0, d)][0] for d in (1, 2)] == ["selected", "relative_margin"]
    assert chosen(by_cross_encoder) == [3, 1], "best cross-encoder score first"
    by_cosine = select(table.drop_columns([SCORE, POSITIVE_SCORE]), relative_margin=0.05, num_negatives=2)
    assert outcome(by_cosine)[(0, 1)][0] == "relative_margin"
    assert chosen(by_cosine) == [2, 3]


def test_a_score_bound_reads_the_cross_encoder_scale():
    model = _TableCrossEncoder({("a0", "d1"): -3.0, ("a0", "d2"): 1.0, ("a0", "d3"): 2.0})
    table = rescorer(model, [(0, 0)])(candidates(ladder(0, 4)))
    reasons = outcome(select(table, min_score=0.0, max_score=1.5, num_negatives=3))
    assert [reasons[(0, d)][0] for d in (1, 2, 3)] == ["below_min_score", "selected", "above_max_score"]


def test_percentile_bounds_are_refused_with_a_cross_encoder():
    with pytest.raises(ValidationError, match="percentiles of the cosines"):
        MineConfig(cross_encoder="models/ce", max_score_percentile=75.0)
    with pytest.raises(ValidationError, match="percentiles of the cosines"):
        MineConfig(cross_encoder="models/ce", strategy="calibrated")


def test_a_folder_that_is_not_a_model_names_the_setting(tmp_path):
    config = MineConfig(cross_encoder=str(tmp_path / "nowhere"))
    texts = texts_of(pa.array(["x"]))
    with pytest.raises(ConfigError, match=r"mine.cross_encoder .* not a local model folder"):
        load_rescorer(config, pairs=pa.table({"anchor_idx": [0], "doc_idx": [0]}), anchor_texts=texts, doc_texts=texts)
    assert load_rescorer(MineConfig(), pairs=None, anchor_texts=texts, doc_texts=texts) is None
