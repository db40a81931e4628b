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
