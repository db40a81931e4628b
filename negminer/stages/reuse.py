"""Taking over the parent run's index when this run's docs extend the parent's.

The parent is the work folder of the dataset's LATEST version. An unsharded exact index is
extended when the parent's docs begin this run's docs (same texts, same order, vectors from
the same store); an index shard is taken over (hard link) when its own doc range matches, and
an approximate shard is tuned again on this run's anchors. Either way the index equals the
one this run would build from scratch, so the dataset does not depend on what ran before.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from negminer.stages.refs import DocRange, IndexRef, IndexShardRef
from negminer.stages.workdir import finished, store_of
from negminer.storage.parquet_stream import read_row_range

logger = logging.getLogger(__name__)


def parent_shard(work_dir: Path, parent: Path | None, shard: DocRange, *, k: int, path: Path) -> IndexShardRef | None:
    """The parent's index of the same doc range linked to `path`, when its docs are this run's."""
    if parent is None or parent.resolve() == work_dir.resolve():
        return None
    old_path = parent / path.name
    old_ref = finished(old_path.with_suffix(".json"), IndexShardRef)
    # the shard was tuned for min(k, its size) neighbours, as build_index_shard does
    if old_ref is None or not old_path.exists() or old_ref.k != min(k, shard.stop - shard.first):
        return None
    if (old_ref.first, old_ref.stop) != (shard.first, shard.stop):
        return None
    store = store_of(work_dir)
    if store_of(parent) != store or not same_doc_texts(work_dir, parent, shard.first, shard.stop):
        return None
    if None in store and not same_doc_vectors(work_dir, parent, shard.first, shard.stop):
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(old_path, tmp)
        except OSError:  # another file system: copy
            shutil.copyfile(old_path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("index shard %d (docs %d-%d) taken from %s", shard.shard, shard.first, shard.stop, parent.name)
    return old_ref.model_copy(update={"path": str(path), "reused_from": parent.name})


def parent_index(work_dir: Path, parent: Path | None, *, key: str, factory: str) -> tuple[Any, str] | None:
    """The parent run's exact index and work key, when this run's docs extend the parent's docs."""
    import faiss

    from negminer.mining.index import FLAT

    if parent is None or parent.resolve() == work_dir.resolve():
        return None
    old_ref = finished(parent / f"index-{key}.json", IndexRef)
    # Only an exact index extended equals one built over every doc: a trained (IVF) index
    # would keep the parent's centroids, so identical inputs would give other datasets.
    if old_ref is None or old_ref.shards or old_ref.factory != factory or factory != FLAT:
        return None
    if not Path(old_ref.path).exists():
        return None
    shared = shared_doc_prefix(work_dir, parent)
    if shared is None or None in store_of(work_dir):
        return None
    index = faiss.read_index(old_ref.path)
    if index.ntotal != shared:
        return None
    logger.info("extending the index of %s (%d docs)", parent.name, shared)
    return index, parent.name


def same_doc_vectors(work_dir: Path, parent: Path, first: int, stop: int, *, block: int = 65536) -> bool:
    """Whether docs.npy rows [first, stop) are equal in both work folders (read in blocks)."""
    new = np.load(work_dir / "docs.npy", mmap_mode="r")
    old = np.load(parent / "docs.npy", mmap_mode="r")
    if old.shape[1:] != new.shape[1:] or old.dtype != new.dtype or len(old) < stop:
        return False
    return all(
        np.array_equal(new[i : min(i + block, stop)], old[i : min(i + block, stop)]) for i in range(first, stop, block)
    )


def same_doc_texts(work_dir: Path, parent: Path, first: int, stop: int) -> bool:
    """Whether both runs' docs [first, stop) are the same texts (only the row groups holding them are read)."""
    old_path, new_path = parent / "docs.parquet", work_dir / "docs.parquet"
    if min(pq.ParquetFile(p).metadata.num_rows for p in (old_path, new_path)) < stop:
        return False
    texts = [read_row_range(path, first, stop, columns=["text"]).column("text") for path in (old_path, new_path)]
    return texts[0].equals(texts[1])


def shared_doc_prefix(work_dir: Path, parent: Path) -> int | None:
    """How many docs the parent run had, when they begin this run's docs (same texts and order).

    Their vectors are the same too when both runs embedded through the same store; runs on
    precomputed vectors (no store) compare them with :func:`same_doc_vectors`.
    """
    if store_of(parent) != store_of(work_dir):
        return None
    old_docs = pq.read_table(parent / "docs.parquet", columns=["text"]).column("text")
    new_docs = pq.read_table(work_dir / "docs.parquet", columns=["text"]).column("text")
    if len(old_docs) > len(new_docs) or not new_docs.slice(0, len(old_docs)).equals(old_docs):
        return None
    return len(old_docs)
