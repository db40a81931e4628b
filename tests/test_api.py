"""negminer.mine() / open_version() from Python: the stages in this process, no Prefect server."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import negminer
from negminer.config import PipelineConfig
from negminer.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tiny_inputs) -> dict[str, Path]:
    """40 sample pairs and a 100-doc corpus holding their positives."""
    return {"pairs": tiny_inputs["pairs40"], "corpus": tiny_inputs["corpus"]}


CONFIG = PipelineConfig.from_dict({"embed": {"max_seq_length": 64}})


def _files(version: negminer.DatasetVersion) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in version.path.iterdir() if p.name != "manifest.json"}


def test_mine_from_paths_and_from_tables_writes_the_same_dataset(small, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from_paths = negminer.mine(small["pairs"], corpus=small["corpus"], out=tmp_path / "a", config=CONFIG)
    from_tables = negminer.mine(
        pq.read_table(small["pairs"]),
        corpus=pq.read_table(small["corpus"]).to_pandas(),
        out=tmp_path / "b",
        name="pairs40",
        config=CONFIG,
    )

    assert from_paths.path == tmp_path / "a" / "pairs40" / "v0001", "named after the pairs file"
    assert _files(from_tables) == _files(from_paths)
    assert from_paths.counts["triplet_rows"] == pq.read_metadata(from_paths.path / "triplets.parquet").num_rows
    assert from_paths.flagged.num_rows == sum(from_paths.counts["flagged_by_kind"].values())
    train = negminer.open_version(tmp_path / "a" / "pairs40").load()
    assert len(train) == from_paths.counts["triplet_rows"] and train.column_names == ["anchor", "positive", "negative"]


def test_mine_takes_sentence_transformers_option_names(small, tmp_path) -> None:
    version = negminer.mine(
        small["pairs"], corpus=small["corpus"], out=tmp_path, config=CONFIG, num_negatives=2, strategy="naive"
    )
    settings = version.manifest["config"]["mine"]
    assert (settings["num_negatives"], settings["sampling_strategy"]) == (2, "top")
    assert version.manifest["config"]["embed"]["max_seq_length"] == 64, "the config's settings stay"
    with pytest.raises(ConfigError, match="num_negatvies"):
        negminer.mine(small["pairs"], out=tmp_path, num_negatvies=2)


def test_open_version_refuses_a_folder_without_a_version(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a complete dataset version"):
        negminer.open_version(tmp_path)
