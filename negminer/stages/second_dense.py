"""The dense2 candidate source: a second embedding model's vectors and index.

The read stage's anchor and doc tables are linked into a sub-folder of the work folder named
by the second model's vectors (its content, how it runs, the store), and the embed and index
stages run there as they run for the first model: through the same embedding store, in the
same shards, resumed the same way, on Dask workers too. The search stage then takes each
anchor's nearest documents under that model as one more list to fuse
(:mod:`negminer.mining.fusion`); every candidate keeps the first model's cosine as its score.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from negminer.config import EmbedConfig, PipelineConfig
from negminer.stages.embed import embed_stage
from negminer.stages.index import index_stage
from negminer.stages.refs import EmbedRef, IndexRef, SecondDenseRef
from negminer.stages.workdir import doc_keys_file, vectors_key
from negminer.storage.atomic import atomic_path

FOLDER_PREFIX = "dense2-"
READ_TABLES = ("anchors.parquet", "docs.parquet")
_NO_PROMPTS = dict.fromkeys(("query_prompt", "query_prompt_name", "document_prompt", "document_prompt_name"))


def second_embed_config(config: PipelineConfig) -> EmbedConfig:
    """The embed section as the second model runs it: its own model (and prompts), never vector files."""
    update = {"model": config.mine.retrieval.second_model, "anchor_vectors": None, "doc_vectors": None, **_NO_PROMPTS}
    return config.embed.model_copy(update=update)


def second_work_dir(work_dir: str | Path, config: PipelineConfig) -> Path:
    """The sub-folder the second model's vectors and index live in, with the read stage's tables linked in."""
    work_dir = Path(work_dir)
    key = vectors_key(second_embed_config(config), store=None, root=work_dir)  # the store: in work_dir's key
    folder = work_dir / (FOLDER_PREFIX + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12])
    folder.mkdir(exist_ok=True)
    for name in READ_TABLES:
        if not (folder / name).exists():
            with atomic_path(folder / name) as tmp:
                _link(work_dir / name, tmp)
    doc_keys_file(work_dir)  # the fusion's tie-break, shared with the BM25 source
    return folder


def _link(source: Path, target: Path) -> None:
    """A hard link (the read stage's tables are written once and never changed), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def second_dense_ref(folder: str | Path, embed: EmbedRef, index: IndexRef) -> SecondDenseRef:
    return SecondDenseRef(work_dir=str(folder), model=embed.model, index=index, store=embed.store)


def second_dense_stage(work_dir: str | Path, *, config: PipelineConfig, store_root: str | Path) -> SecondDenseRef:
    """Embed and index the read stage's anchors and docs with ``mine.second_model`` (see the module).

    The flow runs the same embed and index stages as tasks, mapped over their shards.
    """
    folder = second_work_dir(work_dir, config)
    embed = embed_stage(folder, config=second_embed_config(config), store_root=store_root)
    index = index_stage(folder, config=config.index, retrieval=config.mine.retrieval)
    return second_dense_ref(folder, embed, index)
