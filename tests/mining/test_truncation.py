"""Texts beyond the model's length are truncated by the model and counted by negminer."""

from __future__ import annotations

import pytest

from negminer.config import EmbedConfig
from negminer.mining.embedding import embed_to_file
from negminer.mining.encoder import embedding_dimension, token_lengths
from negminer.storage.embedding_store import EmbeddingStore

pytestmark = pytest.mark.slow

# (the torch model of the `model` fixture: float32, not the default auto encoding's)
EMBED = {**EmbedConfig().model_dump(include={"batch_size", "chunk_size", "processes"}), "precision": "float32"}


def test_token_lengths_count_special_tokens(model) -> None:
    lengths = token_lengths(["hello", "hello world"], model)
    assert lengths[1] == lengths[0] + 1
    assert lengths[0] == 3  # [CLS] hello [SEP]


def test_long_texts_are_counted_as_truncated(model, tmp_path) -> None:
    long_text = " ".join(["protein"] * (model.max_seq_length + 50))
    texts = ["short sentence", long_text, long_text + " again"]
    store = EmbeddingStore(tmp_path / "store", model_fingerprint="fp", dim=embedding_dimension(model), dtype="float32")
    first = embed_to_file(texts, tmp_path / "a.npy", model=model, store=store, **EMBED)
    assert first.truncated == 2
    again = embed_to_file(texts[:2], tmp_path / "b.npy", model=model, store=store, **EMBED)
    assert (again.embedded, again.truncated) == (0, 1)
