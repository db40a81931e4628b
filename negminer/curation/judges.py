"""The two judges of curation: fitted on described rows, then judging any rows of the same pool.

Contract: :func:`fit_judges` fits, on a set of :class:`Described` rows (cross-validated by
anchor family), the candidate-side judge (rows unweighted, second view on, verdicts on the
scored window) and the false-positive check's null (:mod:`negminer.curation.null`: the pooled
random-document scores and the density of the given positives' p-values), and keeps what their
verdicts need: one model per fold, the second view's learned ratio, the prior factor,
cleanlab's per-class thresholds, the false-negative quantile of the given positives'
relevance and the null. :func:`judge` gives the verdicts on any described rows: a row is
predicted by the model of its anchor's fold, which never saw that fold, so the rows the judges
were fitted on get their cross-validated verdicts and rows of other anchors (another shard) are
judged alike. A given positive is flagged ``false_positive`` when its p-value under its
anchor's random documents reaches ``false_positive_p_value``, with the confidence (local false
discovery rate) that :func:`negminer.curation.policy.apply_policies` turns into an action.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np

from negminer.config import CurateConfig
from negminer.curation.confident import (
    FoldModels,
    LabelIssues,
    SecondView,
    apply_second_view,
    confident_issues,
    find_issues,
    fit_fold_models,
    fit_second_view,
    folds_can_train,
    noise_rates,
    predict_folds,
)
from negminer.curation.corroboration import corroboration_scale
from negminer.curation.null import NullFit, combined_p_values, fit_null, null_verdicts, stratified_p_values
from negminer.curation.policy import Scored
from negminer.curation.rows import PairRows
from negminer.errors import ConfigError

logger = logging.getLogger(__name__)


class Described(NamedTuple):
    """Rows with their features, near-duplicate flags and folds: what the judges need."""

    rows: PairRows
    features: dict[str, np.ndarray]  # every feature, positive_similarity included
    matrix: np.ndarray  # the classifier's input (features without positive_similarity)
    duplicate: np.ndarray
    positive_sim: np.ndarray
    folds: np.ndarray
    content_order: np.ndarray  # the rows ordered by their anchor's and document's text hashes
    null_p: np.ndarray  # per-anchor null p-value of each given positive's cosine (NaN for label-0 rows)
    null_z: np.ndarray  # each given positive's cosine standardised by its anchor's null (NaN for label 0)
    null_pooled: np.ndarray  # sorted standardised null scores of the rows' anchors (not per row)


class SideModel(NamedTuple):
    """One judge, fitted on a set of rows: its fold models and the statistics of its verdicts."""

    folds: FoldModels
    second_view: SecondView | None  # candidate side: learned on the fitted candidates
    odds_factor: float  # label-0 weight / label-1 weight of the fitted rows (equal priors)
    thresholds: np.ndarray | None  # cleanlab's per-class thresholds; None: no verdicts (one label only)
    labelled_rate: float


class Judges(NamedTuple):
    candidate_side: SideModel | None  # None: curation refused to judge (skipped)
    null: NullFit | None  # the false-positive check's null and confidence curve
    false_negative_threshold: float | None  # relevance of the given positives at the quantile
    noise: dict[str, Any]
    skipped: str | None
    population: SideModel | None = None  # false_positive_score "relevance": the judge whose relevance is placed
    corroborated_share: float = 0.0  # share of the fitted given positives a near-neighbour anchor names too


def fit_judges(described: Described, *, n_docs: int, family: np.ndarray, config: CurateConfig) -> Judges:
    """Fit both judges on the described rows (cross-validated by anchor family)."""
    described = _in_content_order(described)  # the solver's result must not depend on row order
    rows = described.rows
    shortfall = _fold_shortfall(rows, described.folds, family)
    if shortfall is not None:
        logger.warning(shortfall)
        noise = {"negatives_relevant": None, "positives_irrelevant": None, "skipped": shortfall}
        return Judges(None, None, None, noise, shortfall)
    window = ~rows.tail & (rows.rank < config.max_rank)
    extra = tuple(range(config.n_splits))
    candidate_side, candidate_noise = _fit_side(described, config, window=window, second_view=True, extra=extra)
    population = None
    if config.false_positive_score == "relevance":
        weight = _tail_weight(rows, n_docs, config)
        population, _ = _fit_side(described, config, weight=weight, extra=extra, cleanlab=False)
    p_value = _positive_p_values(described, population, n_docs=n_docs, config=config)
    pooled = described.null_pooled if population is None else np.zeros(0, np.float32)
    null = fit_null(p_value, pooled, max_share=config.false_positive_max_share)
    relevance = _side_relevance(candidate_side, described)
    window_positive = (rows.label == 1) & (rows.rank < config.max_rank)
    threshold = None
    if config.false_negative_quantile is not None and window_positive.any():
        threshold = float(np.quantile(relevance[window_positive], config.false_negative_quantile))
    is_pos = rows.label == 1
    corroborated_share = float(described.features["corroborated"][is_pos].mean()) if is_pos.any() else 0.0
    noise = {
        "negatives_relevant": candidate_noise["negatives_relevant"],
        "positives_irrelevant": round(null.pi0, 6),
        "candidate_side": candidate_noise,
        "false_positive_null": {
            "samples": config.null_samples,
            "random_positives": round(null.pi0, 6),
            "confidence_scale": round(min(1.0, config.false_positive_max_share / null.pi0) if null.pi0 else 1.0, 6),
            "corroborated_share": round(corroborated_share, 6),
        },
    }
    return Judges(candidate_side, null, threshold, noise, None, population, corroborated_share)


def _in_content_order(described: Described) -> Described:
    order = described.content_order
    return Described(
        PairRows(*(field[order] for field in described.rows)),
        {name: values[order] for name, values in described.features.items()},
        described.matrix[order],
        described.duplicate[order],
        described.positive_sim[order],
        described.folds[order],
        np.arange(len(order)),
        described.null_p[order],
        described.null_z[order],
        described.null_pooled,
    )


def judge(described: Described, judges: Judges, *, n_docs: int, config: CurateConfig, fitted_rows: bool) -> Scored:
    """The verdicts of both judges on the described rows.

    `fitted_rows` says the rows are those the judges were fitted on (one pass over every
    anchor); only then can the ``find_label_issues`` rule rank them.
    """
    rows, duplicate = described.rows, described.duplicate
    if judges.skipped is not None:
        return _unjudged(rows, described.features, duplicate, judges.skipped)
    window = ~rows.tail & (rows.rank < config.max_rank)
    negative_side = _judge_side(judges.candidate_side, described, config, scope=window, fitted_rows=fitted_rows)
    is_pos = rows.label == 1
    p_value, confidence = np.full(len(is_pos), np.nan), np.full(len(is_pos), np.nan)
    if judges.population is None:
        p_value[is_pos], confidence[is_pos] = null_verdicts(
            described.null_p[is_pos], described.null_z[is_pos], judges.null
        )
    else:
        placed = _positive_p_values(described, judges.population, n_docs=n_docs, config=config)
        p_value[is_pos], confidence[is_pos] = null_verdicts(placed, np.zeros(len(placed)), judges.null)
    confidence[is_pos] *= corroboration_scale(
        described.features["corroborated"][is_pos] > 0,
        described.features["corroboration_chance"][is_pos],
        judges.corroborated_share,
    )
    relevance = negative_side.relevance
    candidate = (rows.label == 0) & ~rows.tail
    false_negative = candidate & negative_side.issues.is_issue
    if judges.false_negative_threshold is not None:
        false_negative |= candidate & (negative_side.relevance >= judges.false_negative_threshold)
    flags = {
        "false_negative": false_negative & ~duplicate,  # one kind per row: a near-duplicate's own policy rules
        "false_positive": is_pos & (p_value >= config.false_positive_p_value),
        "near_duplicate": duplicate,
    }
    quality = np.where(is_pos, 1.0 - confidence, negative_side.issues.quality)
    features = {**described.features, "null_p_value": p_value, "false_positive_confidence": confidence}
    noise = dict(judges.noise)
    return Scored(rows, features, relevance, negative_side.relevance, quality, flags, noise, confidence=confidence)


def _fold_shortfall(rows: PairRows, folds: np.ndarray, family: np.ndarray) -> str | None:
    """Why the cross-validation cannot judge these rows, or None when it can."""
    if folds_can_train(rows.label, folds):
        return None
    anchors = np.unique(rows.anchor[rows.label == 1])
    n_folds = len(np.unique(folds[rows.label == 1]))
    return (
        "curation needs anchors in at least 2 cross-validation folds, each holding given positives and "
        f"candidates; got {len(anchors)} anchor(s) with {len(np.unique(family[anchors]))} distinct text(s) "
        f"in {n_folds} fold(s): nothing judged (no false_negative or false_positive flags; only near-duplicates, "
        "which need no model, are flagged)"
    )


def _unjudged(rows: PairRows, features: dict[str, np.ndarray], duplicate: np.ndarray, reason: str) -> Scored:
    """Scored rows without a model's verdict: unknown relevance and quality, near-duplicate flags only."""
    unknown = np.full(len(rows.label), np.nan)
    flags = {
        "false_negative": np.zeros(len(rows.label), bool),
        "false_positive": np.zeros(len(rows.label), bool),
        "near_duplicate": duplicate,
    }
    noise = {"negatives_relevant": None, "positives_irrelevant": None, "skipped": reason}
    return Scored(rows, features, unknown, unknown.copy(), unknown.copy(), flags, noise, skipped=reason)


def _positive_p_values(
    described: Described, population: SideModel | None, *, n_docs: int, config: CurateConfig
) -> np.ndarray:
    """Each given positive's p-value among its anchor's random documents (by cosine, or by the
    population judge's relevance against the window and tail samples)."""
    is_pos = described.rows.label == 1
    if population is None:
        return combined_p_values(described.null_p[is_pos], described.null_z[is_pos], described.null_pooled)
    rows = described.rows
    relevance = _side_relevance(population, described)
    window = (rows.label == 0) & ~rows.tail & (rows.rank < config.max_rank)
    return stratified_p_values(rows.anchor, relevance, rows.label, window, rows.tail, n_docs=n_docs)


def _tail_weight(rows: PairRows, n_docs: int, config: CurateConfig) -> np.ndarray:
    """Tail samples weighted up to stand for the whole pool outside the scored window."""
    return np.where(rows.tail, max(1.0, (n_docs - config.max_rank) / max(config.tail_samples, 1)), 1.0)


class _Judgement(NamedTuple):
    relevance: np.ndarray  # balanced-prior probability that the row is relevant
    issues: LabelIssues


def _fit_side(
    described: Described,
    config: CurateConfig,
    *,
    weight: np.ndarray | None = None,
    window: np.ndarray | None = None,
    second_view: bool = False,
    extra: tuple[int, ...] = (),
    cleanlab: bool = True,
) -> tuple[SideModel, dict[str, Any]]:
    """One judge fitted on the described rows, and cleanlab's noise estimates on its `window` rows."""
    rows = described.rows
    models = fit_fold_models(
        described.matrix,
        rows.label,
        described.folds,
        classifier=config.classifier,
        sample_weight=weight,
        seed=config.seed,
        extra_folds=extra,
    )
    prob = predict_folds(models, described.matrix, described.folds)
    learned, labelled_rate = None, 1.0
    if second_view and config.second_view:
        learned, labelled_rate = _fit_second_view(prob, described.positive_sim, rows, config.max_rank)
        prob = _apply_second_view(prob, described.positive_sim, rows, learned)
    factor = _odds_factor(rows.label, weight)
    if not cleanlab:  # only the relevance is wanted
        return SideModel(models, learned, factor, None, labelled_rate), {}
    prob = _balance(prob, factor)
    scope = np.ones(len(prob), bool) if window is None else window
    missing = _missing_label(rows.label[scope], config.max_rank)
    if missing is not None:
        logger.warning(missing)
        return SideModel(models, learned, factor, None, labelled_rate), dict(_NO_NOISE)
    from cleanlab.count import get_confident_thresholds

    labels, pred_probs = rows.label[scope].astype(np.int64), np.column_stack([1.0 - prob, prob])[scope]
    thresholds = get_confident_thresholds(labels, pred_probs)
    return SideModel(models, learned, factor, thresholds, labelled_rate), noise_rates(labels, pred_probs)


def _side_relevance(side: SideModel, described: Described) -> np.ndarray:
    """The judge's balanced-prior relevance of every described row."""
    prob = predict_folds(side.folds, described.matrix, described.folds)
    if side.second_view is not None:
        prob = _apply_second_view(prob, described.positive_sim, described.rows, side.second_view)
    return _balance(prob, side.odds_factor)


def _judge_side(
    side: SideModel, described: Described, config: CurateConfig, *, scope: np.ndarray | None = None, fitted_rows: bool
) -> _Judgement:
    """One judge's relevance and cleanlab's verdict on the `scope` rows."""
    rows = described.rows
    prob = _side_relevance(side, described)
    scope = np.ones(len(prob), bool) if scope is None else scope
    quality = np.where(rows.label == 1, prob, 1.0 - prob)
    if side.thresholds is None or not scope.any():
        return _Judgement(prob, LabelIssues(np.zeros(len(prob), bool), quality, dict(_NO_NOISE)))
    labels, pred_probs = rows.label[scope].astype(np.int64), np.column_stack([1.0 - prob, prob])[scope]
    if config.issue_rule == "find_label_issues":
        if not fitted_rows:
            raise ConfigError("curate.issue_rule find_label_issues ranks every row at once; use confident_joint")
        found = find_issues(labels, pred_probs, rule=config.issue_rule, batched_above=config.batched_above)
        found_issue, found_quality = found.is_issue, found.quality
    else:
        found_issue, found_quality = confident_issues(labels, pred_probs, side.thresholds)
    is_issue = np.zeros(len(prob), bool)
    is_issue[scope] = found_issue
    quality[scope] = found_quality
    return _Judgement(prob, LabelIssues(is_issue, quality, {}))


_NO_NOISE = {"negatives_relevant": None, "positives_irrelevant": None}  # cleanlab had nothing to estimate from


def _missing_label(scoped_labels: np.ndarray, max_rank: int) -> str | None:
    """Why cleanlab cannot judge the scored window (it needs both labels), or None when it can."""
    if (scoped_labels == 1).any() and (scoped_labels == 0).any():
        return None
    missing = "given positive" if (scoped_labels == 0).any() else "candidate"
    return (
        f"no {missing} ranks below max_rank={max_rank}: no candidate-side label issues (cleanlab needs "
        "both labels there); candidates keep the model's relevance"
    )


def _odds_factor(label: np.ndarray, weight: np.ndarray | None) -> float:
    weight = np.ones(len(label)) if weight is None else weight
    ones = max(float(weight[label == 1].sum()), 1.0)
    zeros = max(float(weight[label == 0].sum()), 1.0)
    return zeros / ones


def _balance(prob: np.ndarray, factor: float) -> np.ndarray:
    odds = prob / np.clip(1.0 - prob, 1e-12, None) * factor
    return odds / (1.0 + odds)


def balance_prior(prob: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Probabilities re-expressed for equal class priors: odds × (label-0 weight / label-1 weight).

    With one given positive per hundred candidates every probability sits far below 0.5, and
    cleanlab, which only calls a label wrong when the prediction disagrees with it, would
    flag no candidate and nearly every positive. Rescaling the odds changes no ranking.
    """
    return _balance(prob, _odds_factor(label, weight))


def _second_view_rows(rows: PairRows, positive_sim: np.ndarray) -> np.ndarray:
    return (rows.label == 0) & ~rows.tail & np.isfinite(positive_sim)


def _fit_second_view(
    prob: np.ndarray, positive_sim: np.ndarray, rows: PairRows, max_rank: int
) -> tuple[SecondView | None, float]:
    """The second view learned on the candidates, and the given positives' mean probability."""
    window_positive = (rows.label == 1) & (rows.rank < max_rank)
    reference = window_positive if window_positive.any() else rows.label == 1
    labelled_rate = float(prob[reference].mean())
    target = _second_view_rows(rows, positive_sim)
    if not target.any():
        return None, labelled_rate
    return fit_second_view(prob[target], positive_sim[target], labelled_rate=labelled_rate), labelled_rate


def _apply_second_view(
    prob: np.ndarray, positive_sim: np.ndarray, rows: PairRows, learned: SecondView | None
) -> np.ndarray:
    """Candidates' probabilities adjusted by their similarity to the anchor's positives."""
    target = _second_view_rows(rows, positive_sim)
    out = prob.copy()
    if learned is not None and target.any():
        out[target] = apply_second_view(learned, prob[target], positive_sim[target])
    return out
