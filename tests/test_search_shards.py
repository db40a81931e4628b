"""The flow's sharded search (one task per shard of anchors, then a merge) equals search_stage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import MineConfig, PipelineConfig


def write_inputs(tmp_path, *, n_anchors: int = 29, n_docs: int = 80) -> PipelineConfig:
    rng = np.random.default_rng(3)
    positives = rng.integers(0, n_docs, size=n_anchors)
    pairs = pa.table(
        {
            "anchor_id": [f"q{i}" for i in range(n_anchors)],
            "anchor": [f"query {i}" for i in range(n_anchors)],
            "positive_id": [f"d{j}" for j in positives],
            "positive": [f"doc {j}" for j in positives],
        }
    )
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    pq.write_table(
        pa.table({"id": [f"d{j}" for j in range(n_docs)], "text": [f"doc {j}" for j in range(n_docs)]}),
        tmp_path / "corpus.parquet",
    )
    for stem, ids, n in (
        ("anchors", pairs.column("anchor_id").to_pylist(), n_anchors),
        ("docs", [f"d{j}" for j in range(n_docs)], n_docs),
    ):
        np.savez(tmp_path / f"{stem}.npz", ids=np.array(ids), vectors=rng.normal(size=(n, 16)).astype(np.float32))
    return PipelineConfig.from_dict(
        {
            "embed": {"anchor_vectors": str(tmp_path / "anchors.npz"), "doc_vectors": str(tmp_path / "docs.npz")},
            "mine": {"search_depth": 9, "search_batch_size": 4, "search_shard_size": 5},
        }
    )


def prepared_work_dir(tmp_path, config: PipelineConfig, out: str):
    work = stages.work_dir_for(
        tmp_path / out, "x", pairs=tmp_path / "pairs.parquet", corpus=tmp_path / "corpus.parquet", config=config
    )
    stages.read_stage(tmp_path / "pairs.parquet", tmp_path / "corpus.parquet", work, config=config.input)
    stages.embed_stage(work, config=config.embed, store_root=tmp_path / "store")
    return work, stages.index_stage(work, config=config.index, mine=config.mine)


def test_shards_cover_the_anchors_in_order() -> None:
    shards = stages.search_shards(12, config=MineConfig(search_shard_size=5))
    assert [(s["first"], s["stop"]) for s in shards] == [(0, 5), (5, 10), (10, 12)]
    assert stages.search_shards(0, config=MineConfig()) == [{"shard": 0, "first": 0, "stop": 0}]


def test_sharded_search_equals_the_single_task(tmp_path) -> None:
    config = write_inputs(tmp_path)
    single_work, index = prepared_work_dir(tmp_path, config, "single")
    single = stages.search_stage(single_work, config=config.mine, index_config=config.index, index_ref=index)

    work, index = prepared_work_dir(tmp_path, config, "sharded")
    shards = stages.search_shards(29, config=config.mine)
    assert len(shards) == 6
    options = {"config": config.mine, "index_config": config.index, "index_ref": index}
    for shard in reversed(shards[1:]):  # shards finish in any order; shard 0 is left to the merge
        stages.search_shard_stage(work, shard, **options)
    merged = stages.search_merge_stage(work, shards, **options)

    assert pq.read_table(merged["candidates"]).equals(pq.read_table(single["candidates"]))
    assert (merged["rows"], merged["depth"], merged["index"]) == (single["rows"], single["depth"], single["index"])
    assert not list(work.glob("candidates-*.part*")), "parts are removed once merged"
    assert stages.search_merge_stage(work, shards, **options) == merged  # idempotent
    assert stages.search_shard_stage(work, shards[0], **options)["merged"] is True


@pytest.mark.parametrize("size", [1, 4, 29, 1000])
def test_shard_size_does_not_change_the_candidates(tmp_path, size) -> None:
    config = write_inputs(tmp_path)
    config = config.model_copy(update={"mine": config.mine.model_copy(update={"search_shard_size": size})})
    work, index = prepared_work_dir(tmp_path, config, f"s{size}")
    options = {"config": config.mine, "index_config": config.index, "index_ref": index}
    merged = stages.search_merge_stage(work, stages.search_shards(29, config=config.mine), **options)
    single_work, _ = prepared_work_dir(tmp_path, config, "single")
    single = stages.search_stage(single_work, **options)
    assert pq.read_table(merged["candidates"]).equals(pq.read_table(single["candidates"]))
