"""Bring your own embeddings: vectors computed elsewhere, matched to anchors and docs by id.

Contract: a vectors file is either Parquet with an ``id`` string column and an ``embedding``
column (list or fixed-size list of floats), or ``.npz`` with arrays ``ids`` (n,) and
``vectors`` (n, dim). Every anchor (by ``anchor_id``) or doc (by ``doc_id``) must have a
vector; vectors are L2-normalised here so scores are cosines.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.errors import InputError

logger = logging.getLogger(__name__)


def load_vectors(path: str | Path) -> tuple[pa.Array, np.ndarray]:
    """(ids, vectors of shape (n, dim) float32) from a Parquet or .npz vectors file."""
    path = Path(path)
    if not path.exists():
        raise InputError("vectors file not found", path=str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "ids" not in data or "vectors" not in data:
                raise InputError(f".npz must hold arrays 'ids' and 'vectors', has {list(data)}", path=str(path))
            return pa.array(data["ids"].astype(str)), np.asarray(data["vectors"], np.float32)
    try:
        table = pq.read_table(path, columns=["id", "embedding"])
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"not a Parquet file with columns 'id' and 'embedding' ({err})", path=str(path)) from err
    return table.column("id").combine_chunks().cast(pa.string()), _stack(table.column("embedding"), path)


def _stack(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    column = column.combine_chunks()
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py() + 1
        raise InputError("embedding is null", path=str(path), row=row, column="embedding")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) > 1:
        row = int(np.argmax(lengths != lengths[0])) + 1
        raise InputError(
            f"embedding has {lengths[row - 1]} values, row 1 has {lengths[0]}",
            path=str(path),
            row=row,
            column="embedding",
        )
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(column), -1)


def vectors_for(ids: list[str], path: str | Path, *, what: str) -> np.ndarray:
    """Normalised vectors of `ids` (len(ids), dim) from the vectors file at `path`.

    Example:
        >>> vectors_for(["q1", "q2"], "query_vectors.parquet", what="anchor")  # doctest: +SKIP
    """
    known_ids, vectors = load_vectors(path)
    position = pc.index_in(pa.array(ids, pa.string()), value_set=known_ids).to_numpy(zero_copy_only=False)
    missing = np.isnan(position) if position.dtype.kind == "f" else position < 0
    if missing.any():
        first = ids[int(np.argmax(missing))]
        raise InputError(f"{int(missing.sum())} {what} id(s) have no vector, first {first!r}", path=str(path))
    picked = vectors[position.astype(np.int64)]
    finite = np.isfinite(picked).all(axis=1)
    if not finite.all():
        first = ids[int(np.argmin(finite))]
        raise InputError(
            f"{int((~finite).sum())} {what} vector(s) hold NaN, null or infinite values, first {first!r}",
            path=str(path),
        )
    norms = np.linalg.norm(picked, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InputError(f"a zero vector for {what} {ids[int(np.argmin(norms))]!r}", path=str(path))
    return (picked / norms).astype(np.float32)
