"""The mine flow on a Dask LocalCluster of 2 worker processes (prefect-dask) writes the same
dataset as the default runner: embedding, index, search, curation and selection shards run on
the workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]
pytest.importorskip("prefect_dask")

CONFIG = {
    "embed": {"max_seq_length": 64, "chunk_size": 16},  # 9 embedding shards
    "mine": {"num_negatives": 2, "search_shard_size": 8, "select_shard_size": 10},  # 5 search, 4 selection shards
    "index": {"shard_docs": 40},  # 3 index shards (100 docs), merged per anchor in every search shard
    "curate": {"fit_anchors": 20, "shard_anchors": 12},  # judges fitted on a sample, 5 curation shards
}


def mine(inputs: dict[str, Path], out: Path, **runner) -> Path:
    from negminer.config import PipelineConfig
    from negminer.flows.mine import run_mine

    config = PipelineConfig.from_dict(CONFIG)
    version = run_mine(
        str(inputs["pairs40"]),
        str(out / "data"),
        "tiny",
        corpus=str(inputs["corpus"]),
        config=config,
        store=str(out / "store"),
        **runner,
    )
    return Path(version)


def test_local_cluster_of_two_workers_writes_the_same_dataset(prefect_harness, tiny_inputs, tmp_path) -> None:
    from collections import Counter

    from dask.utils import key_split
    from distributed import Client, LocalCluster, get_task_stream

    from negminer.mining import backends, embedder

    default = mine(tiny_inputs, tmp_path / "default")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:  # every task the scheduler ran, with its worker
            distributed = mine(tiny_inputs, tmp_path / "dask", dask_address=cluster.scheduler_address)
        # the PyTorch model, or the converted copy auto embeds with (negminer.mining.backends)
        loads = client.run(lambda: embedder._cached_model.cache_info().misses + backends._own_model.cache_info().misses)
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        workers = set(client.scheduler_info()["workers"])

    manifest = json.loads((distributed / "manifest.json").read_text())
    assert manifest["counts"]["curation"]["rows_scored"] > 0, "curation judged the shards"
    # Every shard ran as a Dask task on a worker (keys are named by the task's function).
    ran = Counter(key_split(record["key"]) for record in stream.data if record["worker"] in workers)
    shards = {"embed_shard_task": 9, "index_shard_task": 3, "search_shard_task": 5, "select_shard_task": 4}
    assert {name: ran[name] for name in shards} == shards and ran["curate_shard_task"] >= 2, ran
    # Plans and merges are called, not mapped: they run in the flow's process.
    assert not {"curate_plan_task", "curate_task", "select_plan_task", "strategy_task"} & set(ran), ran
    # Both workers ran shard tasks; each that embedded loaded the model itself, once.
    assert all(count > 0 for count in executed.values()), executed
    assert 1 <= sum(loads.values()) <= 2 and max(loads.values()) == 1, loads
    manifests = [json.loads((v / "manifest.json").read_text()) for v in (default, distributed)]
    assert "triplets.parquet" in manifests[0]["files"]
    assert [(s["first"], s["stop"]) for s in manifests[0]["index"]["shards"]] == [(0, 40), (40, 80), (80, 100)]
    for name in manifests[0]["files"]:
        assert (distributed / name).read_bytes() == (default / name).read_bytes(), name
    # The same manifest but for its time stamp, the (different) embedding store's path and the
    # work folder's key, which names a store other than the default.
    for key in set(manifests[0]) - {"created_at", "embedding_store", "work"}:
        assert manifests[0][key] == manifests[1][key], key


def test_dask_workers_option_builds_a_local_cluster_runner() -> None:
    from prefect_dask import DaskTaskRunner

    from negminer.errors import ConfigError
    from negminer.flows.runtime import dask_task_runner

    runner = dask_task_runner(workers=2)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["processes"] is True
    assert dask_task_runner(address="tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
    with pytest.raises(ConfigError, match="workers"):
        dask_task_runner(workers=0)


def test_workers_are_pointed_at_this_process_temporary_server(monkeypatch) -> None:
    import prefect.server.api.server as server_module
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from negminer.flows.runtime import shared_api

    started = []

    class FakeServer:
        api_url = "http://127.0.0.1:8123/api"

        def start(self) -> None:
            started.append(True)

    monkeypatch.setattr(server_module, "SubprocessASGIServer", FakeServer)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with shared_api():
            assert PREFECT_API_URL.value() == FakeServer.api_url  # what prefect-dask sends to the workers
        assert PREFECT_API_URL.value() is None and started == [True]
        with temporary_settings(updates={PREFECT_API_URL: "http://server:4200/api"}), shared_api():
            assert PREFECT_API_URL.value() == "http://server:4200/api" and started == [True]
