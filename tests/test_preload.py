"""The model preload started beside Prefect's server start is the copy the stages then use."""

from __future__ import annotations

from negminer.config import EmbedConfig
from negminer.mining import embedder
from negminer.mining.embedder import Embedder


def test_preload_and_a_stage_load_the_model_once() -> None:
    # PyTorch float32: the shared model (auto may embed with a converted copy of its own)
    config = EmbedConfig(max_seq_length=77, backend="torch", precision="float32")  # a cache key no other test loads
    misses = embedder._cached_model.cache_info().misses
    thread = Embedder(config).preload()
    model = Embedder(config).model  # waits for the preload instead of loading a second copy
    thread.join()
    assert embedder._cached_model.cache_info().misses == misses + 1
    assert model is Embedder(config).model and model.max_seq_length == 77


def test_nothing_is_preloaded_for_precomputed_vectors(tmp_path) -> None:
    config = EmbedConfig(anchor_vectors=str(tmp_path / "a.npz"), doc_vectors=str(tmp_path / "d.npz"))
    assert Embedder(config).preload() is None
