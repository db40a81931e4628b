"""embed_to_file with the real packaged model and a fresh embedding store."""

from __future__ import annotations

import numpy as np
import pytest

from negminer.config import EmbedConfig
from negminer.mining.embedding import embed_to_file
from negminer.mining.encoder import embedding_dimension, model_fingerprint, resolve_model_path
from negminer.storage.embedding_store import EmbeddingStore

pytestmark = pytest.mark.slow

# embed_to_file's settings, as the embed section gives them by default
# (the torch model of the `model` fixture: float32, not the default auto encoding's)
EMBED = {**EmbedConfig().model_dump(include={"batch_size", "chunk_size", "processes"}), "precision": "float32"}

TEXTS = [
    "Vitamin D supplementation reduces fracture risk.",
    "The mitochondria is the powerhouse of the cell.",
    "Vitamin D supplementation reduces fracture risk.",
    "Aspirin lowers the risk of colorectal cancer.",
    "vitamin d supplementation reduces fracture risk.",
]


@pytest.fixture
def store(tmp_path, model):
    return EmbeddingStore(
        tmp_path / "store",
        model_fingerprint=model_fingerprint(resolve_model_path(None)),
        dim=embedding_dimension(model),
        dtype="float32",
    )


def reference(model, texts: list[str]) -> np.ndarray:
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_vectors_equal_the_model_normalised_embeddings(tmp_path, model, store):
    result = embed_to_file(TEXTS, tmp_path / "out.npy", model=model, store=store, **EMBED)
    vectors = np.load(result.path)
    assert result.path == tmp_path / "out.npy"
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), embedding_dimension(model))
    np.testing.assert_allclose(vectors, reference(model, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # only the output is left in the folder, no partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "store"]


def test_duplicate_texts_are_embedded_once(tmp_path, model, store):
    result = embed_to_file(TEXTS, tmp_path / "out.npy", model=model, store=store, **EMBED)
    # the lowercase variant is a different exact text, so it counts
    assert result.rows == 5
    assert result.embedded == 4
    assert len(store) == 4
    vectors = np.load(result.path)
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_second_call_embeds_nothing_and_reuses_all(tmp_path, model, store):
    first = embed_to_file(TEXTS, tmp_path / "first.npy", model=model, store=store, **EMBED)
    second = embed_to_file(TEXTS, tmp_path / "second.npy", model=model, store=store, **EMBED)
    assert second.embedded == 0
    assert second.reused == len(TEXTS)
    assert second.rows == len(TEXTS)
    np.testing.assert_array_equal(np.load(first.path), np.load(second.path))


def test_a_reopened_store_is_reused(tmp_path, model, store):
    embed_to_file(TEXTS, tmp_path / "first.npy", model=model, store=store, **EMBED)
    reopened = EmbeddingStore(
        tmp_path / "store",
        model_fingerprint=model_fingerprint(resolve_model_path(None)),
        dim=embedding_dimension(model),
        dtype="float32",
    )
    again = embed_to_file(TEXTS[::-1], tmp_path / "again.npy", model=model, store=reopened, **EMBED)
    assert again.embedded == 0 and again.reused == len(TEXTS)
    np.testing.assert_array_equal(np.load(again.path), np.load(tmp_path / "first.npy")[::-1])


def test_only_new_texts_are_embedded(tmp_path, model, store):
    embed_to_file(TEXTS[:2], tmp_path / "first.npy", model=model, store=store, **EMBED)
    texts = [TEXTS[1], "A brand new sentence.", TEXTS[0], "A brand new sentence."]
    result = embed_to_file(texts, tmp_path / "second.npy", model=model, store=store, **EMBED)
    assert result.embedded == 1
    assert result.rows == 4
    np.testing.assert_allclose(np.load(result.path), reference(model, texts), atol=1e-5)


def test_small_chunks_give_the_same_vectors(tmp_path, model, store):
    result = embed_to_file(
        TEXTS, tmp_path / "out.npy", model=model, store=store, **{**EMBED, "chunk_size": 1, "batch_size": 2}
    )
    assert result.embedded == 4
    assert len(list(store.folder.glob("shard-*.keys.npy"))) == 4
    np.testing.assert_allclose(np.load(result.path), reference(model, TEXTS), atol=1e-5)


def test_empty_text_list(tmp_path, model, store):
    result = embed_to_file([], tmp_path / "out.npy", model=model, store=store, **EMBED)
    assert result.rows == 0 and result.embedded == 0
    assert np.load(result.path).shape == (0, embedding_dimension(model))


def test_a_failed_fetch_leaves_no_temporary_file(tmp_path):
    from negminer.mining.embedding import fetch_to_file
    from negminer.storage.embedding_store import EmbeddingStore
    from negminer.textkeys import content_hashes

    store = EmbeddingStore(tmp_path / "store", model_fingerprint="m", dim=4, dtype="float32")
    hashes = content_hashes(["a", "b"])
    store.add(hashes, np.ones((2, 4), np.float32))
    for shard in (tmp_path / "store").rglob("*.vec.npy"):
        shard.unlink()  # e.g. removed by gc while this run fetched
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError):
        fetch_to_file(hashes, out / "docs.npy", store=store)
    assert list(out.iterdir()) == []
