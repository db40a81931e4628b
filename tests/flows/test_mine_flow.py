"""The `mine` flow against a real Prefect server (prefect_test_harness)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_inputs(sample_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """30 sample pairs and 120 docs (their positives included) as JSONL and CSV."""
    import pyarrow.csv as pcsv

    folder = tmp_path_factory.mktemp("small")
    pairs = pq.read_table(sample_dir / "pairs.parquet").slice(0, 30)
    corpus = pq.read_table(sample_dir / "corpus.parquet")
    wanted = set(pairs.column("positive_id").to_pylist())
    rows = [r for r in corpus.to_pylist() if r["id"] in wanted]
    rows += [r for r in corpus.to_pylist() if r["id"] not in wanted][: 120 - len(rows)]
    with (folder / "pairs.jsonl").open("w") as handle:
        for row in pairs.to_pylist():
            handle.write(json.dumps(row) + "\n")
    import pyarrow as pa

    pcsv.write_csv(pa.Table.from_pylist(rows), folder / "corpus.csv")
    return folder / "pairs.jsonl", folder / "corpus.csv"


def test_mine_flow_runs_on_prefect_server(prefect_harness, small_inputs, store_root, tmp_path) -> None:
    from prefect import get_client

    from negminer.config import PipelineConfig
    from negminer.flows.mine import mine_flow

    pairs, corpus = small_inputs
    config = PipelineConfig.from_dict({"mine": {"num_negatives": 2, "output_format": "n-tuple"}})
    state = mine_flow(
        pairs=str(pairs), out=str(tmp_path), name="flowtest", corpus=str(corpus),
        config=config, store=str(store_root), return_state=True,
    )
    assert state.is_completed()
    version = Path(state.result())
    triplets = pq.read_table(version / "triplets.parquet")
    assert triplets.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert triplets.num_rows == pq.read_table(version / "pairs.parquet").num_rows

    import asyncio

    async def task_names() -> set[str]:
        async with get_client() as client:
            runs = await client.read_task_runs()
            return {r.name.split("-")[0] for r in runs if r.flow_run_id == state.state_details.flow_run_id}

    assert {"read", "embed", "search", "select", "write"} <= asyncio.run(task_names())
