"""The `mine` flow against a real Prefect server (prefect_test_harness): task structure, cache
reuse across runs, incremental embedding, artifacts."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def run_flow(
    inputs: dict[str, Path],
    pairs: str,
    out: Path,
    store: Path,
    *,
    index: dict | None = None,
    num_negatives: int = 2,
    name: str = "tiny",
) -> tuple[Path, str]:
    from negminer.config import PipelineConfig
    from negminer.flows.mine import mine_flow

    # Curation off: these tests pin caching and incremental counts; curation's flags (which a
    # refit on 42 pairs may change) are tested in tests/curation and end to end in tests/test_cli.py.
    config = PipelineConfig.from_dict(
        {
            "embed": {"max_seq_length": 64, "chunk_size": 16},
            "mine": {"num_negatives": num_negatives},
            "curate": {"enabled": False},
            "index": index or {},
        }
    )
    state = mine_flow(
        pairs=str(inputs[pairs]),
        out=str(out),
        name=name,
        corpus=str(inputs["corpus"]),
        config=config,
        store=str(store),
        return_state=True,
    )
    assert state.is_completed(), state
    return Path(state.result()), str(state.state_details.flow_run_id)


def task_states(flow_run_id: str, *, last: str = "report", timeout: float = 60) -> dict[str, list[str]]:
    """Task name -> final state names of the flow run's task runs.

    Task-run states reach the server as events, a moment after the flow returns: wait until
    the `last` task is recorded and every run is final.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = defaultdict(list)
        for run in runs:
            states[run.task_key.rsplit("-", 1)[0].removesuffix("_task")].append(run.state.name if run.state else "")
        final = all(run.state is not None and run.state.is_final() for run in runs)
        if (last in states and final) or time.monotonic() > deadline:
            return dict(states)
        time.sleep(0.5)


def manifest(version: Path) -> dict:
    return json.loads((version / "manifest.json").read_text())


def store_rows(store: Path) -> int:
    return sum(len(np.load(p)) for p in store.glob("*/shard-*.keys.npy"))


@pytest.fixture(scope="module")
def two_runs(prefect_harness, tiny_inputs, tmp_path_factory) -> dict:
    """The same inputs mined twice into one dataset, with a private store."""
    out, store = tmp_path_factory.mktemp("same"), tmp_path_factory.mktemp("store")
    first, first_id = run_flow(tiny_inputs, "pairs40", out, store)
    stored = store_rows(store)
    second, second_id = run_flow(tiny_inputs, "pairs40", out, store)
    return {
        "out": out,
        "store": store,
        "first": first,
        "second": second,
        "stored_after_first": stored,
        "first_states": task_states(first_id),
        "second_states": task_states(second_id),
        "second_id": second_id,
    }


def test_one_task_per_stage_and_shards_are_mapped(two_runs) -> None:
    states = two_runs["first_states"]
    stages = {
        "read",
        "embed_plan",
        "embed_shard",
        "embed",
        "index",
        "search_shard",
        "search",
        "curate",
        "strategy",
        "write",
        "report",
    }
    assert stages <= set(states)
    # 37 anchors + 100 docs, 16 texts per shard; 37 anchors fit one search shard (mine.search_shard_size)
    assert len(states["embed_shard"]) == 9
    assert len(states["search_shard"]) == 1
    assert all(s == "Completed" for names in states.values() for s in names)


def test_second_run_with_same_inputs_is_served_from_cache(two_runs) -> None:
    states = two_runs["second_states"]
    for stage in ("read", "embed_plan", "embed", "index", "search"):
        assert states[stage] == ["Cached"], (stage, states)
    assert states.get("strategy") == ["Completed"] and states.get("write") == ["Completed"], states
    assert "embed_shard" not in states or set(states["embed_shard"]) == {"Cached"}
    assert store_rows(two_runs["store"]) == two_runs["stored_after_first"]
    first, second = two_runs["first"], two_runs["second"]
    assert (first.name, second.name) == ("v0001", "v0002")
    for name in ("triplets.parquet", "candidates.parquet", "pairs.parquet"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert manifest(second)["counts"]["embedding"]["anchors"]["embedded"] == 0
    changes = manifest(second)["changes"]
    assert changes["parent"] == "v0001" and changes["triplets"] == {"added": 0, "removed": 0, "kept": 80}


def test_five_percent_new_pairs_embed_only_those(two_runs, tiny_inputs) -> None:
    out, store = two_runs["out"], two_runs["store"]
    old = pq.read_table(tiny_inputs["pairs40"])
    new = pq.read_table(tiny_inputs["pairs42"])
    corpus = set(pq.read_table(tiny_inputs["corpus"]).column("text").to_pylist())
    new_texts = set(new.column("anchor").to_pylist()) - set(old.column("anchor").to_pylist())
    new_texts |= set(new.column("positive").to_pylist()) - set(old.column("positive").to_pylist()) - corpus
    assert new.num_rows - old.num_rows == 2 and len(new_texts) >= 1
    before = store_rows(store)

    version, flow_run_id = run_flow(tiny_inputs, "pairs42", out, store)

    counts = manifest(version)["counts"]["embedding"]
    assert counts["anchors"]["embedded"] + counts["docs"]["embedded"] == len(new_texts)
    assert store_rows(store) - before == len(new_texts)
    assert task_states(flow_run_id)["embed_shard"] == ["Completed"]  # one shard of new texts
    index = manifest(version)["index"]
    assert index["extended_from"] == {"work": manifest(two_runs["second"])["work"]["key"], "rows": 100}
    changes = manifest(version)["changes"]
    assert changes["pairs"] == {"added": 2, "removed": 0, "kept": 40}
    assert changes["triplets"]["added"] == 4 and changes["triplets"]["removed"] == 0
    assert set(changes["score_quantiles_drift"]) == {"negative", "candidate", "positive_retrieved"}
    # the superseded work folder was pruned; the new one is kept as the next run's cache
    assert [p.name for p in (out / "tiny" / ".work").iterdir()] == [manifest(version)["work"]["key"]]


def test_run_publishes_report_table_and_link(two_runs) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[two_runs["second_id"]]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"negminer-tiny-report", "negminer-tiny-flagged", "negminer-tiny-version"}
    report = by_key["negminer-tiny-report"].data
    assert "| triplet_rows | 80 |" in report and "| surplus |" in report
    assert "## Time per stage" in report and "| embed | " in report and "cached" in report
    assert "Changes against v0001" in report
    assert two_runs["second"].as_uri() in by_key["negminer-tiny-version"].data
    assert by_key["negminer-tiny-flagged"].type == "table"


def test_retries_only_io_errors() -> None:
    from prefect.states import Failed

    from negminer.errors import ConfigError, InputError, StorageError
    from negminer.flows.mine import retry_on_io_error

    retried = {
        type(e).__name__: retry_on_io_error(None, None, Failed(data=e))
        for e in (
            StorageError("disk"),
            OSError(5, "I/O error"),
            InputError("bad row"),
            ConfigError("bad key"),
            FileNotFoundError("gone"),
            ValueError("bug"),
        )
    }
    assert retried == {
        "StorageError": True,
        "OSError": True,
        "InputError": False,
        "ConfigError": False,
        "FileNotFoundError": False,
        "ValueError": False,
    }


def test_a_bad_dataset_name_is_refused_before_any_work(tiny_inputs, tmp_path) -> None:
    from negminer.errors import ConfigError
    from negminer.flows.mine import mine_flow

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"dataset name 'pairs \(1\)' must be letters"):
        mine_flow.fn(str(tiny_inputs["pairs40"]), str(out), "pairs (1)", corpus=str(tiny_inputs["corpus"]))
    assert not out.exists()


def test_artifact_keys_are_valid() -> None:
    from negminer.flows.mine import artifact_key

    assert artifact_key("SciFact_sample.v2") == "negminer-scifact-sample-v2"


@pytest.mark.extended  # tests/test_search_shards.py covers the take-over without Prefect
def test_an_incremental_run_takes_over_the_index_shards(prefect_harness, tiny_inputs, tmp_path) -> None:
    out, store = tmp_path / "out", tmp_path / "store"
    first, _ = run_flow(tiny_inputs, "pairs40", out, store, index={"shard_docs": 30})
    parent_key = manifest(first)["work"]["key"]

    second, flow_run_id = run_flow(tiny_inputs, "pairs42", out, store, index={"shard_docs": 30})

    index = manifest(second)["index"]  # 100 docs, the same in both runs: shards of 30, 30, 30, 10
    assert [(s["first"], s["stop"]) for s in index["shards"]] == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert [s["reused_from"] for s in index["shards"]] == [parent_key] * 4
    assert index["extended_from"] == {"work": parent_key, "rows": 100, "shards": 4}
    assert task_states(flow_run_id)["index_shard"] == ["Completed"] * 4
    assert manifest(second)["changes"]["pairs"] == {"added": 2, "removed": 0, "kept": 40}


def test_a_copied_root_reached_by_a_relative_out_is_mined_again_in_its_new_place(
    prefect_harness, tiny_inputs, tmp_path, monkeypatch
) -> None:
    """Relative --out and store, root copied elsewhere and the old place deleted: the rerun must
    not be served the cached refs of the old place's files."""
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.chdir(old)
    run_flow(tiny_inputs, "pairs40", Path("datasets"), Path("store"))
    shutil.copytree(old, new)
    shutil.rmtree(old)
    monkeypatch.chdir(new)

    version, _ = run_flow(tiny_inputs, "pairs40", Path("datasets"), Path("store"))

    assert version.resolve().is_relative_to(new.resolve())
    assert pq.read_metadata(version / "triplets.parquet").num_rows > 0
    assert manifest(version)["embedding_store"]["path"] == str((new / "store").resolve())


@pytest.mark.extended
def test_a_rerun_into_another_store_embeds_into_it_and_records_it(prefect_harness, tiny_inputs, tmp_path) -> None:
    """The store is part of the work folder's key: the rerun's manifest names its own store and counts."""
    out = tmp_path / "out"
    first, _ = run_flow(tiny_inputs, "pairs40", out, tmp_path / "a")
    second, _ = run_flow(tiny_inputs, "pairs40", out, tmp_path / "b")

    for version, store in ((first, "a"), (second, "b")):
        assert manifest(version)["embedding_store"]["path"] == str((tmp_path / store).resolve())
    embedded = manifest(second)["counts"]["embedding"]
    assert embedded == manifest(first)["counts"]["embedding"] and embedded["anchors"]["embedded"] > 0
    assert store_rows(tmp_path / "b") == store_rows(tmp_path / "a") > 0
    assert manifest(first)["work"]["key"] != manifest(second)["work"]["key"]


def warning_logs(flow_run_id: str, *, containing: str, timeout: float = 30) -> list[str]:
    """The run's WARNING log messages with `containing`, waiting for Prefect's log worker to ship them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    deadline = time.monotonic() + timeout
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]), level=LogFilterLevel(ge_=30, le_=30))
    with get_client(sync_client=True) as client:
        while True:
            found = [log.message for log in client.read_logs(log_filter=log_filter) if containing in log.message]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def test_run_logs_and_reports_its_warnings(prefect_harness, tiny_inputs, tmp_path) -> None:
    from prefect.client.orchestration import get_client

    # 100 docs, search depth 100: an anchor with a second positive or a duplicate text gets fewer than 99
    version, flow_run_id = run_flow(
        tiny_inputs, "pairs40", tmp_path / "out", tmp_path / "store", num_negatives=99, name="short"
    )

    counts = manifest(version)["counts"]
    short, anchors = counts["anchors_short"], counts["anchors"]
    assert short / anchors > 0.05
    expected = f"{short} of {anchors} anchors ({short / anchors:.0%}) have fewer than 99 negatives"
    (logged,) = warning_logs(flow_run_id, containing=expected)
    assert logged.startswith(f"{version}: ")
    with get_client(sync_client=True) as client:
        (markdown,) = [a.data for a in client.read_latest_artifacts() if a.key == "negminer-short-report"]
    assert "## Warnings" in markdown and expected in markdown
