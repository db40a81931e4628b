"""Cross-validation without anchor leakage, cleanlab verdicts, the second view."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from negminer.config import CurateConfig
from negminer.curation import confident
from negminer.curation.confident import (
    anchor_folds,
    find_issues,
    fit_fold_models,
    informative_columns,
    predict_folds,
    second_view_adjust,
)
from negminer.curation.curate import anchor_families
from negminer.curation.judges import balance_prior

CURATE = CurateConfig()  # the defaults the library functions are given explicitly


def test_anchor_folds_are_seeded_and_deterministic():
    hashes = np.arange(1000, dtype=np.uint64) * np.uint64(2654435761)
    folds = anchor_folds(hashes, n_splits=5, seed=3)
    assert np.array_equal(folds, anchor_folds(hashes, n_splits=5, seed=3))
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    assert np.bincount(folds).min() > 150
    assert not np.array_equal(folds, anchor_folds(hashes, n_splits=5, seed=4))
    with pytest.raises(ValueError):
        anchor_folds(hashes, n_splits=1, seed=0)


def test_anchors_with_equal_text_share_a_family_and_fold():
    family, family_hash = anchor_families(["What is X?", "what  is x?", "Other"])
    assert family.tolist() == [0, 0, 2]
    folds = anchor_folds(family_hash, n_splits=3, seed=0)
    assert folds[0] == folds[1]


class _Recorder:
    """A classifier that remembers which anchors (feature column 0) it was trained on."""

    seen: ClassVar[list[tuple[set[int], set[int]]]] = []

    def fit(self, x, y, sample_weight=None):
        self.train = set(x[:, 0].astype(int).tolist())
        return self

    def predict_proba(self, x):
        _Recorder.seen.append((self.train, set(x[:, 0].astype(int).tolist())))
        return np.column_stack([np.full(len(x), 0.5), np.full(len(x), 0.5)])


def test_group_k_fold_never_trains_on_the_predicted_anchor(monkeypatch):
    rng = np.random.default_rng(0)
    anchor = np.repeat(np.arange(60), 10)
    features = np.column_stack([anchor, rng.normal(size=len(anchor))])
    labels = (np.arange(len(anchor)) % 10 == 0).astype(int)
    folds = anchor_folds(np.arange(60, dtype=np.uint64)[anchor], n_splits=4, seed=1)
    _Recorder.seen = []
    monkeypatch.setattr(confident, "make_classifier", lambda kind, seed: _Recorder())
    models = fit_fold_models(features, labels, folds, classifier=CURATE.classifier, seed=CURATE.seed)
    predict_folds(models, features, folds)
    assert len(_Recorder.seen) == 4
    for train, test in _Recorder.seen:
        assert train and test and not train & test
    assert set().union(*(test for _, test in _Recorder.seen)) == set(range(60))


@pytest.mark.parametrize("classifier", ["logistic_regression", "hist_gradient_boosting"])
def test_fold_models_learn_a_clear_signal_out_of_sample(classifier):
    rng = np.random.default_rng(1)
    n = 4000
    labels = (rng.random(n) < 0.1).astype(int)
    features = np.column_stack([labels + rng.normal(scale=0.5, size=n), rng.normal(size=n), np.full(n, np.nan)])
    folds = rng.integers(0, 5, n)
    models = fit_fold_models(features, labels, folds, classifier=classifier, seed=CURATE.seed)
    relevant = predict_folds(models, features, folds)
    assert relevant.shape == (n,) and ((relevant >= 0) & (relevant <= 1)).all()
    assert relevant[labels == 1].mean() > 2 * relevant[labels == 0].mean()
    assert models.columns.tolist() == [0, 1], "the empty column is left out"


def test_informative_columns_skip_constant_and_empty_ones():
    x = np.column_stack([np.arange(5.0), np.ones(5), np.full(5, np.nan), [np.nan, 1, 2, np.nan, 3]])
    assert informative_columns(x).tolist() == [0, 3]


@pytest.mark.parametrize("rule", ["confident_joint", "find_label_issues"])
def test_find_issues_flags_the_planted_mislabels(rule):
    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(500, int), np.ones(500, int)]
    p1 = np.r_[rng.uniform(0.0, 0.3, 500), rng.uniform(0.7, 1.0, 500)]
    labels[[3, 7]] = 1  # label 1, model sure it is 0
    labels[[600, 900]] = 0  # label 0, model sure it is 1
    p1[[3, 7]], p1[[600, 900]] = 0.01, 0.99
    issues = find_issues(labels, np.column_stack([1 - p1, p1]), rule=rule, batched_above=CURATE.batched_above)
    assert set(np.nonzero(issues.is_issue)[0].tolist()) >= {3, 7, 600, 900}
    assert issues.quality[[3, 7, 600, 900]].max() < np.median(issues.quality)
    assert issues.noise["confident_joint"][0][1] >= 2


def test_find_issues_batched_variant_agrees_on_the_obvious():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(3000, int), np.ones(3000, int)]
    p1 = np.r_[rng.uniform(0.0, 0.3, 3000), rng.uniform(0.7, 1.0, 3000)]
    labels[10] = 1
    issues = find_issues(
        labels, np.column_stack([1 - p1, p1]), rule="find_label_issues", batched_above=100, rows_per_batch=1000
    )
    assert issues.is_issue[10]


def test_find_issues_needs_both_labels():
    with pytest.raises(ValueError, match="both given positives"):
        find_issues(np.zeros(4, int), np.full((4, 2), 0.5), rule=CURATE.issue_rule, batched_above=CURATE.batched_above)


def test_second_view_raises_rows_whose_view_goes_with_relevance():
    rng = np.random.default_rng(4)
    relevant = rng.random(5000) < 0.2
    prob = np.where(relevant, 0.08, 0.02) * rng.uniform(0.5, 1.5, 5000)
    view = np.where(relevant, 0.7, 0.3) + rng.normal(scale=0.1, size=5000)
    adjusted = second_view_adjust(prob, view, labelled_rate=0.1)
    gain = adjusted / prob
    assert gain[relevant].mean() > 1.5 * gain[~relevant].mean()
    assert ((adjusted > 0) & (adjusted < 1)).all()
    same_bin = view < np.quantile(view, 0.05)  # the lowest of 20 quantile bins
    assert np.array_equal(np.argsort(adjusted[same_bin]), np.argsort(prob[same_bin]))


def test_balance_prior_keeps_ranking_and_centres_classes():
    label = np.r_[np.ones(10, int), np.zeros(990, int)]
    prob = np.linspace(0.001, 0.05, 1000)
    balanced = balance_prior(prob, label)
    assert np.array_equal(np.argsort(balanced), np.argsort(prob))
    assert balanced.max() > 0.5
