"""Mining from a float16 embedding store picks (nearly) the negatives a float32 store gives.

The SciFact sample's texts with seeded random 384-d unit vectors (the dimension of
all-MiniLM-L6-v2) go through the store and ``fetch_to_file`` (float16 upcast to float32),
exact search and the default selection (``derive_files``). With the model's real vectors the
benchmark ``bench/float16_store.py`` measured 1000/1000 identical negatives (docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from negminer.config import MineConfig
from negminer.mining.embedding import fetch_to_file
from negminer.mining.search import search_candidates
from negminer.mining.streaming import derive_files
from negminer.storage.embedding_store import EmbeddingStore
from negminer.storage.inputs import prepare_inputs
from negminer.textkeys import content_hashes


def _negatives(prepared, folder: Path, dtype: str, vectors: dict[str, np.ndarray]) -> set[tuple[int, int]]:
    store = EmbeddingStore(folder / "store", model_fingerprint=f"m-{dtype}", dim=384, dtype=dtype)
    loaded = {}
    for stem in ("anchors", "docs"):
        hashes = content_hashes(getattr(prepared, stem).column("text").to_pylist())
        store.add(hashes, vectors[stem])
        fetch_to_file(hashes, folder / f"{stem}-{dtype}.npy", store=store)
        loaded[stem] = np.load(folder / f"{stem}-{dtype}.npy", mmap_mode="r")
        assert loaded[stem].dtype == np.float32
    pairs = prepared.pairs
    out = folder / f"candidates-{dtype}.parquet"
    search_candidates(
        loaded["anchors"],
        loaded["docs"],
        out,
        pair_anchor=pairs.column("anchor_idx").to_numpy(),
        pair_doc=pairs.column("doc_idx").to_numpy(),
        doc_text_keys=prepared.docs.column("text_key").to_pylist(),
        anchor_text_keys=prepared.anchors.column("text_key").to_pylist(),
        search_depth=50,
        batch_size=4096,
    )
    config = MineConfig(num_negatives=5)
    derived = derive_files(
        out,
        {stem: folder / f"{stem}-{dtype}-selected.parquet" for stem in ("candidates", "triplets")},
        anchors=prepared.anchors,
        docs=prepared.docs,
        pairs=pairs,
        config=config,
    )
    selected = pq.read_table(derived.paths["candidates"])
    chosen = selected.filter(pc.is_valid(selected.column("negative_slot")))
    return set(zip(chosen.column("anchor_idx").to_pylist(), chosen.column("doc_idx").to_pylist(), strict=True))


def test_float16_store_mines_nearly_the_same_negatives(sample_dir: Path, tmp_path: Path):
    prepared = prepare_inputs(sample_dir / "pairs.parquet", sample_dir / "corpus.parquet")
    rng = np.random.default_rng(5)
    vectors = {}
    for stem in ("anchors", "docs"):
        v = rng.normal(size=(getattr(prepared, stem).num_rows, 384)).astype(np.float32)
        vectors[stem] = v / np.linalg.norm(v, axis=1, keepdims=True)
    full = _negatives(prepared, tmp_path, "float32", vectors)
    half = _negatives(prepared, tmp_path, "float16", vectors)
    assert len(full) == len(half) == 5 * prepared.anchors.num_rows
    assert len(full & half) / len(full) >= 0.99
