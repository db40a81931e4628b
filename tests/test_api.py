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
    diagnostics = from_paths.manifest["diagnostics"]
    counts = from_paths.counts
    assert diagnostics["alignment_pairs"] == counts["pairs"] == 40
    assert diagnostics["uniformity_vectors"] == counts["anchors"] + counts["docs"]  # below the sample size
    assert 0.0 < diagnostics["alignment"] < 2.0 and -4.0 < diagnostics["uniformity"] < 0.0
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


def _manifest_without_run_details(version: negminer.DatasetVersion) -> dict:
    manifest = dict(version.manifest)
    for key in ("created_at", "derived_from"):
        manifest.pop(key, None)
    return manifest


def test_refilter_writes_what_the_cli_refilter_writes(random_vector_run, tmp_path) -> None:
    import shutil

    from typer.testing import CliRunner

    from negminer import stages
    from negminer.cli import app

    config = PipelineConfig.from_dict({"mine": {"search_depth": 20, "num_negatives": 3}})
    (tmp_path / "run").mkdir()
    work, read, embed = random_vector_run(tmp_path / "run", config)
    search = stages.search_stage(work, config=config.mine, index_config=config.index)
    curate = stages.curate_stage(work, search, config=config.curate.model_copy(update={"enabled": False}))
    select = stages.select_stage(work, curate, config=config.mine)
    refs = stages.StageRefs(read=read, embed=embed, search=search, curate=curate, select=select)
    parent = Path(stages.publish_stage(work, tmp_path / "a", "toy", config=config, refs=refs))
    shutil.copytree(parent.parent, tmp_path / "b" / "toy")
    settings = tmp_path / "semi.yaml"
    settings.write_text(
        "mine:\n  strategy: semi-hard\n  semi_hard_margin: 0.3\ncurate:\n  false_negative_action: keep\n"
    )

    result = CliRunner().invoke(app, ["refilter", str(parent), "--config", str(settings), "--num-negatives", "2"])
    assert result.exit_code == 0, result.output
    by_cli = negminer.open_version(result.stdout.strip().splitlines()[-1])
    by_api = negminer.refilter(tmp_path / "b" / "toy", config=settings, num_negatives=2)

    assert by_api.path == tmp_path / "b" / "toy" / "v0002" and by_cli.path == parent.parent / "v0002"
    assert _files(by_api) == _files(by_cli)
    assert _manifest_without_run_details(by_api) == _manifest_without_run_details(by_cli)
    assert by_api.manifest["config"]["mine"]["num_negatives"] == 2
    assert by_api.manifest["derived_from"]["by"] == "refilter"
    with pytest.raises(ConfigError, match="num_negatvies"):
        negminer.refilter(by_api, num_negatvies=2)
