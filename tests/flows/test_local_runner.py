"""The local sequential runner and the Prefect flow run the same stage functions: same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def _files(version: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in version.iterdir() if path.name != "manifest.json"}


def _manifest(version: Path) -> dict:
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["created_at"]
    return manifest


def test_the_local_runner_writes_the_flows_dataset(prefect_harness, tiny_inputs, tmp_path) -> None:
    from negminer.config import PipelineConfig
    from negminer.flows.mine import mine_flow
    from negminer.stages import run_stages

    config = PipelineConfig.from_dict({"embed": {"max_seq_length": 64}, "mine": {"num_negatives": 2}})
    inputs = {"pairs": str(tiny_inputs["pairs40"]), "corpus": str(tiny_inputs["corpus"]), "name": "tiny"}
    flow_version = Path(mine_flow(out=str(tmp_path / "flow"), config=config, **inputs))
    local_version = Path(run_stages(out=tmp_path / "local", config=config, **inputs))

    assert local_version == tmp_path / "local" / "tiny" / "v0001"
    assert _files(local_version) == _files(flow_version)
    assert "flagged.parquet" in _files(local_version), "curation ran in both"
    assert _manifest(local_version) == _manifest(flow_version)


def test_the_local_runner_resumes_from_its_markers(tiny_inputs, tmp_path) -> None:
    from negminer.config import PipelineConfig
    from negminer.stages import run_stages

    config = PipelineConfig.from_dict({"embed": {"max_seq_length": 64}, "curate": {"enabled": False}})
    inputs = {"pairs": str(tiny_inputs["pairs40"]), "corpus": str(tiny_inputs["corpus"]), "name": "tiny"}
    first = Path(run_stages(out=tmp_path, config=config, **inputs))
    second = Path(run_stages(out=tmp_path, config=config, **inputs))

    assert (first.name, second.name) == ("v0001", "v0002")
    assert _files(first) == _files(second)
    assert _manifest(second)["counts"]["embedding"]["docs"]["embedded"] == 0, "nothing embedded again"


def test_curation_shards_run_on_threads_and_write_what_one_thread_writes(
    prefect_harness, tiny_inputs, tmp_path, monkeypatch
) -> None:
    import threading
    import time

    from negminer import stages
    from negminer.config import PipelineConfig
    from negminer.flows.mine import mine_flow

    judge_shard, lock = stages.curate_shard_stage, threading.Lock()
    running, most = [0], [0]

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)  # long enough for the pool's other threads to enter
        try:
            return judge_shard(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(stages, "curate_shard_stage", counted)
    inputs = {"pairs": str(tiny_inputs["pairs40"]), "corpus": str(tiny_inputs["corpus"]), "name": "tiny"}
    versions, most_at_once = {}, {}
    for threads in (1, 3):
        most[0] = 0
        config = PipelineConfig.from_dict(
            {
                "embed": {"max_seq_length": 64},
                "mine": {"num_negatives": 2},
                "curate": {"fit_anchors": 20, "shard_anchors": 8, "shard_threads": threads},  # 5 shards
            }
        )
        versions[threads] = Path(mine_flow(out=str(tmp_path / f"t{threads}"), config=config, **inputs))
        most_at_once[threads] = most[0]

    assert most_at_once == {1: 1, 3: 3}
    assert _files(versions[3]) == _files(versions[1])
    assert "flagged.parquet" in _files(versions[1])
    one, three = _manifest(versions[1]), _manifest(versions[3])
    assert one["config"]["curate"].pop("shard_threads") == 1 and three["config"]["curate"].pop("shard_threads") == 3
    assert one["counts"]["curation"]["rows_scored"] > 0
    assert {k: v for k, v in one.items() if k != "work"} == {k: v for k, v in three.items() if k != "work"}
