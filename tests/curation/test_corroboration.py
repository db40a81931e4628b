"""Corroboration: a random-looking positive that a neighbouring anchor names too stays in training."""

from __future__ import annotations

import numpy as np
from curation_world import CORROBORATING, WRONG_PAIR, build_world

from negminer.config import CurateConfig
from negminer.curation import curate_candidates
from negminer.curation.corroboration import corroborated_positives, corroboration_scale
from negminer.curation.rows import PairRows, group_positives


def _rows(anchor: list[int], doc: list[int], label: list[int]) -> PairRows:
    n = len(anchor)
    return PairRows(
        anchor=np.asarray(anchor, np.int64),
        doc=np.asarray(doc, np.int64),
        label=np.asarray(label, np.int8),
        pair_idx=np.where(np.asarray(label) == 1, np.arange(n), -1),
        candidate_row=np.full(n, -1, np.int64),
        rank=np.zeros(n, np.int64),
        score=np.zeros(n, np.float32),
        tail=np.zeros(n, bool),
    )


def test_a_positive_is_corroborated_only_by_its_nearest_anchors():
    # anchors 0 and 1 both name doc 5; anchor 2 names doc 5 too but is not among anchor 0's nearest 1
    family = np.arange(4)
    positives = group_positives(np.array([0, 1, 2, 3]), np.array([5, 5, 5, 7]), family, n_docs=10)
    neighbors = np.array([[1, 2], [0, 2], [3, 0], [2, -1]], np.int32)
    rows = _rows([0, 1, 3, 0], [5, 5, 7, 5], [1, 1, 1, 0])
    corroborated, chance = corroborated_positives(rows, positives, neighbors, k=1)
    assert corroborated.tolist() == [True, True, False, False], "a candidate row is never corroborated"
    # doc 5 has two other owners among 4 anchor families: 1 - (1 - 1/4)^2
    np.testing.assert_allclose(chance[:2], 1 - 0.75**2)
    assert chance[2] == 0.0, "doc 7 has no other owner: a random document cannot be corroborated through it"
    none, _ = corroborated_positives(rows, positives, neighbors, k=0)
    assert not none.any()


def test_the_scale_is_the_likelihood_ratio_capped_at_one():
    corroborated = np.array([True, True, False])
    scale = corroboration_scale(corroborated, np.array([0.01, 0.9, 0.01]), share=0.5)
    assert scale.tolist() == [0.02, 1.0, 1.0]
    assert corroboration_scale(corroborated, np.array([0.01, 0.01, 0.01]), share=0.0).tolist() == [1.0] * 3


def test_a_wrong_looking_positive_two_neighbouring_anchors_agree_on_is_kept_for_review(tmp_path):
    world = build_world(tmp_path, corroborated_wrong_pair=True)
    corroborating = CurateConfig()  # on by default
    assert corroborating.false_positive_corroborating_anchors > 0
    kept = curate_candidates(world.candidates, **world.kwargs(), config=corroborating)
    flagged = kept.flagged.filter(np.asarray(kept.flagged.column("kind").to_pylist()) == "false_positive")
    by_pair = dict(zip(flagged.column("pair_idx").to_pylist(), flagged.to_pylist(), strict=True))
    for pair in (WRONG_PAIR, CORROBORATING):
        assert by_pair[pair]["feature_corroborated"] == 1.0, "still flagged, queued for review"
        assert by_pair[pair]["action"] == "keep"
        assert by_pair[pair]["feature_false_positive_confidence"] < corroborating.false_positive_confidence
    assert not {WRONG_PAIR, CORROBORATING} & set(kept.excluded_pairs.tolist())
    assert 0 < kept.noise["false_positive_null"]["corroborated_share"] < 1

    off = CurateConfig(false_positive_corroborating_anchors=0)
    alone = curate_candidates(world.candidates, **world.kwargs(), config=off)
    assert {WRONG_PAIR, CORROBORATING} <= set(alone.excluded_pairs.tolist())
