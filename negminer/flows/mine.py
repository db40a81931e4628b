"""The `mine` flow: read → embed → search → select → write, one task per stage.

Tasks are thin adapters over :mod:`negminer.stages`; they pass paths and small dicts, never
arrays, models or texts.
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from negminer import stages
from negminer.config import EmbedConfig, IndexConfig, InputConfig, MineConfig, PipelineConfig


@task(name="read", cache_policy=NO_CACHE)
def read_task(pairs: str, corpus: str | None, work_dir: str, config: InputConfig) -> dict[str, Any]:
    return stages.read_stage(pairs, corpus, work_dir, config=config)


@task(name="embed", cache_policy=NO_CACHE)
def embed_task(work_dir: str, config: EmbedConfig, store_root: str) -> dict[str, Any]:
    return stages.embed_stage(work_dir, config=config, store_root=store_root)


@task(name="search", cache_policy=NO_CACHE)
def search_task(work_dir: str, config: MineConfig, index_config: IndexConfig) -> dict[str, Any]:
    return stages.search_stage(work_dir, config=config, index_config=index_config)


@task(name="select", cache_policy=NO_CACHE)
def select_task(work_dir: str, candidates: str, config: MineConfig) -> dict[str, Any]:
    return stages.select_stage(work_dir, candidates, config=config)


@task(name="write", cache_policy=NO_CACHE)
def write_task(
    work_dir: str,
    root: str,
    name: str,
    config: PipelineConfig,
    refs: dict[str, dict[str, Any]],
) -> str:
    return stages.write_stage(
        work_dir,
        root,
        name,
        config=config,
        read_ref=refs["read"],
        embed_ref=refs["embed"],
        search_ref=refs["search"],
        select_ref=refs["select"],
    )


@flow(name="negminer-mine", log_prints=False)
def mine_flow(
    pairs: str,
    out: str,
    name: str,
    corpus: str | None = None,
    config: PipelineConfig = PipelineConfig(),
    store: str | None = None,
) -> str:
    """Mine hard negatives for `pairs` (against `corpus`) into a new version of `out`/`name`."""
    logger = get_run_logger()
    work_dir = str(stages.work_dir_for(out, name, pairs=pairs, corpus=corpus, config=config))
    store_root = store or str(Path(out) / ".embeddings")
    read_ref = read_task(pairs, corpus, work_dir, config.input)
    logger.info("read %s", read_ref["counts"])
    embed_ref = embed_task(work_dir, config.embed, store_root)
    logger.info("embedded %s", embed_ref["embedding"])
    search_ref = search_task(work_dir, config.mine, config.index)
    select_ref = select_task(work_dir, search_ref["candidates"], config.mine)
    logger.info("selected %s", select_ref["counts"])
    refs = {"read": read_ref, "embed": embed_ref, "search": search_ref, "select": select_ref}
    return write_task(work_dir, out, name, config, refs)
