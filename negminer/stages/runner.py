"""The local sequential runner: every stage in turn in this process, no Prefect.

It runs the same stage functions the Prefect flow wraps as tasks, in the same order, on the
same work folder, so both give the same dataset bytes and resume each other's runs.
"""

from __future__ import annotations

from pathlib import Path

from negminer.config import PipelineConfig
from negminer.mining.auto_strategy import resolve_strategy
from negminer.stages.bm25 import bm25_stage
from negminer.stages.curate import curate_stage
from negminer.stages.embed import embed_stage
from negminer.stages.index import index_stage
from negminer.stages.publish import StageRefs, audit_load_stage, publish_stage
from negminer.stages.read import read_stage
from negminer.stages.search import search_merge_stage, search_shards
from negminer.stages.second_dense import second_dense_stage
from negminer.stages.select import select_stage
from negminer.stages.workdir import default_store_root, parent_work_dir, work_dir_for


def run_stages(
    pairs: str | Path,
    out: str | Path,
    name: str,
    *,
    corpus: str | Path | None = None,
    config: PipelineConfig,
    store: str | Path | None = None,
) -> str:
    """Mine `pairs` (against `corpus`) into a new version of `out`/`name`; the version's path.

    Example:
        >>> run_stages("pairs.parquet", "datasets", "demo", config=PipelineConfig())  # doctest: +SKIP
        'datasets/demo/v0001'
    """
    from negminer.storage.retention import work_lock
    from negminer.storage.versions import check_dataset_name

    check_dataset_name(name)
    store_root = store or default_store_root(out)
    work_dir = work_dir_for(out, name, pairs=pairs, corpus=corpus, config=config, store=store_root)
    with work_lock(work_dir):
        read = read_stage(pairs, corpus, work_dir, config=config.input)
        embed = embed_stage(work_dir, config=config.embed, store_root=store_root)
        retrieval = config.mine.retrieval
        index = index_stage(work_dir, config=config.index, retrieval=retrieval, parent=parent_work_dir(out, name))
        shards = search_shards(read.anchors, config=retrieval)
        bm25 = bm25_stage(work_dir, config=retrieval) if "bm25" in retrieval.sources else None
        second = None
        if "dense2" in retrieval.sources:
            second = second_dense_stage(work_dir, config=config, store_root=store_root)
        options = {"config": retrieval, "index_config": config.index, "index": index, "bm25": bm25, "second": second}
        search = search_merge_stage(work_dir, shards, **options)
        curate = curate_stage(work_dir, search, config=config.curate)
        selection = resolve_strategy(config.mine.selection, curate.noise)
        select = select_stage(work_dir, curate, config=selection)
        refs = StageRefs(read=read, embed=embed, search=search, curate=curate, select=select, second=second)
        version = publish_stage(work_dir, out, name, config=config, refs=refs)
    audit_load_stage(version, out)
    return version
