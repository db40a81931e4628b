"""Index choice and run-time recall tuning (real FAISS, synthetic clustered vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from negminer.config import IndexConfig, MineConfig
from negminer.mining.index import build_search_index, choose_factory, exact_topk, recall_at_k

# build_search_index's options as the index section and the mine seed give them by default
BUILD = {
    **IndexConfig().model_dump(include={"kind", "exact_max_docs", "min_recall", "use_gpu"}),
    "seed": MineConfig().seed,
}


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    points = centers[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_choose_factory() -> None:
    assert choose_factory(1000, 384, kind="auto", exact_max_docs=200_000) == "Flat"
    assert choose_factory(1000, 384, kind="flat", exact_max_docs=200_000) == "Flat"
    assert choose_factory(10, 384, kind="HNSW32", exact_max_docs=200_000) == "HNSW32"
    assert choose_factory(1_000_000, 384, exact_max_docs=10, kind="auto").startswith("IVF4096,")
    assert choose_factory(10_000_000, 384, exact_max_docs=10, kind="auto").endswith(",SQ8")


def test_exact_topk_in_blocks_matches_brute_force() -> None:
    docs, queries = clustered(2000), clustered(30, seed=1)
    expected = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :10]
    got = exact_topk(queries, docs, 10, block=300)
    assert recall_at_k(got, expected) == 1.0


def test_recall_at_k() -> None:
    assert recall_at_k(np.array([[1, 2, 3, 4]]), np.array([[1, 2, 5, 6]])) == 0.5


@pytest.mark.parametrize("kind", ["IVF64,Flat", "HNSW16"])
def test_approximate_index_is_tuned_to_the_recall_target(kind: str) -> None:
    docs, queries = clustered(20_000), clustered(200, seed=2)
    index, report = build_search_index(docs, sample_queries=queries, k=20, **{**BUILD, "kind": kind})
    assert report.factory == kind and report.recall >= 0.98 and report.params
    _, ids = index.search(queries, 20)
    assert recall_at_k(ids, exact_topk(queries, docs, 20)) >= 0.98


def test_max_probe_bounds_the_tuning_whatever_recall_it_leaves() -> None:
    docs, queries = clustered(20_000), clustered(200, seed=2)
    options = {**BUILD, "kind": "IVF64,Flat", "min_recall": 1.0}
    _, free = build_search_index(docs, sample_queries=queries, k=20, **options)
    _, capped = build_search_index(docs, sample_queries=queries, k=20, max_probe=2, **options)
    assert capped.params == {"nprobe": 2} and free.params["nprobe"] > 2
    assert capped.recall < free.recall


def test_flat_index_is_exact_and_not_measured() -> None:
    docs = clustered(500)
    index, report = build_search_index(docs, sample_queries=docs[:10], k=5, **BUILD)
    assert report.factory == "Flat" and report.recall is None
    _, ids = index.search(docs[:10], 1)
    assert ids[:, 0].tolist() == list(range(10))


def test_a_shard_too_small_to_train_its_ivf_is_searched_exactly(tmp_path) -> None:
    from negminer.mining.index import build_index_shards, search_index_shards

    docs, queries = clustered(3_010), clustered(20, seed=3)
    shards = build_index_shards(
        docs,
        shard_docs=1_000,
        path_of=lambda i: tmp_path / f"s{i}.faiss",
        sample_queries=queries,
        k=5,
        **{**BUILD, "kind": "IVF16,Flat"},
    )
    assert [report.factory for _, report in shards] == ["IVF16,Flat"] * 3 + ["Flat"]
    assert {shard.use_gpu for shard, _ in shards} == {BUILD["use_gpu"]}  # each shard loads as it was built
    _, ids = search_index_shards([shard for shard, _ in shards], queries, 0, len(queries), 5, batch_size=4096)
    assert recall_at_k(ids, exact_topk(queries, docs, 5)) >= 0.9


def test_a_gpu_ivf_index_is_tuned_by_nprobe() -> None:
    from negminer.mining.index import _knob

    class GpuIndexIVFFlat:  # the attributes faiss-gpu's IVF indexes expose (no GPU here)
        nprobe, nlist = 1, 256

    assert _knob(GpuIndexIVFFlat()) == ("nprobe", 8, 256)


def test_a_factory_string_faiss_cannot_build_is_a_config_error_naming_the_key() -> None:
    from negminer.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^index\.kind: FAISS cannot build 'IVFbogus,Flat' for 32-d vectors \(could not parse"
    ):
        build_search_index(clustered(100), sample_queries=clustered(5), k=5, **{**BUILD, "kind": "IVFbogus,Flat"})


@pytest.mark.parametrize(
    "kind",
    [
        "PQ8",
        "SQ8",
        "SQfp16",
        "NSG16,Flat",
        "HNSW16,SQ8",
        "PCA16,HNSW16",
        pytest.param("OPQ8,IVF16,PQ8", marks=pytest.mark.extended),
    ],
)
def test_every_inner_product_family_builds_and_reports_its_recall(kind: str) -> None:
    docs, queries = clustered(3000), clustered(100, seed=4)
    index, report = build_search_index(docs, sample_queries=queries, k=10, **{**BUILD, "kind": kind})
    assert report.factory == kind and report.recall is not None
    scores, ids = index.search(queries, 10)
    assert recall_at_k(ids, exact_topk(queries, docs, 10)) == pytest.approx(report.recall)
    assert (np.diff(scores, axis=1) <= 1e-5).all(), "similarities, best first"
    tunable = kind.startswith(("HNSW", "PCA", "OPQ"))
    assert bool(report.params) == tunable


def test_a_kind_faiss_builds_only_for_l2_is_refused_naming_the_key() -> None:
    from negminer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^index\.kind: FAISS builds 'HNSW16,PQ8' with L2 distance only"):
        build_search_index(clustered(300), sample_queries=clustered(5), k=5, **{**BUILD, "kind": "HNSW16,PQ8"})
