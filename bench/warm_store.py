"""Embed the shared retrieval sets once into the benchmark store (bench/.cache/store).

Benchmarks that measure quality (not cold speed) read vectors from this store, so they do not
repeat ~10 minutes of CPU embedding. Run: python -m bench.warm_store [nfcorpus scifact]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import SHARED_DATA, STORE
from negminer.config import EmbedConfig
from negminer.mining.embedder import Embedder


def main(names: list[str]) -> None:
    embedder = Embedder(EmbedConfig(device="cpu", chunk_size=512))
    store = embedder.open_store(STORE)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for stem, task in (("queries", "query"), ("corpus", "document")):
                texts = (
                    pq.read_table(SHARED_DATA / name / f"{stem}.parquet", columns=["text"]).column("text").to_pylist()
                )
                result = embedder.embed_to_file(texts, Path(tmp) / "x.npy", store, task=task)
                print(name, stem, result.rows, "embedded", result.embedded, f"{result.seconds:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["nfcorpus", "scifact"])
