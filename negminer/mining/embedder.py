"""The embedding model of a run and what is keyed on it: one object instead of model, store and key.

An :class:`Embedder` is built from an :class:`~negminer.config.EmbedConfig` and answers every
question a stage asks about the embedding side: the model (loaded once per process), its
dimension and content fingerprint, the embedding store's folder name (:func:`store_key`) and the
store itself, and the embedding calls with the config's batch size, chunk size, processes and
precision. Nothing is loaded until it is asked for: the store key needs only the model's files.

Contract of :func:`store_key` (the folder of the embedding store, so it must never change for
an unchanged config): the model's content fingerprint, then ``-seq{max_seq_length}`` when
``max_seq_length`` is set, ``-{precision}`` when the precision is not float32, and
``-{store_dtype}`` when the store's dtype is not float32. Vectors that differ in any of these
never share a folder.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from negminer.config import EmbedConfig
from negminer.mining.encoder import embedding_dimension, load_model, model_fingerprint, resolve_model_path

if TYPE_CHECKING:
    import pyarrow as pa
    from sentence_transformers import SentenceTransformer

    from negminer.mining.embedding import EmbedResult
    from negminer.storage.embedding_store import EmbeddingStore

logger = logging.getLogger(__name__)


def store_key(config: EmbedConfig) -> str:
    """The embedding store's folder name for vectors made under `config` (see the module contract).

    Example:
        >>> store_key(EmbedConfig(max_seq_length=128, store_dtype="float16"))  # doctest: +SKIP
        '5f1c…-seq128-float16'
    """
    key = model_fingerprint(resolve_model_path(config.model))
    # Vectors depend on the truncation length and precision too: non-defaults get their own folder.
    if config.max_seq_length is not None:
        key = f"{key}-seq{config.max_seq_length}"
    if config.precision != "float32":
        key = f"{key}-{config.precision}"
    return key if config.store_dtype == "float32" else f"{key}-{config.store_dtype}"


@cache
def _cached_model(model: str | None, device: str | None, max_seq_length: int | None) -> SentenceTransformer:
    return load_model(model, device=device, max_seq_length=max_seq_length)


_MODEL_LOCK = threading.Lock()


def _shared_model(config: EmbedConfig) -> SentenceTransformer:
    """The process's one copy of the configured model; a second thread waits for the first's load."""
    with _MODEL_LOCK:
        return _cached_model(config.model, config.device, config.max_seq_length)


@dataclass(frozen=True, slots=True)
class Embedder:
    """The configured embedding model, its store and its embedding calls.

    Every property is computed on access; the model behind :attr:`model` is loaded once per
    process for each (model, device, max_seq_length) and shared by every Embedder of it.

    Args:
        config: the run's embed section.

    Example:
        >>> embedder = Embedder(EmbedConfig())
        >>> store = embedder.open_store("datasets/.embeddings")  # doctest: +SKIP
        >>> embedder.embed_to_file(["a claim"], "anchors.npy", store).rows  # doctest: +SKIP
        1
    """

    config: EmbedConfig

    def __post_init__(self) -> None:
        if not isinstance(self.config, EmbedConfig):
            raise TypeError(f"Embedder takes an EmbedConfig, got {type(self.config).__name__}")

    @property
    def model(self) -> SentenceTransformer:
        """The process's shared SentenceTransformer for this config (loaded on first access)."""
        return _shared_model(self.config)

    @property
    def dim(self) -> int:
        """The model's embedding dimension (loads the model)."""
        return embedding_dimension(self.model)

    @property
    def model_path(self) -> Path:
        """The model's local folder (the packaged all-MiniLM-L6-v2 when ``config.model`` is None)."""
        return resolve_model_path(self.config.model)

    @property
    def fingerprint(self) -> str:
        """sha256 of the model folder's files (:func:`~negminer.mining.encoder.model_fingerprint`)."""
        return model_fingerprint(self.model_path)

    @property
    def store_key(self) -> str:
        """The embedding store's folder name for this config (:func:`store_key`)."""
        return store_key(self.config)

    @property
    def batch_size(self) -> int:
        """Texts per forward pass: ``config.batch_size`` (the hook for an adapted batch size)."""
        return self.config.batch_size

    def open_store(self, store_root: str | Path) -> EmbeddingStore:
        """The embedding store under `store_root` for this config's vectors (loads the model for its dim).

        Example:
            >>> Embedder(EmbedConfig()).open_store("store").folder.name  # doctest: +SKIP
        """
        from negminer.storage.embedding_store import EmbeddingStore

        return EmbeddingStore(store_root, model_fingerprint=self.store_key, dim=self.dim, dtype=self.config.store_dtype)

    def embed_into_store(self, texts: list[str], hashes: pa.Array, store: EmbeddingStore) -> None:
        """Embed `texts` (content hashes `hashes`, shape (len(texts),)) into `store` as one shard.

        :func:`negminer.mining.embedding.embed_into_store` with this config's settings.
        """
        from negminer.mining.embedding import embed_into_store

        embed_into_store(
            texts,
            hashes,
            store=store,
            batch_size=self.batch_size,
            model=self.model,
            processes=self.config.processes,
            precision=self.config.precision,
        )

    def embed_to_file(self, texts: list[str], out_path: str | Path, store: EmbeddingStore) -> EmbedResult:
        """Write the vectors of `texts` to `out_path` (float32, (len(texts), dim)) through `store`.

        :func:`negminer.mining.embedding.embed_to_file` with this config's settings: texts the
        store lacks are embedded in chunks of ``config.chunk_size`` and stored first.
        """
        from negminer.mining.embedding import embed_to_file

        return embed_to_file(
            texts,
            out_path,
            model=self.model,
            store=store,
            batch_size=self.batch_size,
            chunk_size=self.config.chunk_size,
            processes=self.config.processes,
            precision=self.config.precision,
        )

    def preload(self) -> threading.Thread | None:
        """Load the model in a background thread; None when the vectors are precomputed.

        Importing torch and sentence-transformers and loading the model take seconds that
        overlap with Prefect starting its temporary server. A failure is left to the embedding
        stage, which loads the model again and reports it there.

        Example:
            >>> thread = Embedder(EmbedConfig()).preload()  # doctest: +SKIP
        """
        if self.config.precomputed:
            return None
        config = self.config

        def load() -> None:
            try:
                _shared_model(config)
            except Exception as err:  # any failure is the embedding stage's to report, with its traceback
                logger.debug(
                    "model preload failed (%s: %s); the embedding stage loads it again", type(err).__name__, err
                )

        thread = threading.Thread(target=load, name="negminer-model-preload", daemon=True)
        thread.start()
        return thread
