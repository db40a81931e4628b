"""Two processes sharing one embedding store never corrupt it."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pyarrow as pa

from negminer.storage.embedding_store import EmbeddingStore
from negminer.textkeys import content_hashes

DIM = 8


def vector_of(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def writer(root: str, texts: list[str], chunk: int) -> None:
    store = EmbeddingStore(root, model_fingerprint="fp", dim=DIM, dtype="float32")
    for first in range(0, len(texts), chunk):
        part = texts[first : first + chunk]
        hashes = content_hashes(part)
        absent = np.nonzero(store.lookup(hashes) < 0)[0]
        if len(absent):
            store.add(hashes.take(pa.array(absent)), np.stack([vector_of(part[i]) for i in absent]))


def test_concurrent_writers_with_overlapping_texts(tmp_path: Path) -> None:
    texts = [f"text number {i}" for i in range(600)]
    context = mp.get_context("spawn")
    procs = [
        context.Process(target=writer, args=(str(tmp_path), texts[:400], 37)),
        context.Process(target=writer, args=(str(tmp_path), texts[200:], 23)),
        context.Process(target=writer, args=(str(tmp_path), texts[100:500], 50)),
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    store = EmbeddingStore(tmp_path, model_fingerprint="fp", dim=DIM, dtype="float32")
    positions = store.lookup(content_hashes(texts))
    assert (positions >= 0).all()
    np.testing.assert_array_equal(store.fetch(positions), np.stack([vector_of(t) for t in texts]))
    assert not list((tmp_path / "fp").glob("*.tmp")) and not list((tmp_path / "fp").glob(".*"))
