"""Optional cross-encoder relevance of each pair row, from a local model folder.

Contract of :func:`cross_encoder_scores`: one float per (anchor, doc) row, the raw output of
``sentence_transformers.CrossEncoder.predict`` (a logit or probability, depending on the
model), in row order. The model runs offline from a local folder; scores are computed once
per distinct (anchor, doc) pair.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from negminer.curation.lexical import TextSource, texts_at
from negminer.errors import ConfigError
from negminer.mining.encoder import MODELS_KEPT, model_fingerprint

logger = logging.getLogger(__name__)


def load_cross_encoder(path: str | Path, *, device: str | None, setting: str = "curate.cross_encoder"):
    """A sentence-transformers CrossEncoder from a local folder (raises ConfigError otherwise).

    `device` is a torch device; None lets sentence-transformers pick (CUDA when present).
    `setting` is the configuration key the error names.
    """
    folder = Path(path).expanduser()
    if not (folder / "config.json").exists():
        raise ConfigError(
            f"{setting} {str(path)!r} is not a local model folder with config.json; "
            "give the path of a downloaded sentence-transformers CrossEncoder or leave it unset"
        )
    return _loaded(str(folder.resolve()), model_fingerprint(folder), device)


@lru_cache(maxsize=MODELS_KEPT)
def _loaded(folder: str, _fingerprint: str, device: str | None):
    """One model per folder, files and device, for every shard a process runs (a retrained folder loads again)."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(folder, device=device)


def cross_encoder_scores(
    anchor: np.ndarray,
    doc: np.ndarray,
    *,
    anchor_texts: TextSource,
    doc_texts: TextSource,
    model,
    batch_size: int,
) -> np.ndarray:
    """(n_rows,) float32 cross-encoder score of every (anchor_texts[a], doc_texts[d]) row.

    Example:
        >>> ce = load_cross_encoder("models/ms-marco-MiniLM-L6-v2", device=None)  # doctest: +SKIP
        >>> cross_encoder_scores(a, d, anchor_texts=at, doc_texts=dt, model=ce, batch_size=64)  # doctest: +SKIP
    """
    keys = np.stack([anchor, doc], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    texts = list(zip(texts_at(anchor_texts, unique[:, 0]), texts_at(doc_texts, unique[:, 1]), strict=True))
    logger.info("cross-encoder: scoring %d pairs", len(texts))
    scores = model.predict(texts, batch_size=batch_size, show_progress_bar=len(texts) > 10000)
    scores = np.asarray(scores, np.float32)
    if scores.ndim > 1:
        scores = scores[:, -1]
    return scores[inverse.ravel()]
