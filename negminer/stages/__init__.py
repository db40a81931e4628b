"""The pipeline's stages as plain functions that hand off by path and typed reference.

read → embed → index → search → curate → select → publish. Each stage reads its inputs from
the run's work folder, writes its outputs there atomically and returns a frozen reference
(:mod:`negminer.stages.refs`). A stage whose completion marker exists returns it without
redoing the work, so a killed run resumes where it stopped. The Prefect flow
(:mod:`negminer.flows.mine`) wraps each as a task; :func:`run_stages` runs them in turn here.
"""

from negminer.stages.bm25 import bm25_plan_stage, bm25_shard_stage, bm25_shards, bm25_stage
from negminer.stages.curate import curate_merge_stage, curate_plan_stage, curate_shard_stage, curate_stage
from negminer.stages.embed import embed_assemble_stage, embed_plan_stage, embed_shard_stage, embed_stage
from negminer.stages.index import index_key, index_shard_stage, index_shards, index_stage, open_index
from negminer.stages.publish import PUBLISHING, StageRefs, audit_load_stage, publish_stage
from negminer.stages.read import read_stage
from negminer.stages.runner import run_stages
from negminer.stages.search import search_merge_stage, search_shard_stage, search_shards, search_stage
from negminer.stages.second_dense import second_dense_ref, second_dense_stage, second_embed_config, second_work_dir
from negminer.stages.select import select_merge_stage, select_plan_stage, select_shard_stage, select_stage
from negminer.stages.workdir import (
    default_store_root,
    fingerprint_input,
    parent_work_dir,
    work_dir_for,
)

__all__ = [
    "PUBLISHING",
    "StageRefs",
    "audit_load_stage",
    "bm25_plan_stage",
    "bm25_shard_stage",
    "bm25_shards",
    "bm25_stage",
    "curate_merge_stage",
    "curate_plan_stage",
    "curate_shard_stage",
    "curate_stage",
    "default_store_root",
    "embed_assemble_stage",
    "embed_plan_stage",
    "embed_shard_stage",
    "embed_stage",
    "fingerprint_input",
    "index_key",
    "index_shard_stage",
    "index_shards",
    "index_stage",
    "open_index",
    "parent_work_dir",
    "publish_stage",
    "read_stage",
    "run_stages",
    "search_merge_stage",
    "search_shard_stage",
    "search_shards",
    "search_stage",
    "second_dense_ref",
    "second_dense_stage",
    "second_embed_config",
    "second_work_dir",
    "select_merge_stage",
    "select_plan_stage",
    "select_shard_stage",
    "select_stage",
    "work_dir_for",
]
