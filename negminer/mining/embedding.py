"""Embed a text column through the embedding store into an aligned ``.npy`` file.

Only texts the store has never seen under this model are sent to the model; they are
embedded in chunks, and each chunk is stored as soon as it is done, so a killed run resumes
from the last finished chunk. A :class:`Side` says how a side's texts are encoded (as queries or
documents, with which prompt) and keyed in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from negminer.errors import StorageError
from negminer.mining.encoder import Precision, Task, encode, token_lengths
from negminer.storage.atomic import atomic_path, open_npy_for_writing
from negminer.storage.embedding_store import EmbeddingStore, side_keys
from negminer.textkeys import content_hashes

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


class Side(NamedTuple):
    """How the texts of one side of retrieval are embedded and keyed in the store.

    Attributes:
        task: "query" (anchors: the model's ``encode_query``) or "document" (positives and
            corpus texts: ``encode_document``).
        prompt: the literal prompt put before each text ("" for none).
        keyed_apart: whether this side's store keys differ from the other side's (their prompts
            differ, or the model routes queries and documents to other modules).
    """

    task: Task
    prompt: str
    keyed_apart: bool

    def keys(self, hashes: pa.Array) -> pa.Array:
        """Store keys of texts with content hashes `hashes` (:func:`~negminer.storage.embedding_store.side_keys`)."""
        return side_keys(hashes, self.task if self.keyed_apart else None)


class EmbedResult(NamedTuple):
    path: Path
    rows: int
    embedded: int
    reused: int
    seconds: float
    truncated: int = 0  # texts longer than the model's max_seq_length (-1 counts as unknown)


def embed_to_file(
    texts: list[str],
    out_path: str | Path,
    *,
    model: SentenceTransformer | Callable[[], SentenceTransformer],
    store: EmbeddingStore,
    batch_size: int,
    chunk_size: int,
    processes: int,
    precision: Precision,
    show_progress_bar: bool = False,
    side: Side | None = None,
) -> EmbedResult:
    """Write the embeddings of `texts` to `out_path` (float32, shape (len(texts), dim)).

    `side` encodes the texts as queries or documents with its prompt, under its keys; None
    encodes them with the model's plain ``encode`` and no prompt, keyed by their content hashes.
    `model` may be a function that loads it: it is called only when a text is missing from the
    store or the store does not know its truncation length.

    Example:
        >>> embed_to_file(["a claim"], "anchors.npy", model=model, store=store, batch_size=32,
        ...     chunk_size=4096, processes=1, precision="float32")  # doctest: +SKIP
    """
    start = time.perf_counter()
    out_path = Path(out_path)
    hashes = content_hashes(texts) if side is None else side.keys(content_hashes(texts))
    missing = missing_unique(store, hashes)
    loaded = model if hasattr(model, "encode") else None

    def the_model() -> SentenceTransformer:
        nonlocal loaded
        loaded = loaded or model()
        return loaded

    for first in range(0, len(missing), chunk_size):
        rows = missing[first : first + chunk_size]
        embed_into_store(
            [texts[i] for i in rows],
            hashes.take(rows),
            model=the_model(),
            store=store,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            processes=processes,
            precision=precision,
            side=side,
        )
        logger.info("embedded %d/%d new texts", min(first + chunk_size, len(missing)), len(missing))
    positions = fetch_to_file(hashes, out_path, store=store)
    limit = store.max_seq_length if store.max_seq_length is not None else the_model().max_seq_length
    truncated = int(np.sum(store.token_lengths(positions) > limit))
    if truncated:
        logger.warning("%d of %d texts exceed max_seq_length %d and were truncated", truncated, len(texts), limit)
    seconds = time.perf_counter() - start
    return EmbedResult(out_path, len(texts), len(missing), len(texts) - len(missing), seconds, truncated)


def embed_into_store(
    texts: list[str],
    hashes: pa.Array,
    *,
    model: SentenceTransformer,
    store: EmbeddingStore,
    batch_size: int,
    processes: int,
    precision: Precision,
    show_progress_bar: bool = False,
    side: Side | None = None,
) -> None:
    """Embed `texts` (whose store keys are `hashes`) and add them to `store` as one shard.

    `side` as in :func:`embed_to_file`; the token counts kept count the prompted texts.

    Example:
        >>> embed_into_store(["a claim"], content_hashes(["a claim"]), model=model, store=store,
        ...     batch_size=32, processes=1, precision="float32")  # doctest: +SKIP
    """
    prompt = side.prompt if side is not None else ""
    counts = token_lengths([prompt + text for text in texts] if prompt else texts, model)
    vectors = encode(
        texts,
        model,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        processes=processes,
        precision=precision,
        token_counts=counts,
        task=None if side is None else side.task,
        prompt=None if side is None else side.prompt,
    )
    store.add(hashes, vectors, token_lengths=counts)


def fetch_to_file(hashes: pa.Array, out_path: str | Path, *, store: EmbeddingStore) -> np.ndarray:
    """Write the stored vectors of `hashes` to `out_path` (float32, (len(hashes), dim)) atomically.

    Returns:
        The store positions of `hashes`, shape (len(hashes),).

    Raises:
        StorageError: if the store lacks any of `hashes`.
    """
    out_path = Path(out_path)
    positions = store.lookup(hashes)
    if (positions < 0).any():
        raise StorageError(f"{store.folder}: {int((positions < 0).sum())} texts are not in the embedding store")
    with atomic_path(out_path, suffix=".npy") as tmp:  # a failed fetch leaves no n x dim temp file
        out = open_npy_for_writing(tmp, (len(hashes), store.dim))
        for first in range(0, len(hashes), 65536):
            out[first : first + 65536] = store.fetch(positions[first : first + 65536])
        out.flush()
        del out
    return positions


def missing_unique(store: EmbeddingStore, hashes: pa.Array) -> np.ndarray:
    """Row numbers of the first occurrence of each hash the store lacks."""
    absent = np.nonzero(store.lookup(hashes) < 0)[0]
    if len(absent) == 0:
        return absent
    keys = np.frombuffer(b"".join(h.as_py() for h in hashes.take(absent)), dtype="V16")
    _, first = np.unique(keys, return_index=True)
    return np.sort(absent[first])
