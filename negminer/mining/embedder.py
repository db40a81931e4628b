"""The embedding model of a run and what is keyed on it: one object instead of model, store and key.

An :class:`Embedder` is built from an :class:`~negminer.config.EmbedConfig` and answers every
question a stage asks about the embedding side: the model (loaded once per process, on the
backend and in the precision :func:`~negminer.mining.backends.resolve_encoding` chose), its
dimension and content fingerprint, the embedding store's folder name (:func:`store_key`) and the
store itself, and the embedding calls with the config's batch size, chunk size and processes.
Nothing is loaded until it is asked for: the store key needs only the model's files, and for
``auto`` the encoding's check, which loads the model once per machine (then cached on disk).

Contract of :func:`store_key` (the folder of the embedding store, so it must never change for
an unchanged config): the model's content fingerprint, then ``-seq{max_seq_length}`` when
``max_seq_length`` is set, the encoding's suffix (:attr:`~negminer.mining.backends.Encoding.key_suffix`:
``-{backend}`` when it is not torch, ``-{precision}`` when it is not float32),
``-prompts{digest}`` when a side has a prompt or the model routes queries and documents to
other modules (:func:`prompts_digest`), and ``-{store_dtype}`` when the store's dtype is not
float32. Vectors that differ in any of these never share a folder.

Prompts (:func:`effective_prompts`): anchors are encoded as queries (sentence-transformers'
``encode_query``), positives and corpus texts as documents (``encode_document``), each with the
literal prompt that ``embed.query_prompt`` / ``embed.document_prompt`` give, or the model's
prompt that ``*_prompt_name`` names, or else the prompt sentence-transformers would choose
(the model's ``query`` prompt; its ``document``, ``passage`` or ``corpus`` prompt; else its
``default_prompt_name``). The resolved text is passed to the model explicitly, so the vectors
are always those the store key names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from negminer.config import EmbedConfig
from negminer.errors import ConfigError
from negminer.mining.allocator import freeze_long_lived
from negminer.mining.backends import Encoding, encoding_model, resolve_encoding
from negminer.mining.embedding import Side
from negminer.mining.encoder import (
    MODELS_KEPT,
    Task,
    embedding_dimension,
    load_model,
    model_fingerprint,
    resolve_model_path,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from sentence_transformers import SentenceTransformer

    from negminer.mining.embedding import EmbedResult
    from negminer.storage.embedding_store import EmbeddingStore

logger = logging.getLogger(__name__)


# The model's own prompt of each side, by the names sentence-transformers' encode_query /
# encode_document look for (in this order) when given no prompt.
_OWN_PROMPT_NAMES: dict[Task, tuple[str, ...]] = {"query": ("query",), "document": ("document", "passage", "corpus")}


class Prompts(NamedTuple):
    """The literal prompts of both sides and whether the model routes them apart.

    Attributes:
        query: put before every anchor ("" for none).
        document: put before every positive and corpus text ("" for none).
        routed: the model has a Router module (queries and documents run through other modules).
    """

    query: str
    document: str
    routed: bool

    @property
    def alike(self) -> bool:
        """Whether anchors and documents are encoded the same way (so they share store keys)."""
        return self.query == self.document and not self.routed

    def side(self, task: Task) -> Side:
        """How texts of `task` are embedded and keyed (:class:`~negminer.mining.embedding.Side`)."""
        return Side(task=task, prompt=getattr(self, task), keyed_apart=not self.alike)


def effective_prompts(config: EmbedConfig) -> Prompts:
    """The prompts anchors and documents are embedded with under `config` (see the module docstring).

    The model is loaded only when a side's prompt must be looked up among its own prompts.

    Raises:
        ConfigError: a ``*_prompt_name`` that is not one of the model's prompts.

    Example:
        >>> effective_prompts(EmbedConfig(query_prompt="query: ", document_prompt="passage: "))  # doctest: +SKIP
        Prompts(query='query: ', document='passage: ', routed=False)
    """
    path = resolve_model_path(config.model)
    own: tuple[dict[str, str], str | None] | None = None
    if _may_name_prompts(config, path):
        model = _shared_model(config)
        own = ({k: v or "" for k, v in model.prompts.items()}, model.default_prompt_name)
    query = _side_prompt(config, "query", own)
    document = _side_prompt(config, "document", own)
    return Prompts(query=query, document=document, routed=_has_router(path))


def _may_name_prompts(config: EmbedConfig, path: Path) -> bool:
    """Whether a side without a literal prompt may take one of the model's (or a name must be checked)."""
    literals = config.query_prompt is not None and config.document_prompt is not None
    named = config.query_prompt_name is not None or config.document_prompt_name is not None
    saved = _read_json(path / "config_sentence_transformers.json")
    return not literals and (named or bool(saved.get("prompts")) or saved.get("default_prompt_name") is not None)


def _side_prompt(config: EmbedConfig, task: Task, own: tuple[dict[str, str], str | None] | None) -> str:
    """The literal prompt of `task`: the config's literal, its named prompt, or the model's own."""
    literal, name = getattr(config, f"{task}_prompt"), getattr(config, f"{task}_prompt_name")
    if literal is not None:
        return literal
    if own is None:  # the model defines no prompts and none is named
        return ""
    prompts, default_name = own
    if name is None:
        name = next((n for n in _OWN_PROMPT_NAMES[task] if n in prompts), default_name)
    if name is None:
        return ""
    if name not in prompts:
        raise ConfigError(
            f"embed.{task}_prompt_name {name!r} is not one of the model's prompts "
            f"({', '.join(sorted(prompts)) or 'it has none'}); give embed.{task}_prompt the literal prompt instead"
        )
    return prompts[name]


def _has_router(path: Path) -> bool:
    """Whether the model folder's modules.json lists a Router module (query/document routes)."""
    modules = _read_json(path / "modules.json")
    entries = modules if isinstance(modules, list) else []
    return any(str(entry.get("type", "")).rsplit(".", 1)[-1] == "Router" for entry in entries)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def prompts_digest(prompts: Prompts) -> str | None:
    """A short digest of `prompts` for keys; None when no side has a prompt and nothing is routed.

    Example:
        >>> prompts_digest(Prompts(query="", document="", routed=False)) is None
        True
    """
    if not (prompts.query or prompts.document or prompts.routed):
        return None
    text = json.dumps(prompts._asdict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def store_key(config: EmbedConfig) -> str:
    """The embedding store's folder name for vectors made under `config` (see the module contract).

    Example:
        >>> store_key(EmbedConfig(max_seq_length=128, store_dtype="float16"))  # doctest: +SKIP
        '5f1c…-seq128-float16'
    """
    key = model_fingerprint(resolve_model_path(config.model))
    # Vectors depend on the truncation length, backend, precision and prompts too: non-defaults get their own folder.
    if config.max_seq_length is not None:
        key = f"{key}-seq{config.max_seq_length}"
    key += resolve_encoding(config).key_suffix
    if (digest := prompts_digest(effective_prompts(config))) is not None:
        key = f"{key}-prompts{digest}"
    return key if config.store_dtype == "float32" else f"{key}-{config.store_dtype}"


@lru_cache(maxsize=MODELS_KEPT)
def _cached_model(
    model: str | None, device: str | None, max_seq_length: int | None, fingerprint: str
) -> SentenceTransformer:
    """The loaded model; `fingerprint` (its files' hash) is part of the key, so a model retrained in
    place is loaded again by a long-lived process."""
    loaded = load_model(model, device=device, max_seq_length=max_seq_length)
    freeze_long_lived()  # the model and its libraries live as long as the process
    return loaded


_MODEL_LOCK = threading.Lock()


def shared_model(config: EmbedConfig) -> SentenceTransformer:
    """The process's one PyTorch copy of the configured model; a second thread waits for the first's load.

    Example:
        >>> shared_model(EmbedConfig()).max_seq_length  # doctest: +SKIP
        256
    """
    with _MODEL_LOCK:
        fingerprint = model_fingerprint(resolve_model_path(config.model))
        return _cached_model(config.model, config.device, config.max_seq_length, fingerprint)


_shared_model = shared_model


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
    def encoding(self) -> Encoding:
        """The backend and precision the vectors are made with (:func:`~negminer.mining.backends.resolve_encoding`)."""
        return resolve_encoding(self.config)

    @property
    def model(self) -> SentenceTransformer:
        """The process's SentenceTransformer that embeds under this config (loaded on first access).

        The shared PyTorch model for torch float32/bfloat16, a converted (OpenVINO) or quantised
        (int8) copy otherwise.
        """
        return encoding_model(self.config, self.encoding)

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
    def prompts(self) -> Prompts:
        """The literal prompts of anchors and documents (:func:`effective_prompts`)."""
        return effective_prompts(self.config)

    def side(self, task: Task) -> Side:
        """How texts of `task` ("query": anchors, "document": positives and corpus) are embedded and keyed."""
        return self.prompts.side(task)

    @property
    def batch_size(self) -> int:
        """Texts per forward pass: ``config.batch_size`` (the hook for an adapted batch size)."""
        return self.config.batch_size

    def open_store(self, store_root: str | Path) -> EmbeddingStore:
        """The embedding store under `store_root` for this config's vectors.

        A store folder made before knows its dimension and truncation length, so serving its
        vectors loads no model; a new one loads the model for them.

        Example:
            >>> Embedder(EmbedConfig()).open_store("store").folder.name  # doctest: +SKIP
        """
        from negminer.storage.embedding_store import EmbeddingStore

        key = self.store_key
        meta = EmbeddingStore.stored_meta(store_root, key) or {}
        dim = meta["dim"] if "dim" in meta else self.dim  # noqa: SIM401 (loads the model only if needed)
        seq = meta["max_seq_length"] if "max_seq_length" in meta else self.model.max_seq_length  # noqa: SIM401
        return EmbeddingStore(
            store_root, model_fingerprint=key, dim=dim, dtype=self.config.store_dtype, max_seq_length=seq
        )

    def embed_into_store(self, texts: list[str], keys: pa.Array, store: EmbeddingStore, *, task: Task) -> None:
        """Embed `texts` as `task` texts into `store` as one shard, under their store `keys` (shape (len(texts),)).

        :func:`negminer.mining.embedding.embed_into_store` with this config's settings; `keys`
        are :meth:`text_keys` of the texts.
        """
        from negminer.mining.embedding import embed_into_store

        embed_into_store(
            texts,
            keys,
            store=store,
            batch_size=self.batch_size,
            model=self.model,
            processes=self.config.processes,
            precision=self.encoding.autocast,
            side=self.side(task),
        )

    def embed_to_file(
        self, texts: list[str], out_path: str | Path, store: EmbeddingStore, *, task: Task
    ) -> EmbedResult:
        """Write the vectors of `texts`, embedded as `task` texts, to `out_path` (float32, (len(texts), dim)).

        :func:`negminer.mining.embedding.embed_to_file` with this config's settings: texts the
        store lacks are embedded in chunks of ``config.chunk_size`` and stored first.
        """
        from negminer.mining.embedding import embed_to_file

        return embed_to_file(
            texts,
            out_path,
            model=lambda: self.model,
            store=store,
            batch_size=self.batch_size,
            chunk_size=self.config.chunk_size,
            processes=self.config.processes,
            precision=self.encoding.autocast,
            side=self.side(task),
        )

    def text_keys(self, texts: list[str], *, task: Task) -> pa.Array:
        """The store keys of `texts` embedded as `task` texts, shape (len(texts),) of 16 bytes."""
        from negminer.textkeys import content_hashes

        return self.side(task).keys(content_hashes(texts))

    def preload(self, store_root: str | Path | None = None) -> threading.Thread | None:
        """Load the model in a background thread; None when the vectors are precomputed.

        Importing torch and sentence-transformers, loading the model and, for ``auto``, choosing
        the encoding take seconds that overlap with Prefect starting its temporary server. When
        `store_root` already holds a store folder for this config, only the encoding is chosen:
        the run may find every text stored and need no model (a rerun, a scheduled run on the same
        corpus); the embedding stage loads it if a text is missing. A failure is left to the
        embedding stage, which loads the model again and reports it there.

        Example:
            >>> thread = Embedder(EmbedConfig()).preload("datasets/.embeddings")  # doctest: +SKIP
        """
        if self.config.precomputed:
            return None
        config = self.config

        def load() -> None:
            from negminer.storage.embedding_store import EmbeddingStore

            try:
                embedder = Embedder(config)
                if store_root is not None and EmbeddingStore.stored_meta(store_root, embedder.store_key):
                    return
                _ = embedder.model  # resolves the encoding too (converts and checks once per machine)
            except Exception as err:  # any failure is the embedding stage's to report, with its traceback
                logger.debug(
                    "model preload failed (%s: %s); the embedding stage loads it again", type(err).__name__, err
                )

        thread = threading.Thread(target=load, name="negminer-model-preload", daemon=True)
        thread.start()
        return thread
