"""Fixed-width identities of input rows, computed batch by batch from Arrow tables.

Contract: a text's identity is its 16-byte :func:`~negminer.textkeys.text_key`; a row's id is
the string :mod:`negminer.storage.inputs` gives it (the id column when it holds a non-empty
string, else ``"h:" + text_key.hex()``), identified by the 16-byte blake2b of that string. Both
are numpy ``S16`` arrays (one row 16 bytes; numpy compares them bytewise, so sorting and
searching work on them); Python strings exist only for one record batch at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.textkeys import KEY_BYTES, text_key

BATCH_ROWS = 65_536  # rows whose texts are Python strings at the same time
# The most string data one array of pyarrow's builders holds (arrow::kBinaryMemoryLimit).
STRING_CHUNK_BYTES = 2**31 - 2
KEY_DTYPE = f"S{KEY_BYTES}"
_HASHED_ID = re.compile(r"h:[0-9a-f]{32}")
_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")


class RowKeys(NamedTuple):
    """Per-row identities of one text column (and its optional id column), shape (n,)."""

    keys: np.ndarray  # S16 text keys
    ids: np.ndarray  # S16 hashes of the row's id string
    explicit: np.ndarray  # bool: the id column held a non-empty string
    odd_ids: bool  # some explicit id looks like "h:<32 hex>" but is not its own text's


def id_hash(doc_id: str) -> bytes:
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=KEY_BYTES).digest()


def row_keys(table: pa.Table, text_column: str, id_column: str | None) -> RowKeys:
    """Text keys and id hashes of `table`'s rows, hashing one record batch at a time."""
    n = table.num_rows
    keys = np.empty(n, dtype=KEY_DTYPE)
    ids = np.empty(n, dtype=KEY_DTYPE)
    explicit = np.zeros(n, dtype=bool)
    odd = False
    has_ids = id_column is not None and id_column in table.column_names
    start = 0
    for offset in range(0, n, BATCH_ROWS):
        part = table.slice(offset, BATCH_ROWS)
        texts = part.column(text_column).to_pylist()
        batch_keys = [text_key(t) for t in texts]
        given = part.column(id_column).to_pylist() if has_ids else [None] * len(texts)
        batch_ids = []
        for i, (key, value) in enumerate(zip(batch_keys, given, strict=True)):
            if value:
                explicit[start + i] = True
                odd = odd or (_HASHED_ID.fullmatch(value) is not None and value[2:] != key.hex())
                batch_ids.append(id_hash(value))
            else:
                batch_ids.append(id_hash(f"h:{key.hex()}"))
        keys[start : start + len(texts)] = np.frombuffer(b"".join(batch_keys), dtype=KEY_DTYPE)
        ids[start : start + len(texts)] = np.frombuffer(b"".join(batch_ids), dtype=KEY_DTYPE)
        start += len(texts)
    return RowKeys(keys, ids, explicit, odd)


def first_occurrences(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group equal values: (group of each row, numbered by first occurrence; first row of each group)."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    return rank[inverse.reshape(-1)], first[order]


def lookup(sorted_values: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `queries` in the sorted unique `sorted_values` and whether each is there."""
    if len(sorted_values) == 0:
        return np.zeros(len(queries), np.int64), np.zeros(len(queries), bool)
    pos = np.searchsorted(sorted_values, queries)
    clipped = np.minimum(pos, len(sorted_values) - 1)
    return clipped, sorted_values[clipped] == queries


def key_array(keys: np.ndarray) -> pa.Array:
    """S16 keys as an Arrow ``binary(16)`` array (all 16 bytes, trailing zeros included)."""
    data = np.ascontiguousarray(keys).view(np.uint8)
    return pa.Array.from_buffers(pa.binary(KEY_BYTES), len(keys), [None, pa.py_buffer(data.tobytes())])


def hashed_ids(keys: np.ndarray) -> pa.Array:
    """``"h:" + key.hex()`` for each S16 key, as an Arrow string array."""
    n = len(keys)
    width = 2 + 2 * KEY_BYTES
    raw = np.ascontiguousarray(keys).view(np.uint8).reshape(n, KEY_BYTES)
    out = np.empty((n, width), dtype="S1")
    out[:, 0], out[:, 1] = b"h", b":"
    out[:, 2::2] = _HEX[raw >> 4]
    out[:, 3::2] = _HEX[raw & 15]
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out.tobytes())])


def hashed_id(key: bytes) -> str:
    """``"h:" + key.hex()`` for a key read back from an S16 array (numpy drops trailing zeros)."""
    return f"h:{key.ljust(KEY_BYTES, bytes(1)).hex()}"


def ids_of(
    table: pa.Table, id_column: str | None, rows: np.ndarray, keys: np.ndarray, explicit: np.ndarray
) -> list[pa.Array]:
    """The id strings of `table`'s ascending `rows`: the id column where `explicit`, else hashed."""
    if id_column is None or id_column not in table.column_names or not explicit.any():
        return [hashed_ids(keys)]
    given = take_pieces(table.column(id_column), rows)
    if explicit.all():
        return given
    return [pc.if_else(pa.array(explicit), pa.concat_arrays(given), hashed_ids(keys))]


def take(column: pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    """`column`'s values at `rows` as one contiguous array (for fixed-width columns)."""
    return column.take(pa.array(rows, pa.int64())).combine_chunks()


def take_pieces(column: pa.ChunkedArray, rows: np.ndarray) -> list[pa.Array]:
    """`column`'s values at ascending `rows`, one array per chunk of `column` (never concatenated,
    so a string column over 2 GiB is never copied into one array)."""
    ends = np.cumsum([len(chunk) for chunk in column.chunks], dtype=np.int64)
    cuts = np.searchsorted(rows, ends, side="left")
    pieces, start, offset = [], 0, 0
    for chunk, end, cut in zip(column.chunks, ends.tolist(), cuts.tolist(), strict=True):
        if cut > start:
            pieces.append(chunk.take(pa.array(rows[start:cut] - offset, pa.int64())))
        start, offset = cut, end
    return pieces or [pa.array([], column.type)]


def string_chunks(pieces: list[pa.Array]) -> pa.ChunkedArray:
    """The pieces end to end, chunked as ``pa.array(values, pa.string())`` chunks them: a chunk
    ends before the value that would take its data past :data:`STRING_CHUNK_BYTES`."""
    lengths = np.concatenate(
        [pc.fill_null(pc.binary_length(piece), 0).to_numpy(zero_copy_only=False) for piece in pieces]
    ).astype(np.int64)
    ends = np.cumsum(lengths)
    bounds, start, base = [0], 0, 0
    while start < len(lengths):
        stop = max(int(np.searchsorted(ends, base + STRING_CHUNK_BYTES, side="right")), start + 1)
        bounds.append(stop)
        start, base = stop, int(ends[stop - 1])
    if len(bounds) == 1:
        bounds.append(0)
    starts = np.cumsum([0] + [len(piece) for piece in pieces]).tolist()
    chunks = []
    for lo, hi in itertools.pairwise(bounds):
        parts = [
            piece.slice(max(lo - first, 0), min(hi, first + len(piece)) - max(lo, first))
            for piece, first in zip(pieces, starts, strict=False)
            if first < hi and first + len(piece) > lo
        ]
        chunks.append(pa.concat_arrays(parts) if parts else pa.array([], pa.string()))
    return pa.chunked_array(chunks, pa.string())
