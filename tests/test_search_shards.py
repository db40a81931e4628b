"""The flow's sharded search (one task per shard of anchors, then a merge) equals search_stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer import stages
from negminer.config import IndexConfig, PipelineConfig, RetrievalConfig
from negminer.stages import search as search_stages
from negminer.stages.refs import DocRange, ExtendedFrom, IndexRef, SearchPartRef, SearchRef


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


def prepared_work_dir(tmp_path, config: PipelineConfig, out: str) -> tuple[Path, IndexRef]:
    work = _read_and_embed(tmp_path, config, out)
    return work, stages.index_stage(work, config=config.index, retrieval=config.mine)


def test_shards_cover_the_anchors_in_order() -> None:
    shards = stages.search_shards(12, config=RetrievalConfig(search_shard_size=5))
    assert [(s.first, s.stop) for s in shards] == [(0, 5), (5, 10), (10, 12)]
    assert stages.search_shards(0, config=RetrievalConfig()) == [DocRange(shard=0, first=0, stop=0)]


def test_sharded_search_equals_the_single_task(tmp_path) -> None:
    config = write_inputs(tmp_path)
    single_work, index = prepared_work_dir(tmp_path, config, "single")
    single = stages.search_stage(single_work, config=config.mine, index_config=config.index, index=index)

    work, index = prepared_work_dir(tmp_path, config, "sharded")
    shards = stages.search_shards(29, config=config.mine)
    assert len(shards) == 6
    options = {"config": config.mine, "index_config": config.index, "index": index}
    for shard in reversed(shards[1:]):  # shards finish in any order; shard 0 is left to the merge
        stages.search_shard_stage(work, shard, **options)
    merged = stages.search_merge_stage(work, shards, **options)

    assert pq.read_table(merged.candidates).equals(pq.read_table(single.candidates))
    assert (merged.rows, merged.depth, merged.index) == (single.rows, single.depth, single.index)
    assert not list(work.glob("candidates-*.part*")), "parts are removed once merged"
    assert stages.search_merge_stage(work, shards, **options) == merged  # idempotent
    assert stages.search_shard_stage(work, shards[0], **options).merged is True


@pytest.mark.parametrize(
    "size", [1, pytest.param(4, marks=pytest.mark.extended), pytest.param(29, marks=pytest.mark.extended), 1000]
)
def test_shard_size_does_not_change_the_candidates(tmp_path, size) -> None:
    config = write_inputs(tmp_path)
    config = config.model_copy(update={"mine": config.mine.model_copy(update={"search_shard_size": size})})
    work, index = prepared_work_dir(tmp_path, config, f"s{size}")
    options = {"config": config.mine, "index_config": config.index, "index": index}
    merged = stages.search_merge_stage(work, stages.search_shards(29, config=config.mine), **options)
    single_work, _ = prepared_work_dir(tmp_path, config, "single")
    single = stages.search_stage(single_work, **options)
    assert pq.read_table(merged.candidates).equals(pq.read_table(single.candidates))


@pytest.mark.parametrize(("killed_size", "done", "resumed_size"), [(10, 1, 5), (5, 2, 10)])
def test_a_run_resumed_with_another_shard_size_searches_each_anchor_once(
    tmp_path, killed_size, done, resumed_size
) -> None:
    """Parts left by a killed run cover other anchors than the resumed run's shards of the same number."""
    config = write_inputs(tmp_path)
    single_work, index = prepared_work_dir(tmp_path, config, "single")
    single = stages.search_stage(single_work, config=config.mine, index_config=config.index, index=index)
    work, index = prepared_work_dir(tmp_path, config, "resumed")
    killed = config.mine.model_copy(update={"search_shard_size": killed_size})
    for shard in stages.search_shards(29, config=killed)[:done]:
        stages.search_shard_stage(work, shard, config=killed, index_config=config.index, index=index)
    resumed = config.mine.model_copy(update={"search_shard_size": resumed_size})
    options = {"config": resumed, "index_config": config.index, "index": index}
    merged = stages.search_merge_stage(work, stages.search_shards(29, config=resumed), **options)

    assert pq.read_table(merged.candidates).equals(pq.read_table(single.candidates))
    assert not list(work.glob("candidates-*.part*")), "the killed run's parts are removed too"


def _with_index(config: PipelineConfig, **options) -> PipelineConfig:
    return config.model_copy(update={"index": config.index.model_copy(update=options)})


@pytest.mark.parametrize("shard_docs", [7, 30, 79])
def test_index_shards_give_the_candidates_of_one_index(tmp_path, shard_docs) -> None:
    config = write_inputs(tmp_path)
    single_work, index = prepared_work_dir(tmp_path, config, "single")
    single = pq.read_table(
        stages.search_stage(single_work, config=config.mine, index_config=config.index, index=index).candidates
    )

    sharded = _with_index(config, shard_docs=shard_docs)
    work, index = prepared_work_dir(tmp_path, sharded, "docs")
    n_shards = -(-80 // shard_docs)
    assert len(index.shards) == len(list(work.glob("index-*.s*.faiss"))) == n_shards
    options = {"config": sharded.mine, "index_config": sharded.index, "index": index}
    merged = stages.search_merge_stage(work, stages.search_shards(29, config=sharded.mine), **options)
    table = pq.read_table(merged.candidates)

    assert table.drop_columns(["score"]).equals(single.drop_columns(["score"]))
    np.testing.assert_allclose(table.column("score").to_numpy(), single.column("score").to_numpy(), atol=1e-5)
    assert all("path" not in shard for shard in merged.index["shards"]), "the manifest gets no paths"


def test_approximate_index_shards_are_tuned_one_by_one(tmp_path) -> None:
    config = _with_index(write_inputs(tmp_path), shard_docs=40, kind="IVF2,Flat", recall_sample=29)
    work, index = prepared_work_dir(tmp_path, config, "ivf")
    assert [(s.first, s.stop) for s in index.shards] == [(0, 40), (40, 80)]
    assert index.factory == "IVF2,Flat" and all("nprobe" in s.params for s in index.shards)
    assert index.recall == min(s.recall for s in index.shards) >= 0.98
    found = pq.read_table(stages.search_stage(work, config=config.mine, index_config=config.index).candidates)
    assert set(found.column("anchor_idx").to_pylist()) == set(range(29))


def test_index_shards_built_one_by_one_are_collected_not_rebuilt(tmp_path) -> None:
    config = _with_index(write_inputs(tmp_path), shard_docs=30)
    work = _read_and_embed(tmp_path, config, "out")
    shards = stages.index_shards(80, config=config.index)
    assert [(s.first, s.stop) for s in shards] == [(0, 30), (30, 60), (60, 80)]
    assert stages.index_shards(30, config=config.index) == [] and stages.index_shards(80, config=IndexConfig()) == []
    built = [stages.index_shard_stage(work, s, config=config.index, retrieval=config.mine) for s in reversed(shards)]
    stamps = {b.path: Path(b.path).stat().st_mtime_ns for b in built}
    assert stages.index_shard_stage(work, shards[0], config=config.index, retrieval=config.mine) == built[-1]

    index = stages.index_stage(work, config=config.index, retrieval=config.mine)
    assert [s.path for s in index.shards] == [b.path for b in reversed(built)]
    assert all(Path(path).stat().st_mtime_ns == stamp for path, stamp in stamps.items()), "collected, not rebuilt"


def _append_docs(tmp_path, n_new: int, *, change_vector: int | None = None) -> None:
    """Append `n_new` docs (texts and vectors) to the inputs of write_inputs; optionally alter one old vector."""
    corpus = pq.read_table(tmp_path / "corpus.parquet")
    start = corpus.num_rows
    extra = pa.table(
        {
            "id": [f"d{j}" for j in range(start, start + n_new)],
            "text": [f"doc {j}" for j in range(start, start + n_new)],
        }
    )
    pq.write_table(pa.concat_tables([corpus, extra]), tmp_path / "corpus.parquet")
    saved = np.load(tmp_path / "docs.npz")
    vectors = np.concatenate([saved["vectors"], np.random.default_rng(4).normal(size=(n_new, 16)).astype(np.float32)])
    if change_vector is not None:
        vectors[change_vector] += 1.0
    ids = np.concatenate([saved["ids"], np.array([f"d{j}" for j in range(start, start + n_new)])])
    np.savez(tmp_path / "docs.npz", ids=ids, vectors=vectors)


def _read_and_embed(tmp_path, config: PipelineConfig, out: str) -> Path:
    work = stages.work_dir_for(
        tmp_path / out,
        "x",
        pairs=tmp_path / "pairs.parquet",
        corpus=tmp_path / "corpus.parquet",
        config=config,
        store=None,
    )
    stages.read_stage(tmp_path / "pairs.parquet", tmp_path / "corpus.parquet", work, config=config.input)
    stages.embed_stage(work, config=config.embed, store_root=tmp_path / "store")
    return work


@pytest.mark.parametrize("depth", [9, 50])  # 50: deeper than a shard, whose index is tuned for 30 neighbours
def test_an_incremental_run_takes_over_the_parent_index_shards_of_unchanged_docs(tmp_path, depth) -> None:
    config = _with_index(write_inputs(tmp_path), shard_docs=30)
    config = config.model_copy(update={"mine": config.mine.model_copy(update={"search_depth": depth})})
    parent, _ = prepared_work_dir(tmp_path, config, "first")  # 80 docs: (0, 30) (30, 60) (60, 80)
    _append_docs(tmp_path, 25)  # 105 docs: (0, 30) (30, 60) (60, 90) (90, 105)
    work = _read_and_embed(tmp_path, config, "second")

    index = stages.index_stage(work, config=config.index, retrieval=config.mine, parent=parent)

    assert [s.reused_from for s in index.shards] == [parent.name, parent.name, None, None]
    assert index.extended_from == ExtendedFrom(work=parent.name, rows=60, shards=2)
    for shard in index.shards[:2]:
        assert Path(shard.path).parent == work
        assert Path(shard.path).stat().st_ino == (parent / Path(shard.path).name).stat().st_ino
    fresh_work = _read_and_embed(tmp_path, config, "fresh")
    fresh = stages.index_stage(fresh_work, config=config.index, retrieval=config.mine)
    assert fresh.extended_from is None and all(s.reused_from is None for s in fresh.shards)
    found = {}
    for name, folder, ref in (("incremental", work, index), ("fresh", fresh_work, fresh)):
        search = stages.search_stage(folder, config=config.mine, index_config=config.index, index=ref)
        found[name] = pq.read_table(search.candidates)
    assert found["incremental"].equals(found["fresh"])


def test_index_shards_over_changed_vectors_are_rebuilt(tmp_path) -> None:
    config = _with_index(write_inputs(tmp_path), shard_docs=30)
    parent, _ = prepared_work_dir(tmp_path, config, "first")
    _append_docs(tmp_path, 25, change_vector=40)  # doc 40 lies in the second shard
    work = _read_and_embed(tmp_path, config, "second")

    index = stages.index_stage(work, config=config.index, retrieval=config.mine, parent=parent)

    assert [s.reused_from for s in index.shards] == [parent.name, None, None, None]


def test_a_changed_doc_text_rebuilds_only_its_own_shard(tmp_path) -> None:
    config = _with_index(write_inputs(tmp_path), shard_docs=30)
    parent, _ = prepared_work_dir(tmp_path, config, "first")  # 80 docs: (0, 30) (30, 60) (60, 80)
    corpus = pq.read_table(tmp_path / "corpus.parquet")
    texts = corpus.column("text").to_pylist()
    texts[40] = "doc 40, revised"  # the second shard's docs are no longer the parent's
    pq.write_table(corpus.set_column(1, "text", pa.array(texts)), tmp_path / "corpus.parquet")
    work = _read_and_embed(tmp_path, config, "second")

    index = stages.index_stage(work, config=config.index, retrieval=config.mine, parent=parent)

    assert [s.reused_from for s in index.shards] == [parent.name, None, parent.name]
    assert index.extended_from == ExtendedFrom(work=parent.name, rows=50, shards=2)


def _race_setup(tmp_path) -> tuple[Path, list[DocRange], dict[str, Any], pa.Table]:
    """A prepared work folder, its shards and options, and the single-task candidates."""
    config = write_inputs(tmp_path)
    single_work, index = prepared_work_dir(tmp_path, config, "single")
    single = stages.search_stage(single_work, config=config.mine, index_config=config.index, index=index)
    work, index = prepared_work_dir(tmp_path, config, "shared")
    options = {"config": config.mine, "index_config": config.index, "index": index}
    return work, stages.search_shards(29, config=config.mine), options, pq.read_table(single.candidates)


def _once(run_other: Callable[[], object], call: Callable[..., Any], *, skip: int = 0) -> Callable[..., Any]:
    """`call`, which runs `run_other` (another run, to its end) before its call number `skip` + 1."""
    calls = {"n": 0}

    def hooked(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == skip + 1:
            run_other()
        return call(*args, **kwargs)

    return hooked


def _assert_merged_once(work: Path, ref: SearchRef, other: SearchRef, single: pa.Table) -> None:
    assert ref.candidates == other.candidates and ref.rows == other.rows == single.num_rows
    assert pq.read_table(ref.candidates).equals(single)
    assert not list(work.glob("candidates-*.part*")) and not list(work.glob(".candidates-*"))


def test_a_run_whose_search_another_run_merges_before_its_shard_loop_returns_that_merge(tmp_path, monkeypatch) -> None:
    work, shards, options, single = _race_setup(tmp_path)
    shard_stage, other = search_stages.search_shard_stage, {}

    def other_run() -> None:  # runs with the shard stage unhooked, as another process would
        monkeypatch.setattr(search_stages, "search_shard_stage", shard_stage)
        other["ref"] = stages.search_merge_stage(work, shards, **options)
        monkeypatch.setattr(search_stages, "search_shard_stage", hooked)

    hooked = _once(other_run, shard_stage)
    monkeypatch.setattr(search_stages, "search_shard_stage", hooked)  # the name search_merge_stage calls
    ref = stages.search_merge_stage(work, shards, **options)
    _assert_merged_once(work, ref, other["ref"], single)


@pytest.mark.parametrize(
    "skip", [0, pytest.param(2, marks=pytest.mark.extended)]
)  # before the merge reads its first part / once it has copied two
def test_a_run_whose_parts_another_run_merges_and_removes_returns_that_merge(tmp_path, monkeypatch, skip) -> None:
    from negminer.mining import search

    work, shards, options, single = _race_setup(tmp_path)
    for shard in shards:
        stages.search_shard_stage(work, shard, **options)
    other: dict[str, SearchRef] = {}

    def other_run() -> None:
        other["ref"] = stages.search_merge_stage(work, shards, **options)

    monkeypatch.setattr(search.pq, "ParquetFile", _once(other_run, pq.ParquetFile, skip=skip))
    ref = stages.search_merge_stage(work, shards, **options)
    _assert_merged_once(work, ref, other["ref"], single)


def test_two_runs_searching_one_shard_at_once_write_the_same_part(tmp_path, monkeypatch) -> None:
    from negminer.mining import search

    work, shards, options, single = _race_setup(tmp_path)
    other: dict[str, SearchPartRef] = {}

    def other_run() -> None:
        other["ref"] = stages.search_shard_stage(work, shards[1], **options)

    monkeypatch.setattr(search, "_candidate_batch", _once(other_run, search._candidate_batch))
    ref = stages.search_shard_stage(work, shards[1], **options)
    assert ref.path == other["ref"].path and ref.rows == other["ref"].rows
    assert pq.read_table(ref.path).equals(single.filter(pc.field("anchor_idx").isin(range(5, 10))))
    assert not list(work.glob(".candidates-*"))


@pytest.mark.slow
def test_an_incremental_run_builds_a_trained_index_afresh(tiny_inputs, tmp_path) -> None:
    """Extending the parent's IVF index would keep its centroids: the dataset would depend on history."""
    config = PipelineConfig.from_dict({"embed": {"max_seq_length": 32}, "index": {"kind": "IVF4,Flat"}})
    store = tmp_path / "store"

    def indexed(pairs: str, out: str, parent: Path | None) -> tuple[Path, IndexRef]:
        paths = {"pairs": tiny_inputs[pairs], "corpus": tiny_inputs["corpus"]}
        work = stages.work_dir_for(tmp_path / out, "x", **paths, config=config, store=str(store))
        stages.read_stage(paths["pairs"], paths["corpus"], work, config=config.input)
        stages.embed_stage(work, config=config.embed, store_root=store)
        return work, stages.index_stage(work, config=config.index, retrieval=config.mine, parent=parent)

    parent, _ = indexed("pairs40", "first", None)
    _, incremental = indexed("pairs42", "second", parent)  # two more pairs: the parent's docs come first
    _, fresh = indexed("pairs42", "fresh", None)

    assert incremental.factory == "IVF4,Flat" and incremental.extended_from is None
    assert (incremental.params, incremental.recall) == (fresh.params, fresh.recall)
