"""The false-positive check's null: a positive is wrong only when it looks like a random document."""

from __future__ import annotations

import numpy as np
import pytest
from curation_world import WRONG_PAIR

from negminer.config import CurateConfig
from negminer.curation import curate_candidates
from negminer.curation.null import combined_p_values, fit_null, null_scores, null_verdicts

N_ANCHORS, TOPIC_DOCS, NOISE_DOCS, DIM, RANDOM_PAIRS = 120, 60, 2000, 32, 6


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def pool():
    """Each anchor has a topic of docs around it; its given positive is its topic's 41st most similar
    doc (ranked below ~40 to 60 closer docs: a hard positive), except RANDOM_PAIRS anchors whose positive is
    a random doc of another topic."""
    rng = np.random.default_rng(3)
    anchors = _unit(rng.normal(size=(N_ANCHORS, DIM)))
    topic = _unit(np.repeat(anchors, TOPIC_DOCS, axis=0) + 0.35 * rng.normal(size=(N_ANCHORS * TOPIC_DOCS, DIM)))
    docs = np.r_[topic, _unit(rng.normal(size=(NOISE_DOCS, DIM)))]
    scores = np.einsum("ad,ad->a", np.repeat(anchors, TOPIC_DOCS, axis=0), topic).reshape(N_ANCHORS, TOPIC_DOCS)
    positive = np.arange(N_ANCHORS) * TOPIC_DOCS + np.argsort(-scores, axis=1)[:, 40]
    wrong = np.arange(RANDOM_PAIRS) * 17 + 5
    positive[wrong] = len(topic) + rng.integers(0, NOISE_DOCS, RANDOM_PAIRS)
    return anchors, docs, positive, wrong


def _verdicts(anchors, docs, positive, order=None):
    order = np.arange(len(anchors)) if order is None else order
    anchor_hash = (np.arange(len(anchors), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))[order]
    pair_anchor = np.arange(len(anchors))
    score = np.einsum("ad,ad->a", anchors[order], docs[positive[order]])
    null = null_scores(
        pair_anchor,
        positive[order],
        score,
        anchor_vectors=anchors[order],
        doc_vectors=docs,
        anchor_hash=anchor_hash,
        doc_order=np.arange(len(docs)),
        samples=CurateConfig().null_samples,
        seed=0,
    )
    fit = fit_null(
        combined_p_values(null.p_anchor, null.z, null.pooled),
        null.pooled,
        max_share=CurateConfig().false_positive_max_share,
    )
    p, confidence = null_verdicts(null.p_anchor, null.z, fit)
    back = np.argsort(order)
    return p[back], confidence[back], fit


def test_a_random_document_positive_is_flagged_with_high_confidence(pool):
    anchors, docs, positive, wrong = pool
    p, confidence, fit = _verdicts(anchors, docs, positive)
    config = CurateConfig()
    assert np.all(p[wrong] >= config.false_positive_p_value)
    assert np.all(confidence[wrong] >= config.false_positive_confidence)
    assert 0 < fit.pi0 < 0.2


def test_a_low_ranked_related_positive_is_kept(pool):
    anchors, docs, positive, wrong = pool
    p, confidence, _ = _verdicts(anchors, docs, positive)
    related = np.setdiff1d(np.arange(N_ANCHORS), wrong)
    cosine = np.einsum("ad,ad->a", anchors, docs[positive])
    ranks = np.array([(docs @ anchors[a] > cosine[a]).sum() for a in related])
    assert np.median(ranks) >= 30  # hard positives: dozens of documents score above them
    config = CurateConfig()
    flagged = p[related] >= config.false_positive_p_value
    assert not flagged.any()  # they beat over 90% of the random documents
    excluded = flagged & (confidence[related] >= config.false_positive_confidence)
    assert not excluded.any()


def test_the_verdicts_do_not_depend_on_the_anchors_order(pool):
    anchors, docs, positive, _ = pool
    p, confidence, _ = _verdicts(anchors, docs, positive)
    order = np.random.default_rng(0).permutation(N_ANCHORS)
    p2, confidence2, _ = _verdicts(anchors, docs, positive, order)
    assert np.array_equal(p, p2) and np.array_equal(confidence, confidence2)


def test_a_clean_set_has_no_confident_flag():
    p = np.r_[np.full(50, 0.004), np.linspace(0.005, 0.3, 50)]  # hard positives, none below the median
    fit = fit_null(p, np.zeros(0))
    _, confidence = null_verdicts(p, np.zeros(len(p)), fit)
    assert fit.pi0 == 0 and not np.any(confidence > 0)


def test_counts_say_how_many_positives_were_flagged_kept_and_excluded(world):
    sure = curate_candidates(world.candidates, **world.kwargs(), config=CurateConfig())
    counts = sure.counts
    assert counts["false_positive"] == counts["false_positive_kept"] + counts["false_positive_excluded"]
    assert counts["false_positive_excluded"] == counts["pairs_excluded"] == len(sure.excluded_pairs)
    assert WRONG_PAIR in sure.excluded_pairs.tolist()
    assert "feature_false_positive_confidence" in sure.flagged.column_names
    # nothing is confident enough: every flag is kept in training and queued for audit
    unsure = curate_candidates(
        world.candidates,
        **world.kwargs(),
        config=CurateConfig(false_positive_confidence=1.0, false_positive_p_value=0.01),
    )
    fp = unsure.flagged.filter(np.asarray(unsure.flagged.column("kind").to_pylist()) == "false_positive")
    confidence = fp.column("feature_false_positive_confidence").to_numpy()
    assert unsure.counts["false_positive_excluded"] == int(np.sum(confidence >= 1.0))
    assert set(fp.filter(confidence < 1.0).column("action").to_pylist()) <= {"keep"}
    assert unsure.counts["false_positive_kept"] == int(np.sum(confidence < 1.0))


def test_loose_positives_are_kept_for_audit_not_excluded():
    """40% of the positives look random (NFCorpus-like: related by citation, not by content): far more
    than labels are plausibly wrong, so no confidence reaches the exclusion threshold."""
    rng = np.random.default_rng(1)
    p = np.r_[rng.uniform(0.001, 0.02, 600), rng.uniform(0, 1, 400)]
    config = CurateConfig()
    fit = fit_null(p, np.zeros(0), max_share=config.false_positive_max_share)
    _, confidence = null_verdicts(p, np.zeros(len(p)), fit)
    assert fit.pi0 > 0.3 and confidence.max() < config.false_positive_confidence
    sure = fit_null(p, np.zeros(0))  # without the cap the same positives would be excluded
    assert null_verdicts(p, np.zeros(len(p)), sure)[1].max() >= config.false_positive_confidence
