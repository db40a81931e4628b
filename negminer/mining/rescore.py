"""A cross-encoder's scores for the selection rules (``mine.cross_encoder``).

As sentence-transformers' ``mine_hard_negatives(cross_encoder=...)``: the candidates and the
positives are scored again by a cross-encoder, and its scores replace the cosines in the score
bounds (``min_score``/``max_score``), the margins (absolute, relative, semi-hard) and the
``top`` order. ``random`` sampling does not read scores; SimANS keeps the cosines, since its
``simans_a``/``simans_b`` are set in cosine units. Difficulty tiers stay on the cosines too
(their thresholds are the run's quantiles of cosine margins).

Contract of :class:`CrossEncoderRescorer`: called on a batch of candidate rows (each anchor's
rows together), it returns the batch with two more float32 columns:

* ``cross_encoder_score``: the cross-encoder's score of the (anchor, candidate) pair; null for
  rows that can never become a negative whatever the score (positives, rows with a positive's
  or the anchor's text, flagged false negatives, reviewer exclusions, raw ranks outside
  ``[range_min, range_max)``), which are never sent to the model;
* ``cross_encoder_positive_score``: the anchor's lowest cross-encoder score over its pairs
  (NaN for an anchor without a pair, which no margin then drops).

A distinct (anchor, doc) pair of a batch is scored once. The model pads each batch of pairs to
its longest, so a pair's score can differ in its last bits with the other pairs of its batch
(another shard size): the same settings give the same bytes, other shard sizes about 1e-7 apart.
Cost: one forward pass per eligible candidate row, so ``range_max`` bounds it (``range_max: 30``
scores at most 30 rows an anchor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.config import SelectionConfig

logger = logging.getLogger(__name__)

SCORE = "cross_encoder_score"
POSITIVE_SCORE = "cross_encoder_positive_score"
# Rows with any of these flags set are dropped before the score rules, so they are not scored.
NEVER_NEGATIVE = (
    "is_positive",
    "same_text_as_positive",
    "same_text_as_anchor",
    "flagged_false_negative",
    "excluded_by_audit",
)
TextsAt = Callable[[np.ndarray], list[str]]


class CrossEncoderRescorer:
    """Adds :data:`SCORE` and :data:`POSITIVE_SCORE` to candidate batches (see the module docstring).

    Args:
        model: an object with sentence-transformers' ``CrossEncoder.predict(pairs, batch_size=...)``.
        pairs: ``anchor_idx``, ``doc_idx`` of the pairs the selection trains on.
        anchor_texts, doc_texts: the texts at given anchor_idx / doc_idx.
        config: the selection settings (the rank window and ``cross_encoder_batch_size``).

    Example:
        >>> rescore = CrossEncoderRescorer(model, pairs=pairs, anchor_texts=at, doc_texts=dt,
        ...                                config=MineConfig(cross_encoder="models/ce"))  # doctest: +SKIP
        >>> batch = rescore(batch)  # doctest: +SKIP
    """

    def __init__(
        self, model: Any, *, pairs: pa.Table, anchor_texts: TextsAt, doc_texts: TextsAt, config: SelectionConfig
    ) -> None:
        pair_anchor = pairs.column("anchor_idx").to_numpy().astype(np.int64)
        order = np.argsort(pair_anchor, kind="stable")
        self._pair_anchor = pair_anchor[order]
        self._pair_doc = pairs.column("doc_idx").to_numpy().astype(np.int64)[order]
        self._model, self._anchor_texts, self._doc_texts = model, anchor_texts, doc_texts
        self._window = (config.range_min, config.range_max)
        self._batch_size = config.cross_encoder_batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        anchor = batch.column("anchor_idx").to_numpy().astype(np.int64)
        wanted = self._scored_rows(batch)
        scores = np.full(len(anchor), np.nan, np.float32)
        scores[wanted] = self._score(anchor[wanted], batch.column("doc_idx").to_numpy().astype(np.int64)[wanted])
        anchors, row_anchor = np.unique(anchor, return_inverse=True)
        positive = self._positive_scores(anchors)[row_anchor]
        batch = batch.append_column(SCORE, pa.array(scores, pa.float32(), mask=~wanted))
        return batch.append_column(POSITIVE_SCORE, pa.array(positive, pa.float32()))

    def _scored_rows(self, batch: pa.Table) -> np.ndarray:
        rank = batch.column("rank").to_numpy()
        low, high = self._window
        wanted = rank >= low
        if high is not None:
            wanted &= rank < high
        for name in NEVER_NEGATIVE:
            if name in batch.column_names:
                wanted &= ~pc.fill_null(batch.column(name).cast(pa.bool_()), False).to_numpy(zero_copy_only=False)
        return wanted

    def _score(self, anchor: np.ndarray, doc: np.ndarray) -> np.ndarray:
        if len(anchor) == 0:
            return np.zeros(0, np.float32)
        keys, inverse = np.unique(np.stack([anchor, doc], axis=1), axis=0, return_inverse=True)
        texts = list(zip(self._anchor_texts(keys[:, 0]), self._doc_texts(keys[:, 1]), strict=True))
        scores = np.asarray(self._model.predict(texts, batch_size=self._batch_size, show_progress_bar=False))
        scores = scores.astype(np.float32)
        if scores.ndim > 1:  # a model with several outputs: its last is the relevance logit
            scores = scores[:, -1]
        return scores[inverse.ravel()]

    def _positive_scores(self, anchors: np.ndarray) -> np.ndarray:
        """(len(anchors),) each sorted anchor's lowest score over its pairs (NaN without one)."""
        start = np.searchsorted(self._pair_anchor, anchors, side="left")
        stop = np.searchsorted(self._pair_anchor, anchors, side="right")
        rows = np.concatenate([np.arange(a, b) for a, b in zip(start, stop, strict=True)] or [np.zeros(0, np.int64)])
        scores = self._score(self._pair_anchor[rows], self._pair_doc[rows])
        lowest = np.full(len(anchors), np.nan, np.float32)
        owner = np.repeat(np.arange(len(anchors)), stop - start)
        if len(rows):
            np.fmin.at(lowest, owner, scores)
        return lowest


def load_rescorer(
    config: SelectionConfig, *, pairs: pa.Table, anchor_texts: TextsAt, doc_texts: TextsAt
) -> CrossEncoderRescorer | None:
    """The rescorer of ``config.cross_encoder`` (None when it is unset); the model is loaded here."""
    if config.cross_encoder is None:
        return None
    from negminer.curation.cross_encoder import load_cross_encoder

    model = load_cross_encoder(Path(config.cross_encoder), device=None, setting="mine.cross_encoder")
    logger.info("selection scores from the cross-encoder %s", config.cross_encoder)
    return CrossEncoderRescorer(model, pairs=pairs, anchor_texts=anchor_texts, doc_texts=doc_texts, config=config)


def texts_of(column: pa.Array | pa.ChunkedArray) -> TextsAt:
    """A lookup of `column`'s texts at given row numbers."""
    return lambda rows: column.take(pa.array(rows, pa.int64())).to_pylist()
