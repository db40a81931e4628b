"""The curation entry point: score every pair, find likely-wrong labels, act by policy.

Contract of :func:`curate_candidates`: takes the candidate table of
:mod:`negminer.mining.search`, the pairs of :mod:`negminer.storage.inputs`, the anchor and
document vectors and texts, and returns a :class:`CurationResult`:

* ``candidates``: the input table plus ``relevance`` (float32, out-of-sample probability at
  equal class priors that the pair is relevant; null for rows not scored) and
  ``flagged_false_negative`` (bool: a
  candidate flagged ``false_negative`` or ``near_duplicate`` whose action is drop or
  quarantine; selection must skip it);
* ``false_positive_pairs`` (pair_idx flagged ``false_positive``), with
  ``false_positive_action``, and ``excluded_pairs`` (those of them to leave out of training);
* ``flagged``: the audit table for ``flagged.parquet`` (:func:`negminer.curation.policy.flagged_table`);
* ``pair_scores``: ``pair_idx``, ``relevance`` and ``quality`` of every given pair;
* ``counts`` (rows scored, flags by kind, exclusions, ``skipped``) and ``noise`` (cleanlab's
  estimates).

When the anchor-grouped cross-validation cannot train (every anchor in one fold: a single
anchor, one anchor family, or a few anchors that hash alike), curation refuses to judge
rather than flag by chance: no ``false_negative`` or ``false_positive`` flags (near-duplicates,
which need no model, are still flagged), ``relevance`` is null, ``counts["skipped"]`` is 1,
``noise["skipped"]`` says why, and a warning is logged.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import CurateConfig
from negminer.curation.confident import (
    LabelIssues,
    anchor_folds,
    find_issues,
    folds_can_train,
    out_of_sample_probabilities,
    second_view_adjust,
)
from negminer.curation.duplicates import near_duplicates
from negminer.curation.features import pair_features
from negminer.curation.policy import CurationResult, Scored, apply_policies
from negminer.curation.rows import PairRows, group_positives, pair_rows
from negminer.mining.search import CANDIDATE_SCHEMA
from negminer.textkeys import text_key

logger = logging.getLogger(__name__)


_CANDIDATE_COLUMNS = set(CANDIDATE_SCHEMA.names)  # the search stage's contract


def curate_candidates(
    candidates: pa.Table,
    *,
    pairs: pa.Table,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_texts: list[str],
    doc_texts: list[str],
    config: CurateConfig = CurateConfig(),
    anchor_ids: list[str] | None = None,
    doc_ids: list[str] | None = None,
) -> CurationResult:
    """Flag likely false negatives, false positives and near-duplicates, and apply the policies.

    Args:
        candidates: candidate table (search contract), sorted by anchor then rank.
        pairs: table with ``pair_idx``, ``anchor_idx``, ``doc_idx`` (the given positives).
        anchor_vectors: (n_anchors, dim) normalised float32, row = anchor_idx.
        doc_vectors: (n_docs, dim) normalised float32, row = doc_idx.
        anchor_texts: n_anchors texts, by anchor_idx.
        doc_texts: n_docs texts, by doc_idx.
        config: curation settings.
        anchor_ids, doc_ids: optional ids by *_idx, copied into the flagged table.

    Returns:
        CurationResult (see the module docstring).

    Example:
        >>> result = curate_candidates(cands, pairs=pairs, anchor_vectors=a, doc_vectors=d,
        ...                            anchor_texts=at, doc_texts=dt)  # doctest: +SKIP
        >>> result.counts["false_negative"]  # doctest: +SKIP
    """
    _validate(candidates, pairs, anchor_vectors, doc_vectors, anchor_texts, doc_texts)
    _log_beyond_window(candidates, config.max_rank)
    start = time.perf_counter()
    scored = score_pairs(
        candidates,
        pairs=pairs,
        anchor_vectors=anchor_vectors,
        doc_vectors=doc_vectors,
        anchor_texts=anchor_texts,
        doc_texts=doc_texts,
        config=config,
    )
    result = apply_policies(scored, candidates, config=config, anchor_ids=anchor_ids, doc_ids=doc_ids)
    logger.info("curation: %s in %.1fs", result.counts, time.perf_counter() - start)
    return result


def _log_beyond_window(candidates: pa.Table, max_rank: int) -> None:
    """Say how many candidates curation leaves unjudged: the table is deeper than the search
    depth by the largest number of positives per anchor family, so max_rank = search depth
    leaves its last ranks unscored, and selection may still take them."""
    rank = candidates.column("rank")
    beyond = pc.and_(pc.greater_equal(rank, max_rank), pc.invert(candidates.column("is_positive")))
    count = pc.sum(beyond).as_py() or 0
    if count:
        depth = pc.max(rank).as_py() + 1
        logger.info(
            "curation: %d of %d candidate rows (positives aside) rank at or beyond max_rank=%d in a table %d ranks "
            "deep; the model does not judge them and they stay eligible as negatives "
            "(curate.max_rank: %d judges every row)",
            count,
            candidates.num_rows,
            max_rank,
            depth,
            depth,
        )


def score_pairs(
    candidates: pa.Table,
    *,
    pairs: pa.Table,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_texts: list[str],
    doc_texts: list[str],
    config: CurateConfig = CurateConfig(),
) -> Scored:
    """Rows, features, out-of-sample relevance, cleanlab verdicts and flags by kind.

    Two cross-validated models share the rows and features. The candidate-side model (rows
    unweighted) judges candidates: which mined negatives look like given positives. The
    population-side model (tail samples weighted up to stand for the whole pool) judges given
    positives: which look like a random document rather than a relevant one. cleanlab runs
    once on each model's probabilities; a row's relevance and quality come from the model
    that judges its side.
    """
    family, family_hash = anchor_families(anchor_texts)
    pair_anchor = pairs.column("anchor_idx").to_numpy().astype(np.int64)
    pair_doc = pairs.column("doc_idx").to_numpy().astype(np.int64)
    positives = group_positives(pair_anchor, pair_doc, family, len(doc_vectors))
    rows = pair_rows(
        candidates,
        pair_anchor=pair_anchor,
        pair_doc=pair_doc,
        anchor_vectors=anchor_vectors,
        doc_vectors=doc_vectors,
        max_rank=config.max_rank,
        tail_samples=config.tail_samples,
        seed=config.seed,
    )
    rows = rows._replace(pair_idx=np.where(rows.pair_idx >= 0, _pair_ids(pairs)[rows.pair_idx.clip(0)], -1))
    features = pair_features(
        rows,
        candidates=candidates,
        positives=positives,
        anchor_vectors=anchor_vectors,
        doc_vectors=doc_vectors,
        anchor_texts=anchor_texts,
        doc_texts=doc_texts,
        neighbor_anchors=config.neighbor_anchors,
        cross_anchor=config.cross_anchor,
        seed=config.seed,
    )
    if config.cross_encoder is not None:
        features["cross_encoder"] = _cross_encoder_feature(rows, anchor_texts, doc_texts, config)
    folds = anchor_folds(family_hash, n_splits=config.n_splits, seed=config.seed)[rows.anchor]
    matrix = np.column_stack(list(features.values()))
    duplicate, positive_sim = near_duplicates(rows, positives, doc_vectors, threshold=config.near_duplicate_threshold)
    features["positive_similarity"] = positive_sim
    shortfall = _fold_shortfall(rows, folds, family)
    if shortfall is not None:
        logger.warning(shortfall)
        return _unjudged(rows, features, duplicate, shortfall)
    weight = np.where(rows.tail, max(1.0, (len(doc_vectors) - config.max_rank) / max(config.tail_samples, 1)), 1.0)
    window = ~rows.tail & (rows.rank < config.max_rank)
    negative_side = _judge(matrix, rows, folds, config, positive_sim=positive_sim, scope=window)
    population = _judge(matrix, rows, folds, config, weight=weight)
    is_pos = rows.label == 1
    relevance = np.where(is_pos, population.relevance, negative_side.relevance)
    flags = {
        "false_negative": duplicate
        | _false_negatives(
            rows,
            negative_side.relevance,
            negative_side.issues.is_issue,
            config.max_rank,
            config.false_negative_quantile,
        ),
        "false_positive": is_pos & population.issues.is_issue,
        "near_duplicate": duplicate,
    }
    quality = np.where(is_pos, population.issues.quality, negative_side.issues.quality)
    noise = {
        "negatives_relevant": negative_side.issues.noise["negatives_relevant"],
        "positives_irrelevant": population.issues.noise["positives_irrelevant"],
        "candidate_side": negative_side.issues.noise,
        "population_side": population.issues.noise,
    }
    return Scored(rows, features, relevance, negative_side.relevance, quality, flags, noise)


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
        "false_negative": duplicate.copy(),
        "false_positive": np.zeros(len(rows.label), bool),
        "near_duplicate": duplicate,
    }
    noise = {"negatives_relevant": None, "positives_irrelevant": None, "skipped": reason}
    return Scored(rows, features, unknown, unknown.copy(), unknown.copy(), flags, noise, skipped=reason)


class _Judgement(NamedTuple):
    relevance: np.ndarray  # balanced-prior probability that the row is relevant
    issues: LabelIssues


def _judge(
    matrix: np.ndarray,
    rows: PairRows,
    folds: np.ndarray,
    config: CurateConfig,
    *,
    weight: np.ndarray | None = None,
    positive_sim: np.ndarray | None = None,
    scope: np.ndarray | None = None,
) -> _Judgement:
    """One model's out-of-sample probabilities (balanced priors) and cleanlab's verdict on `scope`."""
    prob = out_of_sample_probabilities(
        matrix, rows.label, folds, classifier=config.classifier, sample_weight=weight, seed=config.seed
    )[:, 1]
    if positive_sim is not None and config.second_view:
        prob = _with_second_view(prob, positive_sim, rows, config.max_rank)
    prob = balance_prior(prob, rows.label, weight)
    scope = np.ones(len(prob), bool) if scope is None else scope
    quality = np.where(rows.label == 1, prob, 1.0 - prob)
    missing = _missing_label(rows.label[scope], config.max_rank)
    if missing is not None:
        logger.warning(missing)
        return _Judgement(prob, LabelIssues(np.zeros(len(prob), bool), quality, dict(_NO_NOISE)))
    found = find_issues(
        rows.label[scope],
        np.column_stack([1.0 - prob, prob])[scope],
        rule=config.issue_rule,
        batched_above=config.batched_above,
    )
    is_issue = np.zeros(len(prob), bool)
    is_issue[scope] = found.is_issue
    quality[scope] = found.quality
    return _Judgement(prob, LabelIssues(is_issue, quality, found.noise))


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


def balance_prior(prob: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Probabilities re-expressed for equal class priors: odds × (label-0 weight / label-1 weight).

    With one given positive per hundred candidates every probability sits far below 0.5, and
    cleanlab, which only calls a label wrong when the prediction disagrees with it, would
    flag no candidate and nearly every positive. Rescaling the odds changes no ranking.
    """
    weight = np.ones(len(label)) if weight is None else weight
    ones = max(float(weight[label == 1].sum()), 1.0)
    zeros = max(float(weight[label == 0].sum()), 1.0)
    odds = prob / np.clip(1.0 - prob, 1e-12, None) * (zeros / ones)
    return odds / (1.0 + odds)


def _with_second_view(prob: np.ndarray, positive_sim: np.ndarray, rows: PairRows, max_rank: int) -> np.ndarray:
    """Candidates' probabilities adjusted by their similarity to the anchor's positives."""
    window_positive = (rows.label == 1) & (rows.rank < max_rank)
    reference = window_positive if window_positive.any() else rows.label == 1
    target = (rows.label == 0) & ~rows.tail & np.isfinite(positive_sim)
    out = prob.copy()
    out[target] = second_view_adjust(prob[target], positive_sim[target], labelled_rate=float(prob[reference].mean()))
    return out


def anchor_families(anchor_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Family of each anchor (smallest anchor_idx with the same normalised text) and its hash.

    Returns:
        (family (n_anchors,) int64, family_hash (n_anchors,) uint64 from the text key).
    """
    keys = [text_key(t) for t in anchor_texts]
    first: dict[bytes, int] = {}
    family = np.fromiter((first.setdefault(k, i) for i, k in enumerate(keys)), np.int64, len(keys))
    family_hash = np.fromiter((int.from_bytes(k[:8], "little") for k in keys), np.uint64, len(keys))
    return family, family_hash


def _pair_ids(pairs: pa.Table) -> np.ndarray:
    return pairs.column("pair_idx").to_numpy().astype(np.int64)


def _false_negatives(
    rows: PairRows,
    relevance: np.ndarray,
    is_issue: np.ndarray,
    max_rank: int,
    quantile: float | None,
) -> np.ndarray:
    """Candidates cleanlab calls mislabelled, plus (optionally) those as relevant as given positives.

    The second rule flags a candidate whose relevance reaches the `quantile` of the relevance
    of the given positives inside the scored window (under the same candidate-side model).
    """
    candidate = (rows.label == 0) & ~rows.tail
    flags = candidate & is_issue
    window_positive = (rows.label == 1) & (rows.rank < max_rank)
    if quantile is not None and window_positive.any():
        flags |= candidate & (relevance >= np.quantile(relevance[window_positive], quantile))
    return flags


def _cross_encoder_feature(
    rows: PairRows, anchor_texts: list[str], doc_texts: list[str], config: CurateConfig
) -> np.ndarray:
    from negminer.curation.cross_encoder import cross_encoder_scores, load_cross_encoder

    model = load_cross_encoder(config.cross_encoder, device=None)
    return cross_encoder_scores(
        rows.anchor,
        rows.doc,
        anchor_texts=anchor_texts,
        doc_texts=doc_texts,
        model=model,
        batch_size=config.cross_encoder_batch_size,
    )


def _validate(
    candidates: pa.Table,
    pairs: pa.Table,
    anchor_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    anchor_texts: list[str],
    doc_texts: list[str],
) -> None:
    missing = _CANDIDATE_COLUMNS - set(candidates.column_names)
    if missing:
        raise ValueError(f"candidates lack columns {sorted(missing)}; pass the table search_candidates wrote")
    missing = {"pair_idx", "anchor_idx", "doc_idx"} - set(pairs.column_names)
    if missing:
        raise ValueError(f"pairs lack columns {sorted(missing)}; pass pairs.parquet from the read stage")
    if len(anchor_vectors) != len(anchor_texts):
        raise ValueError(f"{len(anchor_vectors)} anchor vectors but {len(anchor_texts)} anchor texts")
    if len(doc_vectors) != len(doc_texts):
        raise ValueError(f"{len(doc_vectors)} doc vectors but {len(doc_texts)} doc texts")
    if pairs.num_rows == 0:
        raise ValueError("no pairs: curation needs given positives")
