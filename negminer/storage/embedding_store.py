"""Content-addressed embedding store, reused across runs and datasets.

Layout: ``STORE/<store key>/shard-<digest>.npy`` (float32 or, with ``dtype="float16"``,
float16 vectors, shape (n, dim); :meth:`EmbeddingStore.fetch` always returns float32)
and ``shard-<digest>.keys.npy`` (uint8, shape (n, 16): blake2b of each exact text), plus
``shard-<digest>.len.npy`` (int32 untruncated token counts; -1 where unknown). The store key
(:func:`negminer.mining.embedder.store_key`) is the model's content fingerprint plus the
settings that change its vectors, the effective prompts of both sides among them.

Within a folder a text is keyed by the blake2b of its exact text. When anchors (queries) and
documents are encoded differently (other prompts, or a model whose Router module routes them
to other modules), each side's keys are those hashes hashed again with the side's name
(:func:`side_keys`): the same text embedded as an anchor and as a document is stored twice,
under two keys. A shard is visible once its keys file exists; the vectors
are written first, both atomically, and shard names are digests of their keys, so concurrent
writers never corrupt each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negminer.errors import StorageError
from negminer.storage.atomic import write_bytes_atomic, write_npy_atomic
from negminer.textkeys import KEY_BYTES

logger = logging.getLogger(__name__)


class EmbeddingStore:
    """Vectors of one model, keyed by the hash of the exact text.

    Example:
        >>> store = EmbeddingStore("store", model_fingerprint="ab12…", dim=384, dtype="float32")  # doctest: +SKIP
        >>> found = store.lookup(hashes)  # -1 where missing  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        *,
        model_fingerprint: str,
        dim: int,
        dtype: Literal["float32", "float16"],
        max_seq_length: int | None = None,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise StorageError(f"embedding store dtype must be float32 or float16, got {dtype!r}")
        self.folder = Path(root) / model_fingerprint
        self.dim = dim
        self.dtype = dtype
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_seq_length = self._check_meta(model_fingerprint, max_seq_length)
        self._refresh()

    @staticmethod
    def stored_meta(root: str | Path, model_fingerprint: str) -> dict | None:
        """The ``meta.json`` of the store folder `model_fingerprint` under `root`; None if it has none yet.

        It holds ``dim`` and, for stores made since it was added, the ``max_seq_length`` the
        vectors were made with: enough to serve stored vectors without loading the model.
        """
        path = Path(root) / model_fingerprint / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _check_meta(self, fingerprint: str, max_seq_length: int | None) -> int | None:
        """Write the folder's meta on first use, else check it; the stored max_seq_length."""
        meta_path = self.folder / "meta.json"
        meta = {"model_fingerprint": fingerprint, "dim": self.dim, "dtype": self.dtype}
        if not meta_path.exists():
            if max_seq_length is not None:
                meta["max_seq_length"] = max_seq_length
            write_bytes_atomic(meta_path, json.dumps(meta).encode())
            return max_seq_length
        stored = json.loads(meta_path.read_text())
        if stored.get("dim") != self.dim:
            raise StorageError(
                f"{meta_path}: stored embeddings have dimension {stored.get('dim')}, "
                f"the model gives {self.dim}; remove the folder to re-embed"
            )
        if stored.get("dtype", "float32") != self.dtype:
            raise StorageError(
                f"{meta_path}: stored embeddings are {stored.get('dtype')}, not {self.dtype}; "
                f"use a store folder of their own for {self.dtype} vectors"
            )
        return stored.get("max_seq_length", max_seq_length)

    def _refresh(self) -> None:
        self._shards = sorted(self.folder.glob("shard-*.keys.npy"))
        keys = [np.load(p) for p in self._shards]
        self._offsets = np.cumsum([0] + [len(k) for k in keys])
        flat = np.concatenate(keys).tobytes() if keys else b""
        count = len(flat) // KEY_BYTES
        self._keys = pa.FixedSizeBinaryArray.from_buffers(pa.binary(KEY_BYTES), count, [None, pa.py_buffer(flat)])

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, hashes: pa.Array) -> np.ndarray:
        """Positions of `hashes` in the store (int64, -1 where absent)."""
        if len(self._keys) == 0:
            return np.full(len(hashes), -1, np.int64)
        found = pc.index_in(hashes, value_set=self._keys)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def fetch(self, positions: np.ndarray) -> np.ndarray:
        """Vectors at store `positions` (all ≥ 0), shape (len(positions), dim), float32 (float16 upcast)."""
        out = np.empty((len(positions), self.dim), np.float32)
        shard_of = np.searchsorted(self._offsets, positions, side="right") - 1
        for shard in np.unique(shard_of):
            rows = np.nonzero(shard_of == shard)[0]
            vectors = np.load(self._vector_path(self._shards[shard]), mmap_mode="r")
            out[rows] = vectors[positions[rows] - self._offsets[shard]]
        return out

    def token_lengths(self, positions: np.ndarray) -> np.ndarray:
        """Untruncated token counts at store `positions` (-1 where the shard has none)."""
        out = np.full(len(positions), -1, np.int32)
        shard_of = np.searchsorted(self._offsets, positions, side="right") - 1
        for shard in np.unique(shard_of):
            path = self._suffixed(self._shards[shard], ".len.npy")
            if path.exists():
                rows = np.nonzero(shard_of == shard)[0]
                out[rows] = np.load(path)[positions[rows] - self._offsets[shard]]
        return out

    def shard_names(self, positions: np.ndarray) -> list[str]:
        """Sorted names (``shard-<digest>``) of the shards holding store `positions` (all ≥ 0)."""
        shard_of = np.unique(np.searchsorted(self._offsets, positions, side="right") - 1)
        return sorted(self._shards[i].name.removesuffix(".keys.npy") for i in shard_of)

    def add(self, hashes: pa.Array, vectors: np.ndarray, *, token_lengths: np.ndarray | None = None) -> None:
        """Store `vectors` (n, dim) under `hashes` (n 16-byte keys) as one new shard."""
        if vectors.shape != (len(hashes), self.dim):
            raise StorageError(f"vectors of shape {vectors.shape} do not match {len(hashes)} keys")
        with np.errstate(over="ignore"):  # reported below, with the row
            stored = np.asarray(vectors, self.dtype)
        if not np.isfinite(stored).all():  # NaN in, or a value beyond float16's range (65504)
            row = int(np.argmin(np.isfinite(stored).all(axis=1)))
            raise StorageError(f"{self.folder}: vector {row} is not finite as {np.dtype(self.dtype).name}; not stored")
        keys = np.frombuffer(_key_bytes(hashes), np.uint8).reshape(-1, KEY_BYTES)
        name = hashlib.blake2b(keys.tobytes(), digest_size=12).hexdigest()
        keys_path = self.folder / f"shard-{name}.keys.npy"
        write_npy_atomic(self._vector_path(keys_path), stored)
        if token_lengths is not None:
            write_npy_atomic(self._suffixed(keys_path, ".len.npy"), np.asarray(token_lengths, np.int32))
        write_npy_atomic(keys_path, keys)
        self._refresh()

    @staticmethod
    def _suffixed(keys_path: Path, suffix: str) -> Path:
        return keys_path.with_name(keys_path.name.replace(".keys.npy", suffix))

    @classmethod
    def _vector_path(cls, keys_path: Path) -> Path:
        return cls._suffixed(keys_path, ".vec.npy")


def side_keys(hashes: pa.Array, side: str | None) -> pa.Array:
    """The store keys of texts with content hashes `hashes` (16-byte keys) embedded for `side`.

    Args:
        hashes: blake2b content hashes of the texts, shape (n,).
        side: None when both sides are encoded alike (the keys are `hashes`), else the side's
            name (``query`` or ``document``), hashed in so each side has keys of its own.

    Example:
        >>> side_keys(content_hashes(["a claim"]), "query")  # doctest: +SKIP
    """
    if side is None:
        return hashes
    salt = side.encode("utf-8") + b"\0"
    keys = [hashlib.blake2b(salt + key, digest_size=KEY_BYTES).digest() for key in _iter_keys(hashes)]
    return pa.array(keys, pa.binary(KEY_BYTES))


def _iter_keys(hashes: pa.Array) -> list[bytes]:
    flat = _key_bytes(hashes)
    return [flat[i : i + KEY_BYTES] for i in range(0, len(flat), KEY_BYTES)]


def _key_bytes(hashes: pa.Array) -> bytes:
    hashes = hashes.cast(pa.binary(KEY_BYTES))
    if hashes.offset or hashes.null_count:
        hashes = pa.concat_arrays([hashes])
    return hashes.buffers()[1].to_pybytes()[hashes.offset * KEY_BYTES : (hashes.offset + len(hashes)) * KEY_BYTES]
