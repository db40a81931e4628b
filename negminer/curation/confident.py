"""Out-of-sample relevance and cleanlab's label issues for binary pair rows.

Contract: rows are binary examples (label 1: given positive, 0: mined candidate or random
document). :func:`anchor_folds` assigns every anchor to a fold by a seeded hash of its family
(anchors with the same normalised text), so an anchor's rows sit in exactly one fold.
:func:`fit_fold_models` trains one classifier per fold on the other folds' rows and
:func:`predict_folds` predicts each row with the model of its fold, which never saw its
anchor. :func:`second_view_adjust` folds in evidence that cannot enter the classifier
(similarity to the anchor's own positive) by EM on the unlabelled rows. :func:`find_issues`
hands labels and ``pred_probs`` to cleanlab: the confident joint's off-diagonal cells
(``cleanlab.count.compute_confident_joint``) or ``cleanlab.filter.find_label_issues``
(batched above ``batched_above`` rows), plus ``cleanlab.rank.get_label_quality_scores`` and
the latent noise estimates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np

from negminer.mining.strategies import pair_priority

logger = logging.getLogger(__name__)

Classifier = Literal["hist_gradient_boosting", "logistic_regression"]
IssueRule = Literal["confident_joint", "find_label_issues"]
# Rows per batch of cleanlab's batched finder (its memory bound; not a setting).
ISSUE_BATCH_ROWS = 1_000_000


class LabelIssues(NamedTuple):
    """cleanlab's verdict on every row."""

    is_issue: np.ndarray  # (n_rows,) bool: the given label is likely wrong
    quality: np.ndarray  # (n_rows,) float: label quality (self-confidence), low = suspicious
    noise: dict[str, Any]  # estimated noise rates (see :func:`noise_rates`)


def anchor_folds(family_hash: np.ndarray, *, n_splits: int, seed: int) -> np.ndarray:
    """Fold of each anchor (n_anchors,), from a seeded hash of its family's stable hash.

    Example:
        >>> anchor_folds(np.array([7, 7, 9], np.uint64), n_splits=2, seed=0).tolist()
        [0, 0, 1]
    """
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    mixed = pair_priority(family_hash.astype(np.uint64), np.zeros(len(family_hash), np.uint64), seed)
    return (mixed % np.uint64(n_splits)).astype(np.int64)


def make_classifier(kind: Classifier, *, seed: int):
    """A fresh scikit-learn binary classifier of `kind` with fixed hyperparameters."""
    if kind == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.1,
            max_leaf_nodes=31,
            min_samples_leaf=40,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=seed,
        )
    if kind == "logistic_regression":
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True),
            StandardScaler(),
            LogisticRegression(C=1.0, max_iter=2000),
        )
    raise ValueError(f"unknown classifier {kind!r}; use 'hist_gradient_boosting' or 'logistic_regression'")


class FoldModels(NamedTuple):
    """One classifier per fold, each trained on the other folds' rows."""

    columns: np.ndarray  # the informative feature columns the models were trained on
    models: dict[int, Any]  # fold -> fitted classifier, or the prior (float) of a one-class split


def fit_fold_models(
    features: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    classifier: Classifier,
    sample_weight: np.ndarray | None = None,
    seed: int,
    extra_folds: tuple[int, ...] = (),
) -> FoldModels:
    """Train the model of every fold in `folds` (and of `extra_folds`, absent from these rows).

    The model of fold k never sees a row of fold k, so it predicts fold k's rows, and rows of
    any other anchor in fold k, out of sample.
    """
    if len(features) != len(labels) or len(labels) != len(folds):
        raise ValueError("features, labels and folds must have the same number of rows")
    columns = informative_columns(features)
    features = features[:, columns]
    weight = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    models = {}
    for fold in sorted({*np.unique(folds).tolist(), *extra_folds}):
        train = folds != fold
        models[fold] = _fit(features[train], labels[train], weight[train], classifier, seed)
    return FoldModels(columns, models)


def predict_folds(models: FoldModels, features: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(n_rows,) probability that each row is relevant, from the model of the row's fold."""
    from threadpoolctl import threadpool_limits

    features = features[:, models.columns]
    relevant = np.empty(len(folds), np.float64)
    for fold in np.unique(folds):
        test = folds == fold
        model = models.models[int(fold)]
        if isinstance(model, float):
            relevant[test] = model
            continue
        with threadpool_limits(limits=1):
            relevant[test] = model.predict_proba(features[test])[:, 1]
    return relevant


def folds_can_train(labels: np.ndarray, folds: np.ndarray) -> bool:
    """Whether every fold's training split (the other folds) holds both labels.

    Otherwise :func:`fit_fold_models` keeps a constant prior for that fold,
    and cleanlab's verdicts on it are arbitrary.

    Example:
        >>> folds_can_train(np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1]))
        True
        >>> folds_can_train(np.array([1, 0, 1, 0]), np.zeros(4, np.int64))
        False
    """
    for fold in np.unique(folds):
        train = labels[folds != fold]
        if not ((train == 0).any() and (train == 1).any()):
            return False
    return True


def informative_columns(features: np.ndarray) -> np.ndarray:
    """Indices of the columns with at least two distinct finite values (others carry nothing)."""
    keep = []
    for j in range(features.shape[1]):
        column = features[:, j]
        finite = column[np.isfinite(column)]
        if len(finite) and finite.min() < finite.max():
            keep.append(j)
    return np.asarray(keep, np.int64)


def _fit(x_train: np.ndarray, y_train: np.ndarray, w_train: np.ndarray, classifier: Classifier, seed: int) -> Any:
    """A fitted classifier, or the training split's prior (float) when it holds one class."""
    if len(np.unique(y_train)) < 2:
        prior = float(y_train.mean()) if len(y_train) else 0.5
        logger.warning("a training split has one class only; predicting its prior %.3f", prior)
        return prior
    from threadpoolctl import threadpool_limits

    model = make_classifier(classifier, seed=seed)
    # OpenMP threads in gradient boosting slow down 30x on a busy machine; one thread is
    # fast, deterministic and leaves the other cores to the rest of the pipeline.
    step = model.steps[-1][0] + "__" if hasattr(model, "steps") else ""
    with threadpool_limits(limits=1):
        return model.fit(x_train, y_train, **{f"{step}sample_weight": w_train})


class SecondView(NamedTuple):
    """A learned second-view likelihood ratio per quantile bin (see :func:`second_view_adjust`)."""

    edges: np.ndarray  # (bins - 1,) bin edges of the second view
    ratio: np.ndarray  # (bins,) likelihood ratio of relevance in each bin


def second_view_adjust(
    prob: np.ndarray,
    view: np.ndarray,
    *,
    labelled_rate: float,
    bins: int = 20,
    iterations: int = 3,
) -> np.ndarray:
    """Fold a second view of unlabelled rows into their first-view probabilities.

    The second view (e.g. similarity to the anchor's own positive) cannot enter the
    classifier, because it is undefined for a single given positive. Instead its class-
    conditional densities are learned by EM on the unlabelled rows alone, with the first-view
    relevance ``prob / labelled_rate`` (Elkan & Noto's PU calibration) as the initial soft
    label, under conditional independence of the views given relevance; the odds of `prob`
    are then multiplied by the learned likelihood ratio of each row's bin
    (:func:`fit_second_view`, then :func:`apply_second_view`).

    Args:
        prob: (n,) first-view probability that the row is a given positive.
        view: (n,) finite second-view value of each row.
        labelled_rate: mean first-view probability of the given positives (PU constant c).
        bins: quantile bins of the second view.
        iterations: EM iterations.

    Returns:
        (n,) adjusted probabilities (same scale as `prob`).

    Example:
        >>> adjusted = second_view_adjust(np.array([0.02, 0.15, 0.02, 0.15]),
        ...                               np.array([0.2, 0.9, 0.3, 0.8]), labelled_rate=0.2, bins=2)
        >>> bool(adjusted[1] > 0.15 > 0.02 > adjusted[0])
        True
    """
    if len(prob) == 0:
        return prob
    learned = fit_second_view(prob, view, labelled_rate=labelled_rate, bins=bins, iterations=iterations)
    return apply_second_view(learned, prob, view)


def fit_second_view(
    prob: np.ndarray, view: np.ndarray, *, labelled_rate: float, bins: int = 20, iterations: int = 3
) -> SecondView:
    """Learn the second view's likelihood ratio per bin by EM on unlabelled rows (non-empty)."""
    rho = np.clip(prob / max(labelled_rate, 1e-12), 1e-6, 1 - 1e-6)
    edges = np.quantile(view, np.linspace(0, 1, bins + 1)[1:-1])
    which = np.searchsorted(edges, view)
    posterior = rho
    ratio = np.ones(bins)
    for _ in range(iterations):
        relevant = (np.bincount(which, posterior, bins) + 1e-3) / (posterior.sum() + 1e-3 * bins)
        other = (np.bincount(which, 1 - posterior, bins) + 1e-3) / ((1 - posterior).sum() + 1e-3 * bins)
        ratio = relevant / other
        posterior = rho * ratio[which] / (rho * ratio[which] + 1 - rho)
    return SecondView(edges, ratio)


def apply_second_view(learned: SecondView, prob: np.ndarray, view: np.ndarray) -> np.ndarray:
    """`prob` with its odds multiplied by the learned ratio of each row's second-view bin."""
    odds = prob / np.clip(1 - prob, 1e-12, None) * learned.ratio[np.searchsorted(learned.edges, view)]
    return odds / (1 + odds)


def find_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    rule: IssueRule,
    batched_above: int,
    rows_per_batch: int = ISSUE_BATCH_ROWS,
) -> LabelIssues:
    """cleanlab's label issues, label quality scores and estimated noise rates.

    ``rule="confident_joint"`` flags every row in an off-diagonal cell of cleanlab's confident
    joint (``cleanlab.count.compute_confident_joint``): its probability for the other class
    reaches that class's threshold, the mean probability of the rows labelled with it
    (Northcutt et al., 2021, eq. 1). ``rule="find_label_issues"`` calls
    ``cleanlab.filter.find_label_issues`` (pruning by noise rate), which further drops rows
    whose most likely class is their label; above `batched_above` rows it calls
    ``find_label_issues_batched`` instead, which keeps memory flat.

    Args:
        labels: (n_rows,) 0/1 given labels.
        pred_probs: (n_rows, 2) out-of-sample probabilities.
        rule: which cleanlab verdict flags a row.
        batched_above: rows above which the batched finder is used (find_label_issues rule).
        rows_per_batch: rows per batch of the batched finder.

    Example:
        >>> issues = find_issues(labels, pred_probs, rule="confident_joint", batched_above=5_000_000)  # doctest: +SKIP
    """
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError("curation needs both given positives (label 1) and candidates (label 0)")
    if rule == "confident_joint":
        is_issue = _off_diagonal(labels, pred_probs)
    elif rule == "find_label_issues":
        is_issue = _pruned(labels, pred_probs, batched_above=batched_above, rows_per_batch=rows_per_batch)
    else:
        raise ValueError(f"unknown rule {rule!r}; use 'confident_joint' or 'find_label_issues'")
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    return LabelIssues(np.asarray(is_issue, bool), quality, noise_rates(labels, pred_probs))


def confident_issues(
    labels: np.ndarray, pred_probs: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(is_issue, quality): rows in an off-diagonal cell of the confident joint under given
    per-class `thresholds` (from the rows a model was fitted on), and their self-confidence.

    With the thresholds of the same rows this is :func:`find_issues`' ``confident_joint`` rule;
    with a sample's thresholds it judges any other rows the same way, shard by shard.
    """
    from cleanlab.count import compute_confident_joint
    from cleanlab.rank import get_label_quality_scores

    _, indices = compute_confident_joint(
        labels, pred_probs, thresholds=thresholds, return_indices_of_off_diagonals=True
    )
    mask = np.zeros(len(labels), bool)
    mask[np.asarray(indices, np.int64)] = True
    return mask, get_label_quality_scores(labels, pred_probs, method="self_confidence")


def _off_diagonal(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    from cleanlab.count import compute_confident_joint

    _, indices = compute_confident_joint(labels, pred_probs, return_indices_of_off_diagonals=True)
    mask = np.zeros(len(labels), bool)
    mask[np.asarray(indices, np.int64)] = True
    return mask


def _pruned(labels: np.ndarray, pred_probs: np.ndarray, *, batched_above: int, rows_per_batch: int) -> np.ndarray:
    if len(labels) > batched_above:
        from cleanlab.experimental.label_issues_batched import find_label_issues_batched

        return find_label_issues_batched(
            labels, pred_probs, batch_size=rows_per_batch, n_jobs=1, verbose=False, return_mask=True
        )
    from cleanlab.filter import find_label_issues

    return find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)


def few_candidates_relevant(noise: Mapping[str, Any] | None, below: float) -> bool | None:
    """Whether curation estimated fewer than `below` of the candidates relevant; None without an estimate.

    The ``auto`` settings (``mine.strategy``, ``curate.false_negative_action``) both ask this of
    :func:`noise_rates`' ``negatives_relevant``.

    Example:
        >>> few_candidates_relevant({"negatives_relevant": 0.04}, 0.1)
        True
    """
    relevant = (noise or {}).get("negatives_relevant")
    return None if relevant is None else relevant < below


def noise_rates(labels: np.ndarray, pred_probs: np.ndarray) -> dict[str, Any]:
    """cleanlab's latent estimates: how many given labels are likely wrong, per class.

    ``negatives_relevant``: estimated share of candidates that are relevant (P(true=1 | label=0));
    ``positives_irrelevant``: estimated share of given positives that are not (P(true=0 | label=1));
    ``positive_threshold`` / ``negative_threshold``: cleanlab's per-class confidence thresholds.
    """
    from cleanlab.count import compute_confident_joint, estimate_latent

    joint = compute_confident_joint(labels, pred_probs)
    _, _, inverse = estimate_latent(joint, labels)
    return {
        "negatives_relevant": round(float(inverse[1][0]), 6),
        "positives_irrelevant": round(float(inverse[0][1]), 6),
        "negative_threshold": round(float(pred_probs[labels == 0, 0].mean()), 6),
        "positive_threshold": round(float(pred_probs[labels == 1, 1].mean()), 6),
        "confident_joint": [[int(v) for v in row] for row in joint],
    }
