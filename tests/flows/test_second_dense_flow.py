"""A second embedding model as a candidate source through the Prefect flow (its embed and index
stages mapped like the first model's) and the local runner: the same dataset bytes, the second
model in the manifest, and a rerun that reuses both models' vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from negminer.mining.encoder import model_fingerprint

pytestmark = [pytest.mark.flow, pytest.mark.slow]


def _config(second_model: Path):
    from negminer.config import PipelineConfig

    mine = {"num_negatives": 2, "search_depth": 20, "sources": ["dense", "bm25", "dense2"]}
    return PipelineConfig.from_dict(
        {"embed": {"max_seq_length": 64}, "mine": {**mine, "second_model": str(second_model)}}
    )


def test_flow_and_local_runner_fuse_a_second_model_into_the_same_dataset(
    prefect_harness, tiny_inputs, second_model, tmp_path
) -> None:
    from negminer.flows.mine import mine_flow
    from negminer.stages import run_stages

    config = _config(second_model)
    inputs = {"pairs": str(tiny_inputs["pairs40"]), "corpus": str(tiny_inputs["corpus"])}
    flow_version = Path(
        mine_flow(inputs["pairs"], str(tmp_path / "flow"), "tiny", corpus=inputs["corpus"], config=config)
    )
    local_version = Path(run_stages(out=tmp_path / "local", name="tiny", config=config, **inputs))

    for name in ("candidates.parquet", "triplets.parquet"):
        assert pq.read_table(flow_version / name).equals(pq.read_table(local_version / name)), name
    manifest = json.loads((flow_version / "manifest.json").read_text())
    sources = manifest["sources"]
    assert sources["sources"] == ["dense", "bm25", "dense2"]
    assert sources["dense2"]["model"]["fingerprint"] == model_fingerprint(second_model)
    second_store = sources["dense2"]["embedding_store"]  # what negminer gc keeps or frees
    assert second_store["folder"] != manifest["embedding_store"]["folder"] and second_store["shards"]
    for shard in second_store["shards"]:
        assert (tmp_path / "flow" / second_store["path"] / second_store["folder"] / f"{shard}.keys.npy").exists()
    candidates = pq.read_table(flow_version / "candidates.parquet")
    counts = {c["values"]: c["counts"] for c in pc.value_counts(candidates.column("source")).to_pylist()}
    assert sources["rows_by_source"] == counts
    assert any("dense2" in name.split("+") and "dense" not in name.split("+") for name in counts), counts
    chosen = candidates.filter(pc.is_valid(candidates.column("negative_slot")))
    assert "dense2" in "+".join(chosen.column("source").to_pylist()), "negatives proposed by the second model chosen"


def test_a_rerun_reuses_the_second_model_s_vectors_and_index(prefect_harness, tiny_inputs, second_model, tmp_path):
    from negminer.flows.mine import mine_flow

    config = _config(second_model)
    pairs, corpus = str(tiny_inputs["pairs40"]), str(tiny_inputs["corpus"])
    first = Path(mine_flow(pairs, str(tmp_path), "tiny", corpus=corpus, config=config))
    (folder,) = (tmp_path / "tiny" / ".work").glob("*/dense2-*")
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()}
    assert {"anchors.npy", "docs.npy", "embed.json"} <= set(written)
    second = Path(mine_flow(pairs, str(tmp_path), "tiny", corpus=corpus, config=config))
    assert pq.read_table(second / "candidates.parquet").equals(pq.read_table(first / "candidates.parquet"))
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir() if path.is_file()} == written
