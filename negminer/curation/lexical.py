"""Lexical pair features: BM25, token overlap and lengths, as sparse-matrix row products.

Contract of :func:`lexical_features`: for aligned arrays of anchor_idx and doc_idx, float64
columns ``bm25`` (Okapi BM25 of the document for the anchor's tokens, idf over the document
pool), ``bm25_relative`` (bm25 over the highest bm25 among the same anchor's rows),
``token_overlap`` (share of the anchor's distinct tokens found in the document),
``log_doc_length`` and ``log_length_ratio`` (document over anchor token count). Tokens are
lower-cased word characters without English stop words, hashed into 2**20 columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

N_FEATURES = 2**20
BM25_K1 = 1.2
BM25_B = 0.75
ROW_BATCH = 65536
STATS_BATCH = 65536  # documents tokenised at once for the pool's statistics

TextSource = list[str] | pa.Array | pa.ChunkedArray


def _vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=N_FEATURES,
        alternate_sign=False,
        norm=None,
        stop_words="english",
        token_pattern=r"(?u)\b\w\w+\b",
        dtype=np.float32,
    )


def term_counts(texts: list[str]):
    """(len(texts), 2**20) sparse CSR matrix of token counts."""
    return _vectorizer().transform(texts).tocsr()


class LexicalStats(NamedTuple):
    """What BM25 needs from the whole document pool: idf per hashed term and document lengths."""

    idf: np.ndarray  # (N_FEATURES,) float32
    doc_length: np.ndarray  # (n_docs,) token count of each document
    mean_length: float


def lexical_stats(doc_texts: TextSource, *, batch: int = STATS_BATCH) -> LexicalStats:
    """Document frequencies and lengths over the pool, `batch` texts at a time."""
    batches = (
        texts_at(doc_texts, np.arange(first, min(first + batch, len(doc_texts))))
        for first in range(0, len(doc_texts), batch)
    )
    return streamed_lexical_stats(batches)


def streamed_lexical_stats(text_batches: Iterable[list[str]]) -> LexicalStats:
    """:func:`lexical_stats` over the pool's texts given in consecutive batches (memory: one batch)."""
    df = np.zeros(N_FEATURES, np.int64)
    lengths = []
    for texts in text_batches:
        counts = term_counts(texts)
        df += np.bincount(counts.indices, minlength=N_FEATURES)
        lengths.append(np.asarray(counts.sum(axis=1)).ravel())
    doc_length = np.concatenate(lengths) if lengths else np.zeros(0, np.float32)
    n_docs = len(doc_length)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    return LexicalStats(idf, doc_length, float(max(doc_length.mean(), 1e-9)) if n_docs else 1e-9)


def bm25_weights(doc_counts, stats: LexicalStats, docs: np.ndarray, *, k1: float = BM25_K1, b: float = BM25_B):
    """BM25 term weights of documents `docs` (the rows of `doc_counts`).

    idf · tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen)), idf and lengths from the pool's `stats`.
    """
    import scipy.sparse as sp

    norm = k1 * (1 - b + b * stats.doc_length[docs] / stats.mean_length)
    tf = doc_counts.data
    row = np.repeat(np.arange(doc_counts.shape[0]), np.diff(doc_counts.indptr))
    data = stats.idf[doc_counts.indices] * tf * (k1 + 1) / (tf + norm[row])
    return sp.csr_matrix((data, doc_counts.indices, doc_counts.indptr), shape=doc_counts.shape)


def row_dot(left, right, left_rows: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
    """Dot product of ``left[left_rows[i]]`` and ``right[right_rows[i]]`` for every i."""
    out = np.empty(len(left_rows), np.float64)
    for first in range(0, len(left_rows), ROW_BATCH):
        part = slice(first, first + ROW_BATCH)
        out[part] = np.asarray(left[left_rows[part]].multiply(right[right_rows[part]]).sum(axis=1)).ravel()
    return out


def lexical_features(
    anchor: np.ndarray,
    doc: np.ndarray,
    *,
    anchor_texts: TextSource,
    doc_texts: TextSource,
    stats: LexicalStats | None = None,
) -> dict[str, np.ndarray]:
    """Lexical features of each (anchor, doc) row (see the module docstring).

    Only the anchors and documents the rows name are tokenised; BM25's idf and average length
    come from `stats` (:func:`lexical_stats` over the whole pool, computed here when None).

    Args:
        anchor: (n_rows,) anchor_idx.
        doc: (n_rows,) doc_idx.
        anchor_texts: text of every anchor, by anchor_idx (a list or an Arrow string array).
        doc_texts: text of every document, by doc_idx.
        stats: the pool's document frequencies and lengths.

    Example:
        >>> lexical_features(np.array([0]), np.array([0]), anchor_texts=["vitamin d"],
        ...                  doc_texts=["Vitamin D and bone health"])["token_overlap"]
        array([1.])
    """
    stats = lexical_stats(doc_texts) if stats is None else stats
    anchors, anchor_row = np.unique(anchor, return_inverse=True)
    docs, doc_row = np.unique(doc, return_inverse=True)
    anchor_counts = term_counts(texts_at(anchor_texts, anchors))
    doc_counts = term_counts(texts_at(doc_texts, docs))
    anchor_binary = anchor_counts.copy()
    anchor_binary.data[:] = 1.0
    doc_binary = doc_counts.copy()
    doc_binary.data[:] = 1.0
    bm25 = row_dot(anchor_binary, bm25_weights(doc_counts, stats, docs), anchor_row, doc_row)
    anchor_terms = np.diff(anchor_binary.indptr)
    overlap = row_dot(anchor_binary, doc_binary, anchor_row, doc_row) / anchor_terms[anchor_row].clip(1)
    best = np.zeros(int(anchor.max(initial=-1)) + 1)
    np.maximum.at(best, anchor, bm25)
    anchor_len = np.asarray(anchor_counts.sum(axis=1)).ravel()
    doc_len = stats.doc_length[docs]
    return {
        "bm25": bm25,
        "bm25_relative": bm25 / np.where(best > 0, best, 1.0)[anchor],
        "token_overlap": overlap,
        "log_doc_length": np.log1p(doc_len[doc_row]),
        "log_length_ratio": np.log1p(doc_len[doc_row]) - np.log1p(anchor_len[anchor_row]),
    }


def text_list(texts: TextSource) -> list[str]:
    """`texts` as a Python list (a list is returned as it is)."""
    return texts if isinstance(texts, list) else texts.to_pylist()


def texts_at(texts: TextSource, rows: np.ndarray) -> list[str]:
    """The texts at `rows` of a list or an Arrow string array."""
    if isinstance(texts, list):
        return [texts[i] for i in rows]
    return texts.take(pa.array(rows, pa.int64())).to_pylist()
