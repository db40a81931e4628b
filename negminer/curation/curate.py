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
from negminer.curation.confident import anchor_folds
from negminer.curation.context import PoolContext, key_matrix, pool_context, text_hashes
from negminer.curation.corroboration import corroborated_positives
from negminer.curation.duplicates import near_duplicates
from negminer.curation.features import pair_features
from negminer.curation.judges import Described, fit_judges, judge
from negminer.curation.lexical import TextSource, text_list
from negminer.curation.null import null_scores
from negminer.curation.policy import CurationResult, IdSource, Scored, apply_policies
from negminer.curation.rows import PairRows, group_positives, pair_rows
from negminer.mining.search import CANDIDATE_SCHEMA
from negminer.textkeys import KEY_BYTES, text_key

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
    anchor_ids: IdSource | None = None,
    doc_ids: IdSource | None = None,
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
    anchor_texts: TextSource,
    doc_texts: TextSource,
    config: CurateConfig = CurateConfig(),
) -> Scored:
    """Rows, features, out-of-sample relevance, cleanlab verdicts and flags by kind.

    The cross-validated candidate-side model judges candidates: which mined negatives look
    like given positives (cleanlab on its probabilities). Given positives are placed among
    their anchor's random documents (:mod:`negminer.curation.null`, by a population-side
    judge's relevance or by cosine): which look like a random document rather than a
    relevant one, with a confidence. Here both are fitted on,
    and judge, every row of `candidates`; :mod:`negminer.curation.sharded` fits them on a
    sample of anchors and judges shards.
    """
    family, family_hash = anchor_families(anchor_texts)
    context = pool_context(
        lambda: [candidates],
        anchor_vectors=anchor_vectors,
        family=family,
        family_hash=family_hash,
        doc_texts=doc_texts,
        doc_hash=text_hashes(doc_texts),
        config=config,
    )
    world = Pool(pairs, family, family_hash, anchor_vectors, doc_vectors, anchor_texts, doc_texts, context)
    described = describe_rows(candidates, pairs=pairs, anchors=None, pool=world, config=config)
    judges = fit_judges(described, n_docs=len(doc_vectors), family=family, config=config)
    return judge(described, judges, n_docs=len(doc_vectors), config=config, fitted_rows=True)


class Pool(NamedTuple):
    """Everything about all anchors and documents that the rows of any shard are described with."""

    pairs: pa.Table
    family: np.ndarray
    family_hash: np.ndarray
    anchor_vectors: np.ndarray
    doc_vectors: np.ndarray
    anchor_texts: TextSource
    doc_texts: TextSource
    context: PoolContext


def describe_rows(
    candidates: pa.Table, *, pairs: pa.Table, anchors: np.ndarray | None, pool: Pool, config: CurateConfig
) -> Described:
    """Rows and features of the anchors of `candidates` (whole anchors) and their `pairs`."""
    pair_anchor = _pair_column(pairs, "anchor_idx")
    pair_doc = _pair_column(pairs, "doc_idx")
    positives = group_positives(
        _pair_column(pool.pairs, "anchor_idx"), _pair_column(pool.pairs, "doc_idx"), pool.family, len(pool.doc_vectors)
    )
    vectors = {"anchor_vectors": pool.anchor_vectors, "doc_vectors": pool.doc_vectors}
    rows = pair_rows(
        candidates,
        pair_anchor=pair_anchor,
        pair_doc=pair_doc,
        **vectors,
        max_rank=config.max_rank,
        tail_samples=config.tail_samples,
        seed=config.seed,
        anchor_hash=pool.family_hash,
        doc_order=pool.context.doc_order,
        anchors=anchors,
    )
    rows = rows._replace(pair_idx=np.where(rows.pair_idx >= 0, _pair_ids(pairs)[rows.pair_idx.clip(0)], -1))
    features = pair_features(
        rows,
        candidates=candidates,
        positives=positives,
        **vectors,
        anchor_texts=pool.anchor_texts,
        doc_texts=pool.doc_texts,
        cross_anchor=config.cross_anchor,
        seed=config.seed,
        context=pool.context,
    )
    if config.cross_encoder is not None:
        features["cross_encoder"] = _cross_encoder_feature(rows, pool.anchor_texts, pool.doc_texts, config)
    folds = anchor_folds(pool.family_hash, n_splits=config.n_splits, seed=config.seed)[rows.anchor]
    matrix = np.column_stack(list(features.values()))
    duplicate, positive_sim = near_duplicates(
        rows, positives, pool.doc_vectors, threshold=config.near_duplicate_threshold
    )
    features["positive_similarity"] = positive_sim
    corroborated, chance = corroborated_positives(
        rows, positives, pool.context.neighbors, k=config.false_positive_corroborating_anchors
    )
    features["corroborated"], features["corroboration_chance"] = corroborated.astype(np.float32), chance
    content = (rows.label, pool.context.doc_hash[rows.doc], pool.family_hash[rows.anchor])
    is_pos = rows.label == 1
    null_p, null_z = np.full(len(rows.label), np.nan), np.full(len(rows.label), np.nan)
    pooled = np.zeros(0, np.float32)
    if config.false_positive_score == "cosine":  # "relevance" places the positives with its own judge
        null = null_scores(
            rows.anchor[is_pos],
            rows.doc[is_pos],
            rows.score[is_pos],
            **vectors,
            anchor_hash=pool.family_hash,
            doc_order=pool.context.doc_order,
            samples=config.null_samples,
            seed=config.seed,
        )
        null_p[is_pos], null_z[is_pos], pooled = null.p_anchor, null.z, null.pooled
    order = np.lexsort(content)
    return Described(rows, features, matrix, duplicate, positive_sim, folds, order, null_p, null_z, pooled)


def anchor_families(anchor_texts: TextSource, *, keys: pa.Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Family of each anchor (smallest anchor_idx with the same normalised text) and its hash.

    From the read stage's 16-byte ``text_key`` column where given (no Python object per
    anchor), else from the texts.

    Returns:
        (family (n_anchors,) int64, family_hash (n_anchors,) uint64 from the text key).

    Example:
        >>> anchor_families(["What is X?", "what  is x?", "Other"])[0].tolist()
        [0, 0, 2]
    """
    matrix = key_matrix(keys) if keys is not None else _text_key_matrix(text_list(anchor_texts))
    halves = matrix.view(np.dtype([("head", "<u8"), ("tail", "<u8")])).ravel()
    _, first, inverse = np.unique(halves, return_index=True, return_inverse=True)  # first: earliest index
    family = first[inverse.ravel()].astype(np.int64)
    return family, matrix[:, :8].copy().view("<u8").ravel()


def _text_key_matrix(texts: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(text_key(t) for t in texts), np.uint8).reshape(len(texts), KEY_BYTES)


def _pair_ids(pairs: pa.Table) -> np.ndarray:
    return pairs.column("pair_idx").to_numpy().astype(np.int64)


def _pair_column(pairs: pa.Table, name: str) -> np.ndarray:
    return pairs.column(name).to_numpy().astype(np.int64)


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
