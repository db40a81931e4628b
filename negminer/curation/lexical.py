"""Lexical pair features: BM25, token overlap and lengths, as sparse-matrix row products.

Contract of :func:`lexical_features`: for aligned arrays of anchor_idx and doc_idx, float64
columns ``bm25`` (Okapi BM25 of the document for the anchor's tokens, idf over the document
pool), ``bm25_relative`` (bm25 over the highest bm25 among the same anchor's rows),
``token_overlap`` (share of the anchor's distinct tokens found in the document),
``log_doc_length`` and ``log_length_ratio`` (document over anchor token count). Tokens are
lower-cased word characters without English stop words, hashed into 2**20 columns.
"""

from __future__ import annotations

import numpy as np

N_FEATURES = 2**20
BM25_K1 = 1.2
BM25_B = 0.75
ROW_BATCH = 65536


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


def bm25_weights(doc_counts, *, k1: float = BM25_K1, b: float = BM25_B):
    """BM25 term weights of each document: idf · tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen))."""
    import scipy.sparse as sp

    n_docs = doc_counts.shape[0]
    df = np.bincount(doc_counts.indices, minlength=doc_counts.shape[1])
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    lengths = np.asarray(doc_counts.sum(axis=1)).ravel()
    norm = k1 * (1 - b + b * lengths / max(lengths.mean(), 1e-9))
    tf = doc_counts.data
    row = np.repeat(np.arange(n_docs), np.diff(doc_counts.indptr))
    data = idf[doc_counts.indices] * tf * (k1 + 1) / (tf + norm[row])
    return sp.csr_matrix((data, doc_counts.indices, doc_counts.indptr), shape=doc_counts.shape)


def row_dot(left, right, left_rows: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
    """Dot product of ``left[left_rows[i]]`` and ``right[right_rows[i]]`` for every i."""
    out = np.empty(len(left_rows), np.float64)
    for first in range(0, len(left_rows), ROW_BATCH):
        part = slice(first, first + ROW_BATCH)
        out[part] = np.asarray(left[left_rows[part]].multiply(right[right_rows[part]]).sum(axis=1)).ravel()
    return out


def lexical_features(
    anchor: np.ndarray, doc: np.ndarray, *, anchor_texts: list[str], doc_texts: list[str]
) -> dict[str, np.ndarray]:
    """Lexical features of each (anchor, doc) row (see the module docstring).

    Args:
        anchor: (n_rows,) anchor_idx.
        doc: (n_rows,) doc_idx.
        anchor_texts: text of every anchor, by anchor_idx.
        doc_texts: text of every document, by doc_idx.

    Example:
        >>> lexical_features(np.array([0]), np.array([0]), anchor_texts=["vitamin d"],
        ...                  doc_texts=["Vitamin D and bone health"])["token_overlap"]
        array([1.])
    """
    anchor_counts = term_counts(anchor_texts)
    doc_counts = term_counts(doc_texts)
    anchor_binary = anchor_counts.copy()
    anchor_binary.data[:] = 1.0
    doc_binary = doc_counts.copy()
    doc_binary.data[:] = 1.0
    bm25 = row_dot(anchor_binary, bm25_weights(doc_counts), anchor, doc)
    anchor_terms = np.diff(anchor_binary.indptr)
    overlap = row_dot(anchor_binary, doc_binary, anchor, doc) / anchor_terms[anchor].clip(1)
    best = np.zeros(int(anchor.max(initial=-1)) + 1)
    np.maximum.at(best, anchor, bm25)
    anchor_len = np.asarray(anchor_counts.sum(axis=1)).ravel()
    doc_len = np.asarray(doc_counts.sum(axis=1)).ravel()
    return {
        "bm25": bm25,
        "bm25_relative": bm25 / np.where(best > 0, best, 1.0)[anchor],
        "token_overlap": overlap,
        "log_doc_length": np.log1p(doc_len[doc]),
        "log_length_ratio": np.log1p(doc_len[doc]) - np.log1p(anchor_len[anchor]),
    }
