"""Turn pairs (+ corpus) files into the three tables every later stage reads.

Contract of :func:`prepare_inputs`'s tables (positions are ``*_idx``, ids are strings):

* ``anchors``: ``anchor_idx`` int32, ``anchor_id``, ``text``, ``text_key`` binary(16)
* ``docs``: ``doc_idx`` int32, ``doc_id``, ``text``, ``title`` (nullable), ``text_key``,
  ``from_corpus`` bool. The pool is the corpus plus every positive; a positive whose id or
  normalised text matches a corpus document is that document.
* ``pairs``: ``pair_idx`` int32, ``anchor_idx``, ``doc_idx`` (the positive), ``source_row``
* ``rejects``: quarantined input rows (see :mod:`negminer.storage.readers`).

Memory: rows are deduplicated and matched by 16-byte hashes in numpy arrays
(:mod:`negminer.storage.input_keys`, :mod:`negminer.storage.pair_index`); texts are Python
strings one record batch at a time, and the output text columns are taken from the readers'
Arrow tables. The tables are the ones a row-by-row pass in file order builds (each column one
array, a string column cut into chunks where ``pa.array`` cuts one over 2 GiB), so they write
to the same Parquet bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from negminer.config import InputConfig
from negminer.errors import InputError
from negminer.storage.input_keys import (
    RowKeys,
    first_occurrences,
    hashed_id,
    ids_of,
    key_array,
    row_keys,
    string_chunks,
    take,
    take_pieces,
)
from negminer.storage.pair_index import CorpusIndex, Resolved, resolve_pairs
from negminer.storage.readers import (
    REJECT_SCHEMA,
    PartedRead,
    bad_row_error,
    name_part_files,
    order_rejects,
    read_table_parts,
    reject_record,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedInputs:
    anchors: pa.Table
    docs: pa.Table
    pairs: pa.Table
    rejects: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


class _Corpus:
    """The corpus documents (first row of each id, in file order) and their identities."""

    def __init__(self, table: pa.Table, rows: np.ndarray, index: CorpusIndex, explicit: np.ndarray) -> None:
        self.table, self.rows, self.index, self.explicit = table, rows, index, explicit


def prepare_inputs(
    pairs_path: str | Path,
    corpus_path: str | Path | None = None,
    *,
    config: InputConfig = InputConfig(),
) -> PreparedInputs:
    """Read, validate and index the pairs and the optional corpus.

    Args:
        pairs_path: file with ``anchor`` and ``positive`` text columns (names in `config`).
        corpus_path: optional file with a ``text`` column and optional ``id``, ``title``.
        config: column names and the bad-row policy.

    Returns:
        PreparedInputs with anchors (A rows), docs (D rows), pairs (P rows) and rejects.

    Example:
        >>> prepared = prepare_inputs("pairs.parquet", "corpus.parquet")  # doctest: +SKIP
        >>> prepared.docs.num_rows  # doctest: +SKIP
    """
    counts: dict[str, int] = {}
    rejects = []
    corpus = None
    if corpus_path is not None:
        corpus, corpus_rejects = _read_corpus(Path(corpus_path), config, counts)
        rejects.append(corpus_rejects)
    pairs_read = read_table_parts(
        pairs_path,
        required={"anchor": config.anchor_column, "positive": config.positive_column},
        optional={"anchor_id": config.anchor_id_column, "positive_id": config.positive_id_column},
        text_columns=("anchor", "positive"),
        on_bad_rows="quarantine",  # fail mode raises below, on the first bad row of any kind
    )
    table = pairs_read.table
    anchor_keys = row_keys(table, "anchor", "anchor_id")
    positive_keys = row_keys(table, "positive", "positive_id")
    index = corpus.index if corpus is not None else CorpusIndex(np.zeros(0, "S16"), np.zeros(0, "S16"))
    resolved = resolve_pairs(Path(pairs_path), table, anchor_keys, positive_keys, index, config)
    pairs = _pair_table(table, resolved, len(index.keys) + len(resolved.new_doc_rows), counts)
    rejects.append(_file_rejects(pairs_read, resolved.rejects, config))
    if not pairs.num_rows:
        raise InputError("no valid (anchor, positive) rows remain after validation", path=str(pairs_path))
    all_rejects = pa.concat_tables(rejects)
    counts["pairs_in"] = table.num_rows + pairs_read.rejects.num_rows
    counts["rejected_rows"] = all_rejects.num_rows
    rows = resolved.anchor_rows
    anchors = pa.table(
        {
            "anchor_idx": pa.array(np.arange(len(rows), dtype=np.int32)),
            "anchor_id": string_chunks(
                ids_of(table, "anchor_id", rows, anchor_keys.keys[rows], anchor_keys.explicit[rows])
            ),
            "text": string_chunks(take_pieces(table.column("anchor"), rows)),
            "text_key": key_array(anchor_keys.keys[rows]),
        }
    )
    return PreparedInputs(
        anchors=anchors,
        docs=_doc_table(corpus, table, resolved.new_doc_rows, positive_keys),
        pairs=pairs,
        rejects=all_rejects,
        counts=counts,
    )


def _file_rejects(read: PartedRead, more: list[dict], config: InputConfig) -> pa.Table:
    """One input's rejects in file order; in fail mode, the error for the first of them.

    `more` counts rows as ``read.table.source_row`` does (across a folder's files); they are
    renamed to the part file and its row, like the reader's own rejects.
    """
    more_rejects = name_part_files(pa.Table.from_pylist(more, schema=REJECT_SCHEMA), read.parts)
    rejects = order_rejects([read.rejects, more_rejects], read.parts)
    if rejects.num_rows and config.on_bad_rows == "fail":
        raise bad_row_error(rejects.slice(0, 1).to_pylist()[0])
    return rejects


def _read_corpus(path: Path, config: InputConfig, counts: dict[str, int]) -> tuple[_Corpus, pa.Table]:
    """The corpus documents: the first row of each id; a later row with the same id is a
    duplicate (same text key) or a ``conflicting_id`` reject (another text)."""
    read = read_table_parts(
        path,
        required={"text": config.text_column},
        optional={"id": config.id_column, "title": config.title_column},
        text_columns=("text",),
        on_bad_rows="quarantine",  # fail mode raises in _file_rejects
    )
    table = read.table
    keys = row_keys(table, "text", "id")
    group, first = first_occurrences(keys.ids)
    later = np.ones(table.num_rows, dtype=bool)
    later[first] = False
    same_text = keys.keys == keys.keys[first][group]
    duplicates = int(np.count_nonzero(later & same_text))
    if duplicates:
        counts["corpus_duplicate_rows"] = duplicates
    conflicts = []
    for i in np.flatnonzero(later & ~same_text).tolist():
        doc_id = table.column("id")[i].as_py() if keys.explicit[i] else hashed_id(keys.keys[i])
        row = table.column("source_row")[i].as_py()
        conflicts.append(reject_record(path, row, config.id_column, "conflicting_id", doc_id))
    counts["corpus_in"] = table.num_rows + read.rejects.num_rows
    if table.num_rows == 0 and read.rejects.num_rows == 0:
        raise InputError("corpus is empty", path=str(path))
    index = CorpusIndex(keys.keys[first], keys.ids[first], keys.odd_ids)
    return _Corpus(table, first, index, keys.explicit[first]), _file_rejects(read, conflicts, config)


def _pair_table(table: pa.Table, resolved: Resolved, num_docs: int, counts: dict[str, int]) -> pa.Table:
    """One row per distinct (anchor, positive document), at its first accepted row."""
    combined = resolved.anchor_idx * max(num_docs, 1) + resolved.doc_idx
    _, first = np.unique(combined, return_index=True)
    keep = np.sort(first)
    if len(keep) < len(combined):
        counts["duplicate_pairs"] = len(combined) - len(keep)
    return pa.table(
        {
            "pair_idx": pa.array(np.arange(len(keep), dtype=np.int32)),
            "anchor_idx": pa.array(resolved.anchor_idx[keep].astype(np.int32)),
            "doc_idx": pa.array(resolved.doc_idx[keep].astype(np.int32)),
            "source_row": take(table.column("source_row"), resolved.rows[keep]),
        }
    )


def _doc_table(corpus: _Corpus | None, pairs: pa.Table, new_rows: np.ndarray, positives: RowKeys) -> pa.Table:
    """The corpus documents, then the positives that are new documents, in creation order.

    Built one column at a time, so only one column's parts exist beside the finished columns.
    """
    new_keys = positives.keys[new_rows]
    parts: dict[str, list] = {
        "doc_id": [lambda: ids_of(pairs, "positive_id", new_rows, new_keys, positives.explicit[new_rows])],
        "text": [lambda: take_pieces(pairs.column("positive"), new_rows)],
        "title": [lambda: [pa.nulls(len(new_rows), pa.string())]],
    }
    keys, from_corpus = [new_keys], [np.zeros(len(new_rows), dtype=bool)]
    if corpus is not None:
        rows, table = corpus.rows, corpus.table
        parts["doc_id"].insert(0, lambda: ids_of(table, "id", rows, corpus.index.keys, corpus.explicit))
        parts["text"].insert(0, lambda: take_pieces(table.column("text"), rows))
        has_title = "title" in table.column_names
        parts["title"].insert(
            0, lambda: take_pieces(table.column("title"), rows) if has_title else [pa.nulls(len(rows), pa.string())]
        )
        keys.insert(0, corpus.index.keys)
        from_corpus.insert(0, np.ones(len(rows), dtype=bool))
    all_keys = np.concatenate(keys)
    columns = {"doc_idx": pa.array(np.arange(len(all_keys), dtype=np.int32))}
    for name, makers in parts.items():
        columns[name] = string_chunks([piece for make in makers for piece in make()])
    columns["text_key"] = key_array(all_keys)
    columns["from_corpus"] = pa.array(np.concatenate(from_corpus))
    return pa.table(columns)
