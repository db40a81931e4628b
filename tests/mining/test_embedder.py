"""Embedder: the store key recipe, one model per process, and the embedding calls it wraps."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from negminer.config import EmbedConfig
from negminer.mining import embedder as embedder_module
from negminer.mining.embedder import Embedder, store_key
from negminer.mining.embedding import embed_into_store, embed_to_file
from negminer.mining.encoder import model_fingerprint, resolve_model_path
from negminer.storage.embedding_store import EmbeddingStore
from negminer.textkeys import content_hashes

TEXTS = [
    "Vitamin D supplementation reduces fracture risk.",
    "The mitochondria is the powerhouse of the cell.",
    "Vitamin D supplementation reduces fracture risk.",
    "Aspirin lowers the risk of colorectal cancer.",
    "A much longer sentence about the immune response to influenza vaccination in older adults.",
]


@pytest.fixture(scope="module")
def fingerprint() -> str:
    return model_fingerprint(resolve_model_path(None))


# the encoding every key below is relative to (auto may resolve to another, with its own suffix)
TORCH_FLOAT32 = {"backend": "torch", "precision": "float32"}


@pytest.mark.parametrize(
    ("options", "suffix"),
    [
        ({}, ""),
        ({"max_seq_length": 128}, "-seq128"),
        ({"precision": "bfloat16"}, "-bfloat16"),
        ({"store_dtype": "float16"}, "-float16"),
        ({"max_seq_length": 77, "precision": "bfloat16", "store_dtype": "float16"}, "-seq77-bfloat16-float16"),
        ({"backend": "openvino", "precision": "bfloat16"}, "-openvino-bfloat16"),
        # settings that do not change the vectors share the default folder
        ({"batch_size": 8, "chunk_size": 100, "processes": 2, "device": "cpu"}, ""),
    ],
)
def test_the_store_key_is_the_fingerprint_and_what_changes_the_vectors(fingerprint, options, suffix) -> None:
    config = EmbedConfig(**{**TORCH_FLOAT32, **options})
    assert store_key(config) == fingerprint + suffix
    assert Embedder(config).store_key == fingerprint + suffix


def test_two_names_of_one_model_share_its_key(fingerprint) -> None:
    by_path = Embedder(EmbedConfig(model=str(resolve_model_path(None)), **TORCH_FLOAT32))
    by_name = Embedder(EmbedConfig(model="all-MiniLM-L6-v2", **TORCH_FLOAT32))
    assert by_path.fingerprint == by_name.fingerprint == fingerprint
    assert by_path.store_key == by_name.store_key == fingerprint
    assert by_path.model_path == by_name.model_path == resolve_model_path(None)


def test_an_embedder_is_frozen_and_takes_an_embed_config() -> None:
    embedder = Embedder(EmbedConfig(batch_size=7))
    assert embedder.batch_size == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        embedder.config = EmbedConfig()  # type: ignore[misc]
    with pytest.raises(TypeError, match="EmbedConfig"):
        Embedder({"batch_size": 7})  # type: ignore[arg-type]


def test_nothing_is_preloaded_for_precomputed_vectors(tmp_path) -> None:
    config = EmbedConfig(anchor_vectors=str(tmp_path / "a.npz"), doc_vectors=str(tmp_path / "d.npz"))
    assert Embedder(config).preload() is None


def test_a_failed_preload_is_left_to_the_embedding_stage(tmp_path, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="negminer.mining.embedder"):
        thread = Embedder(EmbedConfig(model=str(tmp_path / "no-such-model"))).preload()
        thread.join()
    assert "model preload failed (ConfigError" in caplog.text


@pytest.mark.slow
def test_the_model_is_loaded_once_per_process() -> None:
    config = EmbedConfig(device="cpu", max_seq_length=93, **TORCH_FLOAT32)  # a cache key no other test loads
    misses = embedder_module._cached_model.cache_info().misses
    thread = Embedder(config).preload()
    first = Embedder(config).model  # waits for the preload instead of loading a second copy
    thread.join()
    second = Embedder(EmbedConfig(device="cpu", max_seq_length=93, batch_size=4, **TORCH_FLOAT32)).model
    assert first is second and first.max_seq_length == 93
    assert embedder_module._cached_model.cache_info().misses == misses + 1
    assert Embedder(config).dim == 384


@pytest.mark.slow
def test_a_model_retrained_in_place_is_loaded_again_by_the_same_process(tmp_path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path(None), folder)
    config = EmbedConfig(model=str(folder), device="cpu", **TORCH_FLOAT32)
    before, fingerprint = Embedder(config).model, model_fingerprint(folder)
    assert Embedder(config).model is before and model_fingerprint(folder) == fingerprint

    settings = folder / "config_sentence_transformers.json"  # a retrained model's files change
    settings.write_text(settings.read_text() + "\n")

    assert model_fingerprint(folder) != fingerprint
    assert Embedder(config).model is not before


@pytest.mark.slow
@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_the_store_is_opened_under_its_key(tmp_path, store_dtype) -> None:
    embedder = Embedder(EmbedConfig(device="cpu", store_dtype=store_dtype))
    store = embedder.open_store(tmp_path)
    assert store.folder == tmp_path / embedder.store_key
    assert (store.dim, store.dtype) == (384, store_dtype)


@pytest.mark.slow
def test_embed_to_file_writes_what_the_library_function_writes(tmp_path) -> None:
    config = EmbedConfig(device="cpu", batch_size=2, chunk_size=3)
    embedder = Embedder(config)
    wrapped = embedder.open_store(tmp_path / "wrapped")
    # no prompts: a document is embedded as the plain library call embeds it (keys, vectors, bytes)
    result = embedder.embed_to_file(TEXTS, tmp_path / "wrapped.npy", wrapped, task="document")
    store = EmbeddingStore(tmp_path / "direct", model_fingerprint=embedder.store_key, dim=384, dtype="float32")
    direct = embed_to_file(
        TEXTS,
        tmp_path / "direct.npy",
        model=embedder.model,
        store=store,
        batch_size=2,
        chunk_size=3,
        processes=1,
        precision="float32",
    )
    assert (tmp_path / "wrapped.npy").read_bytes() == (tmp_path / "direct.npy").read_bytes()
    assert result._replace(path=None, seconds=0) == direct._replace(path=None, seconds=0)
    assert (result.rows, result.embedded, result.reused) == (5, 4, 1)
    # chunk_size=3: the 4 new texts were stored as two shards, as the direct call stored them
    shards = sorted(p.name for p in (tmp_path / "wrapped" / embedder.store_key).glob("shard-*.keys.npy"))
    assert len(shards) == 2 == len(list(store.folder.glob("shard-*.keys.npy")))


@pytest.mark.slow
def test_embed_into_store_stores_what_the_library_function_stores(tmp_path) -> None:
    embedder = Embedder(EmbedConfig(device="cpu", batch_size=2))
    texts = TEXTS[:2] + TEXTS[3:]
    hashes = content_hashes(texts)
    wrapped = embedder.open_store(tmp_path / "wrapped")
    embedder.embed_into_store(texts, hashes, wrapped, task="query")
    direct = EmbeddingStore(tmp_path / "direct", model_fingerprint=embedder.store_key, dim=384, dtype="float32")
    embed_into_store(texts, hashes, model=embedder.model, store=direct, batch_size=2, processes=1, precision="float32")
    ours, theirs = wrapped.lookup(hashes), direct.lookup(hashes)
    assert len(wrapped) == len(direct) == len(texts)
    np.testing.assert_array_equal(wrapped.fetch(ours), direct.fetch(theirs))
    np.testing.assert_array_equal(wrapped.token_lengths(ours), direct.token_lengths(theirs))


@pytest.mark.slow
def test_stored_vectors_are_served_without_loading_the_model(tmp_path, monkeypatch, caplog) -> None:
    config = EmbedConfig(device="cpu", max_seq_length=12, **TORCH_FLOAT32)  # some TEXTS are truncated
    first = Embedder(config)
    made = first.embed_to_file(TEXTS, tmp_path / "made.npy", first.open_store(tmp_path / "store"), task="document")
    assert 0 < made.truncated < len(TEXTS)

    def no_model(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Embedder, "model", property(no_model))
    monkeypatch.setattr(Embedder, "dim", property(no_model))
    with caplog.at_level(logging.DEBUG, logger="negminer.mining.embedder"):
        Embedder(config).preload(tmp_path / "store").join()  # a store folder exists: the model is not preloaded
    assert "preload failed" not in caplog.text
    again = Embedder(config)
    store = again.open_store(tmp_path / "store")
    served = again.embed_to_file(TEXTS, tmp_path / "served.npy", store, task="document")
    assert (store.dim, store.max_seq_length) == (384, 12)
    assert (served.embedded, served.reused, served.truncated) == (0, 5, made.truncated)
    assert (tmp_path / "served.npy").read_bytes() == (tmp_path / "made.npy").read_bytes()
    with pytest.raises(AssertionError, match="the model was loaded"):  # a missing text needs it
        again.embed_to_file(["a text the store lacks"], tmp_path / "new.npy", store, task="document")
