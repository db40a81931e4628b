"""The `mine` flow: read → embed → index → search → curate → select → publish → report.

One task per stage, each a thin adapter over :mod:`negminer.stages`; tasks pass the stages'
frozen references (:mod:`negminer.stages.refs`), never arrays, models or texts. Embedding is
planned once, then mapped over shards of the texts the store lacks (each shard is a unit of
caching, retry and resume).

Caching: the stages that later runs reuse (read, embed, index, search) cache on
``INPUTS + TASK_SOURCE`` with their small results persisted inside the run's work folder,
which is keyed by the inputs' content; removing the folder (``gc``, pruning) drops its cache
entries with it, so a cache hit always points at files that exist. Strategy, write and report
run every time. Retries are for I/O errors only (:class:`StorageError`, transient
``OSError``), never for bad input or configuration.
"""

import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from prefect import Task, flow, get_run_logger, task, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from negminer import stages
from negminer.config import (
    CurateConfig,
    EmbedConfig,
    IndexConfig,
    InputConfig,
    PipelineConfig,
    RetrievalConfig,
    SelectionConfig,
)
from negminer.errors import NegminerError, StorageError
from negminer.flows import stopping
from negminer.flows.runtime import dask_task_runner, shared_api, start_temporary_server
from negminer.mining.allocator import freeze_long_lived
from negminer.mining.auto_strategy import resolve_strategy
from negminer.mining.embedder import Embedder
from negminer.report import run_report
from negminer.stages.publish import StageRefs
from negminer.stages.refs import (
    AuditLoadRef,
    Bm25PlanRef,
    Bm25Ref,
    Bm25ShardRef,
    CuratePartRef,
    CuratePlanRef,
    CurateRef,
    DocRange,
    EmbedPlanRef,
    EmbedRef,
    EmbedShard,
    EmbedShardResult,
    IndexRef,
    IndexShardRef,
    ReadRef,
    SearchPartRef,
    SearchRef,
    SecondDenseRef,
    SelectPartRef,
    SelectPlanRef,
    SelectRef,
    SelectShard,
)
from negminer.storage.readers import require_input
from negminer.storage.retention import work_lock
from negminer.storage.versions import check_dataset_name

# The parent run's work folder only says where an index may be extended from: the index
# built either way is the same, so it is not part of the cache key.
REUSED = (INPUTS - "parent") + TASK_SOURCE
RESULTS_FOLDER = ".results"


def retry_on_io_error(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a failed task only when it failed on I/O that may succeed on a second try."""
    try:
        state.result()
    except StorageError:
        return True
    except NegminerError:
        return False
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        return False
    except OSError:
        return True
    except Exception:  # any other failure is a bug or bad input: never retried
        return False
    return False


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_on_io_error}
PERSISTED: dict[str, Any] = {"cache_policy": REUSED, "persist_result": True, "result_serializer": "json"}


@task(name="read", **PERSISTED, **IO_RETRIES)
def read_task(pairs: str, corpus: str | None, work_dir: str, config: InputConfig) -> ReadRef:
    return stages.read_stage(pairs, corpus, work_dir, config=config)


@task(name="embed-plan", **PERSISTED, **IO_RETRIES)
def embed_plan_task(work_dir: str, config: EmbedConfig, store_root: str) -> EmbedPlanRef:
    return stages.embed_plan_stage(work_dir, config=config, store_root=store_root)


@task(name="embed-shard", **PERSISTED, **IO_RETRIES)
def embed_shard_task(shard: EmbedShard, config: EmbedConfig, store_root: str) -> EmbedShardResult:
    return stages.embed_shard_stage(shard, config=config, store_root=store_root)


@task(name="embed", **PERSISTED, **IO_RETRIES)
def embed_task(work_dir: str, config: EmbedConfig, store_root: str) -> EmbedRef:
    return stages.embed_assemble_stage(work_dir, config=config, store_root=store_root)


@task(name="index-shard", **PERSISTED, **IO_RETRIES)
def index_shard_task(
    work_dir: str, shard: DocRange, config: IndexConfig, retrieval: RetrievalConfig, parent: str | None
) -> IndexShardRef:
    return stages.index_shard_stage(work_dir, shard, config=config, retrieval=retrieval, parent=parent)


@task(name="index", **PERSISTED, **IO_RETRIES)
def index_task(work_dir: str, config: IndexConfig, retrieval: RetrievalConfig, parent: str | None) -> IndexRef:
    return stages.index_stage(work_dir, config=config, retrieval=retrieval, parent=parent)


@task(name="bm25-plan", **PERSISTED, **IO_RETRIES)
def bm25_plan_task(work_dir: str, config: RetrievalConfig) -> Bm25PlanRef:
    return stages.bm25_plan_stage(work_dir, config=config)


@task(name="bm25-shard", **PERSISTED, **IO_RETRIES)
def bm25_shard_task(work_dir: str, shard: DocRange, plan: Bm25PlanRef) -> Bm25ShardRef:
    return stages.bm25_shard_stage(work_dir, shard, plan=plan)


@task(name="bm25", **PERSISTED, **IO_RETRIES)
def bm25_task(work_dir: str, config: RetrievalConfig) -> Bm25Ref:
    return stages.bm25_stage(work_dir, config=config)


@task(name="search-shard", **PERSISTED, **IO_RETRIES)
def search_shard_task(
    work_dir: str,
    shard: DocRange,
    config: RetrievalConfig,
    index_config: IndexConfig,
    index: IndexRef,
    bm25: Bm25Ref | None = None,
    second: SecondDenseRef | None = None,
) -> SearchPartRef:
    options = {"config": config, "index_config": index_config, "index": index, "bm25": bm25, "second": second}
    return stages.search_shard_stage(work_dir, shard, **options)


@task(name="search", **PERSISTED, **IO_RETRIES)
def search_task(
    work_dir: str,
    config: RetrievalConfig,
    index_config: IndexConfig,
    index: IndexRef,
    shards: list[DocRange],
    bm25: Bm25Ref | None = None,
    second: SecondDenseRef | None = None,
) -> SearchRef:
    options = {"config": config, "index_config": index_config, "index": index, "bm25": bm25, "second": second}
    return stages.search_merge_stage(work_dir, shards, **options)


@task(name="curate-plan", cache_policy=NO_CACHE, **IO_RETRIES)
def curate_plan_task(work_dir: str, search: SearchRef, config: CurateConfig) -> CuratePlanRef:
    return stages.curate_plan_stage(work_dir, search, config=config)


@task(name="curate-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def curate_shard_task(work_dir: str, plan: CuratePlanRef, shard: DocRange, config: CurateConfig) -> CuratePartRef:
    return stages.curate_shard_stage(work_dir, plan, shard, config=config)


@task(name="curate", cache_policy=NO_CACHE, **IO_RETRIES)
def curate_task(work_dir: str, plan: CuratePlanRef, parts: list[CuratePartRef], config: CurateConfig) -> CurateRef:
    return stages.curate_merge_stage(work_dir, plan, parts, config=config)


@task(name="select-plan", cache_policy=NO_CACHE, **IO_RETRIES)
def select_plan_task(work_dir: str, curated: CurateRef, config: SelectionConfig) -> SelectPlanRef:
    return stages.select_plan_stage(work_dir, curated, config=config)


@task(name="select-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def select_shard_task(work_dir: str, plan: SelectPlanRef, shard: SelectShard, config: SelectionConfig) -> SelectPartRef:
    return stages.select_shard_stage(work_dir, plan, shard, config=config)


@task(name="strategy", cache_policy=NO_CACHE)
def strategy_task(work_dir: str, plan: SelectPlanRef, parts: list[SelectPartRef], config: SelectionConfig) -> SelectRef:
    return stages.select_merge_stage(work_dir, plan, config=config)


@task(name="write", cache_policy=NO_CACHE, **IO_RETRIES)
def write_task(work_dir: str, root: str, name: str, config: PipelineConfig, refs: StageRefs) -> str:
    return stages.publish_stage(work_dir, root, name, config=config, refs=refs)


@task(name="audit-load", cache_policy=NO_CACHE, **IO_RETRIES)
def audit_load_task(version: str, root: str) -> AuditLoadRef:
    return stages.audit_load_stage(version, root)


@task(name="report", cache_policy=NO_CACHE)
def report_task(version: str, name: str, timings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Publish the run's markdown summary, its top flagged pairs and a link to the version."""
    report = run_report(version, timings=timings)
    key = artifact_key(name)
    create_markdown_artifact(markdown=report.markdown, key=f"{key}-report", description=f"negminer run {version}")
    create_table_artifact(
        table=report.flagged,
        key=f"{key}-flagged",
        description=f"top {len(report.flagged)} of {report.flagged_total} flagged pairs (lowest quality first)",
    )
    create_link_artifact(link=report.link, link_text=version, key=f"{key}-version", description="dataset version")
    for warning in report.warnings:
        get_run_logger().warning("%s: %s", version, warning)
    return {"version": version, "flagged": report.flagged_total, "warnings": report.warnings}


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "negminer-" + (re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "dataset")


class _Tasks(NamedTuple):
    read: Task
    embed_plan: Task
    embed_shard: Task
    embed: Task
    index_shard: Task
    index: Task
    bm25_plan: Task
    bm25_shard: Task
    bm25: Task
    search_shard: Task
    search: Task


def _cached_in(work_dir: Path) -> _Tasks:
    """The reusable tasks with their results persisted in the run's work folder."""
    storage = work_dir / RESULTS_FOLDER
    tasks = (
        read_task,
        embed_plan_task,
        embed_shard_task,
        embed_task,
        index_shard_task,
        index_task,
        bm25_plan_task,
        bm25_shard_task,
        bm25_task,
        search_shard_task,
        search_task,
    )
    return _Tasks(*(t.with_options(result_storage=storage) for t in tasks))


class _Clock:
    """Wall time per stage, and whether Prefect served it from cache, for the run report."""

    def __init__(self) -> None:
        self.timings: dict[str, dict[str, Any]] = {}

    def run(self, stage: str, task_: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        state = task_(*args, return_state=True, **kwargs)
        result = state.result()
        self.add(stage, time.perf_counter() - start, cached=state.name == "Cached")
        return result

    def map(self, stage: str, task_: Task, *args: Any, threads: int = 1) -> list[Any]:
        """``task_.map(*args)``, waited for; timed as one stage named with its number of runs.

        With `threads` > 1 a run on the flow's (one-thread) local runner maps over a pool of that
        many threads instead; a Dask runner keeps its own distribution.
        """
        start = time.perf_counter()
        runner = FlowRunContext.get().task_runner
        if threads > 1 and isinstance(runner, ThreadPoolTaskRunner):
            parameters = dict(zip(inspect.signature(task_.fn).parameters, args, strict=False))
            with ThreadPoolTaskRunner(max_workers=threads) as pool:
                futures = pool.map(task_, parameters)
                futures.wait()
        else:
            futures = task_.map(*args)
        results = [future.result() for future in futures]
        cached = bool(futures) and all(f.state.name == "Cached" for f in futures)
        self.add(f"{stage} ({len(results)})", time.perf_counter() - start, cached=cached)
        return results

    def add(self, stage: str, seconds: float, *, cached: bool) -> None:
        self.timings[stage] = {"seconds": round(seconds, 3), "cached": cached}


def _embed(
    tasks: _Tasks, work_dir: str, config: EmbedConfig, store_root: str, clock: _Clock, *, label: str
) -> EmbedRef:
    """Plan, map the shards, assemble; the stages timed as `label` + embed-plan, embed-shards, embed."""
    plan = clock.run(f"{label}embed-plan", tasks.embed_plan, work_dir, config, store_root)
    clock.map(f"{label}embed-shards", tasks.embed_shard, list(plan.shards), unmapped(config), unmapped(store_root))
    return clock.run(f"{label}embed", tasks.embed, work_dir, config, store_root)


def _index(
    tasks: _Tasks, work_dir: str, config: PipelineConfig, n_docs: int, parent: str | None, clock: _Clock, *, label: str
) -> IndexRef:
    """Map the index shards' builds (when the pool is sharded), then collect the index reference."""
    retrieval = config.mine.retrieval
    if shards := stages.index_shards(n_docs, config=config.index):
        options = (unmapped(config.index), unmapped(retrieval), unmapped(parent))
        clock.map(f"{label}index-shards", tasks.index_shard, unmapped(work_dir), shards, *options)
    return clock.run(f"{label}index", tasks.index, work_dir, config.index, retrieval, parent=parent)


def _second_dense(
    tasks: _Tasks, work_dir: str, config: PipelineConfig, n_docs: int, store_root: str, clock: _Clock
) -> SecondDenseRef | None:
    """The dense2 source's vectors and index (stages/second_dense.py), as the first model's are made."""
    if "dense2" not in config.mine.retrieval.sources:
        return None
    folder = str(stages.second_work_dir(work_dir, config))
    second = stages.second_embed_config(config)
    embed = _embed(tasks, folder, second, store_root, clock, label="dense2-")
    index = _index(tasks, folder, config, n_docs, None, clock, label="dense2-")
    return stages.second_dense_ref(folder, embed, index)


def _bm25(tasks: _Tasks, work_dir: str, retrieval: RetrievalConfig, clock: _Clock) -> Bm25Ref | None:
    """Plan the BM25 index (the pool's global statistics), map its doc ranges' builds, collect them."""
    if "bm25" not in retrieval.sources:
        return None
    plan = clock.run("bm25-plan", tasks.bm25_plan, work_dir, retrieval)
    clock.map("bm25-shards", tasks.bm25_shard, unmapped(work_dir), list(plan.shards), unmapped(plan))
    return clock.run("bm25", tasks.bm25, work_dir, retrieval)


def _search(
    tasks: _Tasks,
    work_dir: str,
    config: PipelineConfig,
    index: IndexRef,
    n_anchors: int,
    clock: _Clock,
    second: SecondDenseRef | None,
) -> SearchRef:
    """Map the search over shards of anchors, then merge their parts (exactly) into one table."""
    retrieval = config.mine.retrieval
    bm25 = _bm25(tasks, work_dir, retrieval, clock)
    shards = stages.search_shards(n_anchors, config=retrieval)
    options = (unmapped(retrieval), unmapped(config.index), unmapped(index), unmapped(bm25), unmapped(second))
    clock.map("search-shards", tasks.search_shard, unmapped(work_dir), shards, *options)
    return clock.run("search", tasks.search, work_dir, retrieval, config.index, index, shards, bm25, second)


def _curate(work_dir: str, config: CurateConfig, search: SearchRef, clock: _Clock) -> CurateRef:
    """Plan curation (judges fitted on a sample of anchors), map its shards, merge their parts."""
    plan = clock.run("curate-plan", curate_plan_task, work_dir, search, config)
    parts = []
    if plan.shards:
        options = (unmapped(work_dir), unmapped(plan), list(plan.shards), unmapped(config))
        parts = clock.map("curate-shards", curate_shard_task, *options, threads=config.shard_threads)
    return clock.run("curate", curate_task, work_dir, plan, parts, config)


def _select(work_dir: str, config: SelectionConfig, curated: CurateRef, clock: _Clock) -> SelectRef:
    """Plan selection (pairs scored, decisions read, percentile bounds), map its shards, merge their parts."""
    plan = clock.run("select-plan", select_plan_task, work_dir, curated, config)
    options = (unmapped(plan), list(plan.shards), unmapped(config))
    parts = clock.map("select-shards", select_shard_task, unmapped(work_dir), *options)
    return clock.run("strategy", strategy_task, work_dir, plan, parts, config)


@flow(
    name="negminer-mine",
    flow_run_name="mine-{name}",
    task_runner=ThreadPoolTaskRunner(max_workers=1),  # one model per process: shards run in turn
    log_prints=False,
)
def mine_flow(
    pairs: str,
    out: str,
    name: str,
    corpus: str | None = None,
    config: PipelineConfig = PipelineConfig(),
    store: str | None = None,
) -> str:
    """Mine hard negatives for `pairs` (against `corpus`) into a new version of `out`/`name`."""
    check_dataset_name(name)
    logger = get_run_logger()
    # absolute, so that the cached stages' keys name the place: a work folder that was copied or
    # moved is recomputed rather than served refs to the files of its old place
    root = str(Path(out).resolve())
    store_root = str(Path(store).resolve()) if store else str(stages.default_store_root(root))
    work_dir = stages.work_dir_for(root, name, pairs=pairs, corpus=corpus, config=config, store=store_root)
    clock = _Clock()
    with work_lock(work_dir):
        tasks, w = _cached_in(work_dir), str(work_dir)
        read = clock.run("read", tasks.read, pairs, corpus, w, config.input)
        logger.info("read %s", read.counts)
        embed = _embed(tasks, w, config.embed, store_root, clock, label="")
        logger.info("embedded %s", embed.manifest_counts())
        parent = stages.parent_work_dir(root, name)
        index = _index(tasks, w, config, read.docs, parent, clock, label="")
        second = _second_dense(tasks, w, config, read.docs, store_root, clock)
        search = _search(tasks, w, config, index, read.anchors, clock, second)
        curate = _curate(w, config.curate, search, clock)
        logger.info("curation flagged %s", curate.counts.get("flagged_by_kind", "nothing (disabled)"))
        select = _select(w, resolve_strategy(config.mine.selection, curate.noise), curate, clock)
        logger.info("selected %s", select.counts)
        refs = StageRefs(read=read, embed=embed, search=search, curate=curate, select=select, second=second)
        version = clock.run("write", write_task, w, out, name, config, refs)
    clock.run("audit-load", audit_load_task, version, out)
    clock.run("report", report_task, version, name, dict(clock.timings))
    return version


def run_mine(
    pairs: str,
    out: str,
    name: str,
    *,
    corpus: str | None = None,
    config: PipelineConfig = PipelineConfig(),
    store: str | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> str:
    """Run :func:`mine_flow`, on a Dask cluster when `dask_address` or `dask_workers` is given.

    Under :func:`stopping.exit_on_signals` (the CLI) the flow runs on a worker thread while the
    calling (main) thread waits and handles SIGTERM and SIGINT (:func:`stopping.call_stoppable`).
    """
    check_dataset_name(name)
    parameters = {"pairs": pairs, "out": out, "name": name, "corpus": corpus, "config": config, "store": store}
    if dask_address is None and dask_workers is None:
        for path in (pairs, corpus):  # before the preload: a typo costs no model load
            if path is not None:
                require_input(path)
        freeze_long_lived()  # the imports: each stage's heap trim then skips them
        preload = Embedder(config.embed).preload(store or stages.default_store_root(out))  # overlaps server start
        try:
            start_temporary_server()
            return stopping.call_stoppable(mine_flow, **parameters)
        finally:
            if preload is not None:  # an interpreter that exits mid-load aborts in the runtime's threads
                preload.join()
    runner = dask_task_runner(address=dask_address, workers=dask_workers)
    with shared_api():
        return stopping.call_stoppable(mine_flow.with_options(task_runner=runner), **parameters)
