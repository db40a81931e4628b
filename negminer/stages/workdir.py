"""The run's work folder: its key, its completion markers, and the parent run's folder.

A run works in ``ROOT/NAME/.work/KEY``, KEY hashing what its reusable outputs depend on
(input content, input options, embedding source, store). Each stage leaves a completion
marker there, the JSON of the reference it returned (:mod:`negminer.stages.refs`); a stage
that finds its marker returns it without redoing the work, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from negminer.config import EmbedConfig, PipelineConfig
from negminer.stages.refs import EmbedRef, InputFingerprint, RefT, load_ref
from negminer.storage.atomic import sha256_file, write_bytes_atomic
from negminer.storage.readers import require_input

if TYPE_CHECKING:
    from negminer.mining.backends import Encoding


def fingerprint_input(path: str | Path | None) -> InputFingerprint | None:
    """sha256 and size of an input file, or of every Parquet file in a folder."""
    if path is None:
        return None
    path = require_input(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return InputFingerprint(path=str(path), sha256=digest.hexdigest(), bytes=sum(f.stat().st_size for f in files))


def default_store_root(root: str | Path) -> Path:
    """The embedding store of runs into `root` that name none: ``ROOT/.embeddings``."""
    return Path(root) / ".embeddings"


def work_dir_for(
    root: str | Path,
    name: str,
    *,
    pairs: str | Path,
    corpus: str | Path | None,
    config: PipelineConfig,
    store: str | Path | None,
) -> Path:
    """The run's work folder, keyed by input content, input options, embedding model, prompts and store.

    `store` is the embedding store root (None: :func:`default_store_root`). Another store gets
    another work folder: the folder's embed.json (the manifest's store and embedded counts)
    describes one store. The default store adds nothing to the key, so its folders keep their names.
    """
    corpus_print = fingerprint_input(corpus)
    key = {
        "pairs": fingerprint_input(pairs).sha256,
        "corpus": corpus_print.sha256 if corpus_print else None,
        "input": config.input.model_dump(),
        **vectors_key(config.embed, store=store, root=root),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(root) / name / ".work" / digest


def vectors_key(config: EmbedConfig, *, store: str | Path | None, root: str | Path) -> dict[str, Any]:
    """What the vectors depend on: the model's content (or the vector files'), and how it is run."""
    key: dict[str, Any] = {"model": embedding_source_fingerprint(config), "max_seq_length": config.max_seq_length}
    if not config.precomputed:  # other vectors: another work folder
        if config.store_dtype != "float32":
            key["store_dtype"] = config.store_dtype
        encoding = _encoding(config)
        if encoding.backend != "torch":
            key["backend"] = encoding.backend
        if encoding.precision != "float32":
            key["precision"] = encoding.precision
        if (prompts := _prompts_key(config)) is not None:
            key["prompts"] = prompts
        if store is not None and (resolved := Path(store).resolve()) != default_store_root(root).resolve():
            key["store"] = str(resolved)
    return key


def _encoding(config: EmbedConfig) -> Encoding:
    """The backend and precision the vectors are made with (``auto`` resolved)."""
    from negminer.mining.backends import resolve_encoding

    return resolve_encoding(config)


def _prompts_key(config: EmbedConfig) -> str | None:
    """The effective prompts' digest; None without prompts, so those folders keep their names."""
    from negminer.mining.embedder import effective_prompts, prompts_digest

    return prompts_digest(effective_prompts(config))


def embedding_source_fingerprint(config: EmbedConfig) -> str:
    """The model's content hash, or ``precomputed:`` and the vector files' hashes."""
    if config.precomputed:
        files = (fingerprint_input(config.anchor_vectors), fingerprint_input(config.doc_vectors))
        return "precomputed:" + "+".join(f.sha256 for f in files)
    from negminer.mining.embedder import Embedder

    return Embedder(config).fingerprint


DOC_KEYS = "doc-keys.npy"


def doc_keys_file(work_dir: str | Path) -> Path:
    """``work_dir/doc-keys.npy``: each doc id's 64-bit hash, the tie-break of the fused candidate
    lists (BM25 and dense2 share it), written the first time a source asks for it."""
    path = Path(work_dir) / DOC_KEYS
    if not path.exists():
        from negminer.mining.bm25 import doc_keys
        from negminer.storage.atomic import write_npy_atomic

        write_npy_atomic(path, doc_keys(Path(work_dir) / "docs.parquet"))
    return path


def finished(path: Path, kind: type[RefT]) -> RefT | None:
    """The reference of a stage whose completion marker is `path`, or None."""
    return load_ref(path, kind)


def finish(path: Path, ref: RefT) -> RefT:
    """Write `ref` as the completion marker `path` (atomically) and return it."""
    write_bytes_atomic(path, json.dumps(ref.to_json(), indent=2, sort_keys=True).encode())
    return ref


def read_marker(path: Path) -> dict | None:
    """A small JSON file the stages keep beside their markers (publish intent, published list)."""
    return json.loads(path.read_text()) if path.exists() else None


def write_marker(path: Path, content: dict) -> None:
    write_bytes_atomic(path, json.dumps(content, indent=2, sort_keys=True).encode())


def store_of(work_dir: Path) -> tuple[str | None, str | None]:
    """(store root, model folder) that a work folder's vectors came from."""
    embed = finished(work_dir / "embed.json", EmbedRef)
    if embed is None or embed.store is None:
        return None, None
    return embed.store.root, embed.store.folder


def parent_work_dir(root: str | Path, name: str) -> str | None:
    """The work folder of the dataset's LATEST version, if it is still there (see the index stage)."""
    from negminer.storage.versions import latest_version, read_manifest

    dataset_dir = Path(root) / name
    latest = latest_version(dataset_dir)
    if latest is None or not (dataset_dir / latest).is_dir():
        return None
    key = (read_manifest(dataset_dir / latest).get("work") or {}).get("key")
    path = dataset_dir / ".work" / key if key else None
    return str(path) if path is not None and path.is_dir() else None
