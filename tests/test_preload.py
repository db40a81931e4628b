"""The model preload started beside Prefect's server start is the copy the stages then use."""

from __future__ import annotations

from negminer import stages
from negminer.config import EmbedConfig


def test_preload_and_a_stage_load_the_model_once() -> None:
    config = EmbedConfig(max_seq_length=77)  # a cache key no other test loads
    misses = stages._cached_model.cache_info().misses
    thread = stages.preload_model(config)
    model = stages._shared_model(config)  # waits for the preload instead of loading a second copy
    thread.join()
    assert stages._cached_model.cache_info().misses == misses + 1
    assert model is stages._shared_model(config) and model.max_seq_length == 77


def test_nothing_is_preloaded_for_precomputed_vectors(tmp_path) -> None:
    config = EmbedConfig(anchor_vectors=str(tmp_path / "a.npz"), doc_vectors=str(tmp_path / "d.npz"))
    assert stages.preload_model(config) is None
