"""PREVIOUS IMPLEMENTATION of negminer.storage.inputs (before hash-based dedup), kept unchanged
as the reference oracle for tests/storage/test_inputs_identity.py. Not used by the package.

Turn pairs (+ corpus) files into the three tables every later stage reads.

Contract of :func:`prepare_inputs`'s tables (positions are ``*_idx``, ids are strings):

* ``anchors``: ``anchor_idx`` int32, ``anchor_id``, ``text``, ``text_key`` binary(16)
* ``docs``: ``doc_idx`` int32, ``doc_id``, ``text``, ``title`` (nullable), ``text_key``,
  ``from_corpus`` bool. The pool is the corpus plus every positive; a positive whose id or
  normalised text matches a corpus document is that document.
* ``pairs``: ``pair_idx`` int32, ``anchor_idx``, ``doc_idx`` (the positive), ``source_row``
* ``rejects``: quarantined input rows (see :mod:`negminer.storage.readers`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from negminer.config import InputConfig
from negminer.errors import InputError
from negminer.storage.readers import (
    REJECT_SCHEMA,
    PartedRead,
    bad_row_error,
    name_part_files,
    order_rejects,
    read_table_parts,
    reject_record,
)
from negminer.textkeys import text_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedInputs:
    anchors: pa.Table
    docs: pa.Table
    pairs: pa.Table
    rejects: pa.Table
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pool:
    """Mutable builder for the document pool, deduplicated by id and normalised text."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    titles: list[str | None] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    from_corpus: list[bool] = field(default_factory=list)
    by_id: dict[str, int] = field(default_factory=dict)
    by_key: dict[bytes, int] = field(default_factory=dict)

    def add(self, doc_id: str, text: str, title: str | None, key: bytes, corpus: bool) -> int:
        idx = len(self.ids)
        self.ids.append(doc_id)
        self.texts.append(text)
        self.titles.append(title)
        self.keys.append(key)
        self.from_corpus.append(corpus)
        self.by_id[doc_id] = idx
        self.by_key.setdefault(key, idx)
        return idx

    def table(self) -> pa.Table:
        return pa.table(
            {
                "doc_idx": pa.array(range(len(self.ids)), pa.int32()),
                "doc_id": pa.array(self.ids, pa.string()),
                "text": pa.array(self.texts, pa.string()),
                "title": pa.array(self.titles, pa.string()),
                "text_key": pa.array(self.keys, pa.binary(16)),
                "from_corpus": pa.array(self.from_corpus, pa.bool_()),
            }
        )


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
    counter: Counter[str] = Counter()
    pool = _Pool()
    rejects = []
    if corpus_path is not None:
        rejects.append(_add_corpus(Path(corpus_path), config, pool, counter))
    pairs_read = read_table_parts(
        pairs_path,
        required={"anchor": config.anchor_column, "positive": config.positive_column},
        optional={"anchor_id": config.anchor_id_column, "positive_id": config.positive_id_column},
        text_columns=("anchor", "positive"),
        on_bad_rows="quarantine",  # fail mode raises below, on the first bad row of any kind
    )
    index_rejects: list[dict] = []
    anchors, pairs = _index_pairs(Path(pairs_path), pairs_read.table, config, pool, counter, index_rejects)
    rejects.append(_file_rejects(pairs_read, index_rejects, config))
    if not pairs["pair_idx"]:
        raise InputError("no valid (anchor, positive) rows remain after validation", path=str(pairs_path))
    all_rejects = pa.concat_tables(rejects)
    counter["pairs_in"] += pairs_read.table.num_rows + pairs_read.rejects.num_rows
    counter["rejected_rows"] = all_rejects.num_rows
    return PreparedInputs(
        anchors=_anchor_table(anchors),
        docs=pool.table(),
        pairs=pa.table(
            {
                "pair_idx": pa.array(pairs["pair_idx"], pa.int32()),
                "anchor_idx": pa.array(pairs["anchor_idx"], pa.int32()),
                "doc_idx": pa.array(pairs["doc_idx"], pa.int32()),
                "source_row": pa.array(pairs["source_row"], pa.int64()),
            }
        ),
        rejects=all_rejects,
        counts=dict(counter),
    )


def _conflict(path: Path, row: int, column: str, reason: str, value: str, rejects: list[dict]) -> None:
    rejects.append(reject_record(path, row, column, reason, value))


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


def _add_corpus(path: Path, config: InputConfig, pool: _Pool, counter: Counter[str]) -> pa.Table:
    read = read_table_parts(
        path,
        required={"text": config.text_column},
        optional={"id": config.id_column, "title": config.title_column},
        text_columns=("text",),
        on_bad_rows="quarantine",  # fail mode raises in _file_rejects
    )
    table = read.table
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
    titles = table.column("title").to_pylist() if "title" in table.column_names else [None] * table.num_rows
    conflicts: list[dict] = []
    for text, doc_id, title, row in zip(
        table.column("text").to_pylist(), ids, titles, table.column("source_row").to_pylist(), strict=True
    ):
        key = text_key(text)
        doc_id = doc_id or f"h:{key.hex()}"
        known = pool.by_id.get(doc_id)
        if known is not None:
            if pool.keys[known] != key:
                _conflict(path, row, config.id_column, "conflicting_id", doc_id, conflicts)
            else:
                counter["corpus_duplicate_rows"] += 1
            continue
        pool.add(doc_id, text, title, key, corpus=True)
    counter["corpus_in"] = table.num_rows + read.rejects.num_rows
    if table.num_rows == 0 and read.rejects.num_rows == 0:
        raise InputError("corpus is empty", path=str(path))
    return _file_rejects(read, conflicts, config)


class _Conflict(Exception):
    """A row whose id names a different text than the one already registered under it."""

    def __init__(self, column: str, value: str) -> None:
        super().__init__(column, value)
        self.column = column
        self.value = value


def _index_pairs(
    path: Path,
    table: pa.Table,
    config: InputConfig,
    pool: _Pool,
    counter: Counter[str],
    rejects: list[dict],
) -> tuple[dict[str, list], dict[str, list]]:
    """Register anchors and positives of accepted rows only; a rejected row changes nothing."""
    n = table.num_rows
    anchor_ids = table.column("anchor_id").to_pylist() if "anchor_id" in table.column_names else [None] * n
    pos_ids = table.column("positive_id").to_pylist() if "positive_id" in table.column_names else [None] * n
    anchors: dict[str, list] = {"id": [], "text": [], "key": []}
    anchor_by_id: dict[str, int] = {}
    pairs: dict[str, list] = {"pair_idx": [], "anchor_idx": [], "doc_idx": [], "source_row": []}
    seen_pairs: set[tuple[int, int]] = set()
    rows = zip(
        table.column("anchor").to_pylist(),
        table.column("positive").to_pylist(),
        anchor_ids,
        pos_ids,
        table.column("source_row").to_pylist(),
        strict=True,
    )
    for anchor, positive, anchor_id, pos_id, row in rows:
        a_key, p_key = text_key(anchor), text_key(positive)
        if a_key == p_key:
            _conflict(path, row, config.positive_column, "anchor_equals_positive", anchor, rejects)
            continue
        try:
            known_anchor = _find_anchor(a_key, anchor_id, anchors, anchor_by_id, config)
            known_doc = _find_positive(p_key, pos_id, pool, config)
        except _Conflict as conflict:
            _conflict(path, row, conflict.column, "conflicting_id", conflict.value, rejects)
            continue
        anchor_idx = _add_anchor(anchor, a_key, anchor_id, anchors, anchor_by_id, known_anchor)
        doc_idx = _add_positive(positive, p_key, pos_id, pool, known_doc)
        if (anchor_idx, doc_idx) in seen_pairs:
            counter["duplicate_pairs"] += 1
            continue
        seen_pairs.add((anchor_idx, doc_idx))
        pairs["pair_idx"].append(len(pairs["pair_idx"]))
        pairs["anchor_idx"].append(anchor_idx)
        pairs["doc_idx"].append(doc_idx)
        pairs["source_row"].append(row)
    return anchors, pairs


def _find_anchor(
    key: bytes, anchor_id: str | None, anchors: dict[str, list], by_id: dict[str, int], config: InputConfig
) -> int | None:
    """The known anchor with this id (None for a new one); raises _Conflict for another text."""
    anchor_id = anchor_id or f"h:{key.hex()}"
    known = by_id.get(anchor_id)
    if known is not None and anchors["key"][known] != key:
        raise _Conflict(config.anchor_id_column, anchor_id)
    return known


def _add_anchor(
    text: str, key: bytes, anchor_id: str | None, anchors: dict[str, list], by_id: dict[str, int], known: int | None
) -> int:
    """Add a new anchor, or return the known one."""
    if known is not None:
        return known
    anchor_id = anchor_id or f"h:{key.hex()}"
    by_id[anchor_id] = len(anchors["id"])
    anchors["id"].append(anchor_id)
    anchors["text"].append(text)
    anchors["key"].append(key)
    return by_id[anchor_id]


def _find_positive(key: bytes, pos_id: str | None, pool: _Pool, config: InputConfig) -> int | None:
    """The pool document this positive is, by id first, else by normalised text (None: new).

    Raises _Conflict when the id is known with another text.
    """
    if pos_id:
        known = pool.by_id.get(pos_id)
        if known is not None:
            if pool.keys[known] != key:
                raise _Conflict(config.positive_id_column, pos_id)
            return known
    return pool.by_key.get(key)


def _add_positive(text: str, key: bytes, pos_id: str | None, pool: _Pool, known: int | None) -> int:
    """Add a new positive to the pool, or record `pos_id` as another name of the known doc."""
    if known is None:
        return pool.add(pos_id or f"h:{key.hex()}", text, None, key, corpus=False)
    if pos_id:
        pool.by_id.setdefault(pos_id, known)
    return known


def _anchor_table(anchors: dict[str, list]) -> pa.Table:
    return pa.table(
        {
            "anchor_idx": pa.array(range(len(anchors["id"])), pa.int32()),
            "anchor_id": pa.array(anchors["id"], pa.string()),
            "text": pa.array(anchors["text"], pa.string()),
            "text_key": pa.array(anchors["key"], pa.binary(16)),
        }
    )
