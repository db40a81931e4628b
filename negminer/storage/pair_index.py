"""Resolve the pairs' anchors and positives against the document pool, by 16-byte hashes.

Contract (what :func:`resolve_pairs` returns is what a row-by-row pass over the pairs in file
order gives, registering the anchor and positive of accepted rows only):

* a row whose anchor and positive have the same text key is rejected (``anchor_equals_positive``);
* an anchor id is bound to the text key of the first accepted row that names it; a later row
  naming it with another text is rejected (``conflicting_id`` on the anchor id column);
* a positive id is bound by the corpus, else by the first accepted row that names it; a row
  naming it with another text is rejected (``conflicting_id`` on the positive id column);
* an accepted positive is the corpus document with its id, else the first document with its
  text key (corpus first), else a new document created by that row.

Only the rows of an id that is named with two different texts ("contested") are walked one by
one, with dicts over those rows' hashes; every other decision is a sort over fixed-width arrays.
When an explicit id looks like a hashed id (``h:<32 hex>``) of another text, a new document
can rebind it, so every row is walked one by one (:func:`_walk_all`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from negminer.config import InputConfig
from negminer.storage.input_keys import RowKeys, first_occurrences, hashed_id, lookup
from negminer.storage.rejects import reject_record


class CorpusIndex(NamedTuple):
    """The corpus documents' keys and id hashes (one per document, ids unique), shape (Dc,)."""

    keys: np.ndarray
    ids: np.ndarray
    odd_ids: bool = False  # some corpus id looks like the hashed id of another text


class Resolved(NamedTuple):
    """Accepted rows (positions in the pairs table, file order) and what they resolve to."""

    rows: np.ndarray  # (R,) accepted rows
    anchor_idx: np.ndarray  # (R,) anchor of each accepted row
    doc_idx: np.ndarray  # (R,) positive document of each accepted row
    anchor_rows: np.ndarray  # (A,) first row of each anchor
    new_doc_rows: np.ndarray  # (N,) row that created each non-corpus document
    rejects: list[dict]  # in row order


def resolve_pairs(
    path: Path, table: pa.Table, anchors: RowKeys, positives: RowKeys, corpus: CorpusIndex, config: InputConfig
) -> Resolved:
    """Accept or reject each pair row and resolve its anchor and positive (see the module docstring)."""
    same = anchors.keys == positives.keys
    rejects = {int(i): _equal_reject(path, table, int(i), config) for i in np.flatnonzero(same)}
    candidates = np.flatnonzero(~same)
    if corpus.odd_ids or positives.odd_ids:  # anchor ids are never rebound
        return _walk_all(path, table, candidates, anchors, positives, corpus, config, rejects)
    contested = _contested(candidates, anchors, positives, corpus)
    rejects |= _walk_contested(path, table, contested, anchors, positives, corpus, config)
    rows = candidates[~np.isin(candidates, np.fromiter(rejects, np.int64, len(rejects)))]
    anchor_idx, first = first_occurrences(anchors.ids[rows])
    doc_idx, new_rows = _positive_docs(rows, positives, corpus)
    return Resolved(rows, anchor_idx, doc_idx, rows[first], new_rows, [rejects[i] for i in sorted(rejects)])


def _equal_reject(path: Path, table: pa.Table, i: int, config: InputConfig) -> dict:
    row = table.column("source_row")[i].as_py()
    return reject_record(path, row, config.positive_column, "anchor_equals_positive", table.column("anchor")[i].as_py())


def _id_reject(path: Path, table: pa.Table, i: int, column: str, keys: RowKeys, canon: str, key: bytes) -> dict:
    value = table.column(canon)[i].as_py() if keys.explicit[i] else hashed_id(key)
    return reject_record(path, table.column("source_row")[i].as_py(), column, "conflicting_id", value)


def _mismatched_groups(rows: np.ndarray, ids: np.ndarray, keys: np.ndarray, bound: np.ndarray | None) -> np.ndarray:
    """Rows of `rows` whose id is named with more than one key (or another key than `bound`)."""
    group, first = first_occurrences(ids[rows])
    reference = keys[rows][first][group]
    if bound is not None:
        has_bound = bound != b""
        reference = np.where(has_bound, bound, reference)
    bad = np.zeros(len(first), dtype=bool)
    bad[group[keys[rows] != reference]] = True
    return rows[bad[group]]


def _contested(candidates: np.ndarray, anchors: RowKeys, positives: RowKeys, corpus: CorpusIndex) -> np.ndarray:
    """Rows whose anchor id or positive id is named with two different texts, in row order."""
    contested_anchor = _mismatched_groups(candidates, anchors.ids, anchors.keys, None)
    named = candidates[positives.explicit[candidates]]
    bound = _corpus_keys_by_id(positives.ids[named], corpus)
    contested_positive = _mismatched_groups(named, positives.ids, positives.keys, bound)
    return np.union1d(contested_anchor, contested_positive)


def _corpus_keys_by_id(ids: np.ndarray, corpus: CorpusIndex) -> np.ndarray:
    """The corpus key bound to each id (empty bytes where the corpus lacks the id)."""
    order = np.argsort(corpus.ids, kind="stable")
    pos, found = lookup(corpus.ids[order], ids)
    out = np.zeros(len(ids), dtype=corpus.keys.dtype)
    if len(order):
        out[found] = corpus.keys[order[pos[found]]]
    return out


def _walk_contested(
    path: Path,
    table: pa.Table,
    rows: np.ndarray,
    anchors: RowKeys,
    positives: RowKeys,
    corpus: CorpusIndex,
    config: InputConfig,
) -> dict[int, dict]:
    """Rejects among `rows`: the ids' bindings replayed in row order over these rows only."""
    anchor_bound: dict[bytes, bytes] = {}
    named = rows[positives.explicit[rows]]
    corpus_bound = _corpus_keys_by_id(positives.ids[named], corpus)
    positive_bound = {bytes(i): bytes(k) for i, k in zip(positives.ids[named], corpus_bound, strict=True) if k}
    rejects: dict[int, dict] = {}
    for i in rows.tolist():
        a_id, a_key, p_key = bytes(anchors.ids[i]), bytes(anchors.keys[i]), bytes(positives.keys[i])
        known_a = anchor_bound.get(a_id)
        if known_a is not None and known_a != a_key:
            rejects[i] = _id_reject(path, table, i, config.anchor_id_column, anchors, "anchor_id", a_key)
            continue
        p_id = bytes(positives.ids[i]) if positives.explicit[i] else None
        known_p = positive_bound.get(p_id) if p_id is not None else None
        if known_p is not None and known_p != p_key:
            rejects[i] = _id_reject(path, table, i, config.positive_id_column, positives, "positive_id", p_key)
            continue
        anchor_bound.setdefault(a_id, a_key)
        if p_id is not None:
            positive_bound.setdefault(p_id, p_key)
    return rejects


def _positive_docs(rows: np.ndarray, positives: RowKeys, corpus: CorpusIndex) -> tuple[np.ndarray, np.ndarray]:
    """Each accepted row's document: corpus by id, corpus by key, else new (numbered in row order)."""
    n_corpus = len(corpus.keys)
    doc_idx = np.full(len(rows), -1, dtype=np.int64)
    by_id = np.argsort(corpus.ids, kind="stable")
    pos, found = lookup(corpus.ids[by_id], positives.ids[rows])
    found &= positives.explicit[rows]
    doc_idx[found] = by_id[pos[found]]
    _, first_of_key = np.unique(corpus.keys, return_index=True)  # sorted keys, first doc of each
    unique_keys = corpus.keys[first_of_key]
    rest = np.flatnonzero(~found)
    pos, found = lookup(unique_keys, positives.keys[rows[rest]])
    doc_idx[rest[found]] = first_of_key[pos[found]]
    new = rest[~found]
    ordinal, first = first_occurrences(positives.keys[rows[new]])
    doc_idx[new] = n_corpus + ordinal
    return doc_idx, rows[new][first]


def _walk_all(
    path: Path,
    table: pa.Table,
    candidates: np.ndarray,
    anchors: RowKeys,
    positives: RowKeys,
    corpus: CorpusIndex,
    config: InputConfig,
    rejects: dict[int, dict],
) -> Resolved:
    """Row by row over every candidate, with dicts over all hashes (ids of the ``h:`` form named
    with another text, where a new document can take over a hashed id)."""
    by_id = {bytes(i): d for d, i in enumerate(corpus.ids)}
    doc_keys = [bytes(k) for k in corpus.keys]
    by_key: dict[bytes, int] = {}
    for d, key in enumerate(doc_keys):
        by_key.setdefault(key, d)
    anchor_by_id: dict[bytes, int] = {}
    anchor_keys: list[bytes] = []
    rows, anchor_idx, doc_idx, anchor_rows, new_rows = [], [], [], [], []
    for i in candidates.tolist():
        a_id, a_key, p_key = bytes(anchors.ids[i]), bytes(anchors.keys[i]), bytes(positives.keys[i])
        known_a = anchor_by_id.get(a_id)
        if known_a is not None and anchor_keys[known_a] != a_key:
            rejects[i] = _id_reject(path, table, i, config.anchor_id_column, anchors, "anchor_id", a_key)
            continue
        p_id = bytes(positives.ids[i])
        known = by_id.get(p_id) if positives.explicit[i] else None
        if known is not None and doc_keys[known] != p_key:
            rejects[i] = _id_reject(path, table, i, config.positive_id_column, positives, "positive_id", p_key)
            continue
        if known is None:
            known = by_key.get(p_key)
        if known_a is None:
            known_a = anchor_by_id[a_id] = len(anchor_keys)
            anchor_keys.append(a_key)
            anchor_rows.append(i)
        if known is None:
            known = by_id[p_id] = len(doc_keys)  # p_id is the hashed id when none is given
            doc_keys.append(p_key)
            by_key.setdefault(p_key, known)
            new_rows.append(i)
        elif positives.explicit[i]:
            by_id.setdefault(p_id, known)
        rows.append(i)
        anchor_idx.append(known_a)
        doc_idx.append(known)
    as_array = lambda values: np.array(values, dtype=np.int64)  # noqa: E731
    return Resolved(
        as_array(rows),
        as_array(anchor_idx),
        as_array(doc_idx),
        as_array(anchor_rows),
        as_array(new_rows),
        [rejects[i] for i in sorted(rejects)],
    )
