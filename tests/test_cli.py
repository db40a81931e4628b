"""End-to-end: the real CLI, the real packaged model, the shipped SciFact sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "negminer", *args], capture_output=True, text=True, env=env, timeout=900
    )


def mine_sample(sample_dir: Path, out: Path, store_root: Path) -> tuple[Path, str]:
    """`negminer mine` on the shipped sample (3 negatives): the version it printed last, and its stderr."""
    pairs, corpus = str(sample_dir / "pairs.parquet"), str(sample_dir / "corpus.parquet")
    options = ["--corpus", corpus, "--out", str(out), "--name", "sample", "--num-negatives", "3"]
    result = run_cli("mine", pairs, *options, "--store", str(store_root))
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.fixture(scope="module")
def mined_with_stderr(sample_dir: Path, store_root: Path, tmp_path_factory) -> tuple[Path, Path, str]:
    out = tmp_path_factory.mktemp("datasets")
    return out, *mine_sample(sample_dir, out, store_root)


@pytest.fixture(scope="module")
def mined(mined_with_stderr: tuple[Path, Path, str]) -> tuple[Path, Path]:
    return mined_with_stderr[:2]


def test_mine_writes_complete_version(mined: tuple[Path, Path]) -> None:
    from negminer.storage.versions import latest_version, verify_version

    out, version = mined
    assert version.parent == out / "sample"
    assert verify_version(version) == []
    assert latest_version(out / "sample") == version.name
    manifest = json.loads((version / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"triplets.parquet", "candidates.parquet", "rejects.parquet"}
    assert manifest["model"]["fingerprint"] and manifest["config"]["mine"]["num_negatives"] == 3
    assert not list((out / "sample").glob(".staging-*"))


def test_mine_prints_the_versions_warnings_on_stderr(mined_with_stderr: tuple[Path, Path, str]) -> None:
    from negminer.report import health_warnings
    from negminer.storage.versions import read_manifest

    _, version, stderr = mined_with_stderr
    warnings = health_warnings(read_manifest(version))
    # SciFact abstracts: most exceed the packaged model's 256 tokens
    assert any(" of 800 doc texts " in w and "max_seq_length" in w for w in warnings), warnings
    assert [line.removeprefix("warning: ") for line in stderr.splitlines() if line.startswith("warning: ")] == warnings


def test_mine_ends_with_a_summary_on_stderr_and_the_version_on_stdout(
    mined_with_stderr: tuple[Path, Path, str],
) -> None:
    from negminer.storage.versions import read_manifest
    from negminer.summary import mine_summary

    out, version, stderr = mined_with_stderr
    lines = stderr.splitlines()
    summary = mine_summary(version, root=out)
    assert lines[-len(summary) :] == summary, "the summary closes stderr"
    assert summary[0].startswith("summary: 225 pairs in (0 rejected), 800 documents -> ")
    assert any(line.startswith("  given positives: 225") for line in summary)
    chosen = read_manifest(version)["selection"]["auto_strategy"]["chosen"]
    assert any(line.startswith(f"  auto: strategy {chosen}, flagged false negatives ") for line in summary)


def test_triplets_are_text_only_and_exclude_positives(mined: tuple[Path, Path], sample_dir: Path) -> None:
    _, version = mined
    triplets = pq.read_table(version / "triplets.parquet")
    assert triplets.column_names == ["anchor", "positive", "negative"]
    assert all(str(t) == "string" for t in triplets.schema.types)
    pairs = pq.read_table(sample_dir / "pairs.parquet").to_pylist()
    positives: dict[str, set[str]] = {}
    for row in pairs:
        positives.setdefault(row["anchor"], set()).add(row["positive"])
    rows = triplets.to_pylist()
    assert rows
    for row in rows:
        assert row["negative"] not in positives[row["anchor"]]
        assert row["positive"] in positives[row["anchor"]]
    per_pair = {}
    for row in rows:
        per_pair.setdefault((row["anchor"], row["positive"]), []).append(row["negative"])
    # anchors sharing a text (SciFact has such duplicate claims) add their rows to one key
    assert all(len(negs) % 3 == 0 for negs in per_pair.values())


def test_negatives_are_eligible_candidates(mined: tuple[Path, Path]) -> None:
    _, version = mined
    cands = pq.read_table(version / "candidates.parquet").to_pylist()
    by_anchor: dict[int, list[dict]] = {}
    for row in cands:
        by_anchor.setdefault(row["anchor_idx"], []).append(row)
    for rows in by_anchor.values():
        chosen = [r for r in rows if r["negative_slot"] is not None]
        assert sorted(r["negative_slot"] for r in chosen) == [1, 2, 3]
        for row in chosen:
            assert row["reason"] == "selected"
            assert not (row["is_positive"] or row["same_text_as_positive"] or row["same_text_as_anchor"])
        dropped = [r for r in rows if r["negative_slot"] is None]
        assert all(r["reason"] != "selected" for r in dropped)


@pytest.mark.extended  # the flow's own cache test covers a second identical run
def test_second_run_embeds_nothing(mined: tuple[Path, Path], sample_dir: Path, store_root: Path) -> None:
    out, first = mined
    second, _ = mine_sample(sample_dir, out, store_root)
    assert second.name == "v0002"
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["parent"] == first.name
    assert manifest["counts"]["embedding"]["docs"]["embedded"] == 0
    assert manifest["counts"]["embedding"]["anchors"]["embedded"] == 0
    for name in ("triplets.parquet", "candidates.parquet"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


@pytest.mark.extended  # the tutorial's training step runs by default (tests/test_docs_examples.py)
def test_triplets_train_one_step_with_mnrl(mined: tuple[Path, Path], model, tmp_path: Path) -> None:
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    _, version = mined
    train = datasets.load_dataset("parquet", data_files=str(version / "triplets.parquet"), split="train")
    train = train.select(range(8))
    before = next(model.parameters()).detach().clone()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "train"),
        max_steps=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    import copy

    student = copy.deepcopy(model)
    trainer = SentenceTransformerTrainer(
        model=student, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(student)
    )
    output = trainer.train()
    assert output.global_step == 1
    assert output.training_loss > 0
    assert not next(student.parameters()).detach().equal(before)


def test_missing_pairs_file_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("mine", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "nope.parquet" in lines[0] and "not found" in lines[0]
    assert not (tmp_path / "out" / "nope").exists() or not any((tmp_path / "out" / "nope").glob("v*"))


def test_unknown_config_key_names_it(tmp_path: Path, sample_dir: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mine:\n  num_negatves: 4\n")
    result = run_cli("mine", str(sample_dir / "pairs.parquet"), "--out", str(tmp_path), "--config", str(config))
    assert result.returncode != 0
    assert "mine.num_negatves" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_precision_option_reaches_the_config(tmp_path: Path, sample_dir: Path) -> None:
    pairs = str(sample_dir / "pairs.parquet")
    result = run_cli("mine", pairs, "--out", str(tmp_path), "--precision", "bfloat16", "--processes", "2")
    assert result.returncode != 0 and "processes to 1" in result.stderr, result.stderr
    result = run_cli("mine", pairs, "--out", str(tmp_path), "--precision", "float16")
    assert result.returncode != 0 and "embed.precision" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_lists_mine() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "mine" in result.stdout


def test_a_bad_dataset_name_is_refused_before_any_work(tmp_path: Path, sample_dir: Path, monkeypatch) -> None:
    import shutil

    from typer.testing import CliRunner

    import negminer.flows.mine
    from negminer.cli import app
    from negminer.errors import ConfigError

    def unreachable(*args, **kwargs):
        raise AssertionError("run_mine was called with a bad dataset name")

    monkeypatch.setattr(negminer.flows.mine, "run_mine", unreachable)
    pairs = tmp_path / "pairs (1).parquet"  # the default name is the file's stem
    shutil.copyfile(sample_dir / "pairs.parquet", pairs)
    result = CliRunner().invoke(app, ["mine", str(pairs), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, ConfigError), result.exception
    assert str(result.exception) == "dataset name 'pairs (1)' must be letters, digits, '.', '_' or '-'"
    assert not (tmp_path / "out").exists()


def test_source_option_reaches_the_config(tmp_path: Path, sample_dir: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import negminer.flows.mine
    from negminer.cli import app
    from negminer.errors import ConfigError

    seen = []

    def record(pairs, out, name, *, config, **kwargs):
        seen.append(config.mine.sources)
        raise ConfigError("recorded")  # stops the command before any work

    monkeypatch.setattr(negminer.flows.mine, "run_mine", record)
    pairs = str(sample_dir / "pairs.parquet")
    for options, expected in (([], ("dense",)), (["--source", "dense", "--source", "bm25"], ("dense", "bm25"))):
        result = CliRunner().invoke(app, ["mine", pairs, "--out", str(tmp_path), *options])
        assert str(result.exception) == "recorded", result.output
        assert seen.pop() == expected
    result = CliRunner().invoke(app, ["mine", pairs, "--out", str(tmp_path), "--source", "sparse"])
    assert isinstance(result.exception, ConfigError) and "mine.sources" in str(result.exception), result.exception
    assert not seen
