"""negminer evaluate / negminer.evaluate(): retrieval sets in both layouts, the results JSON,
its copy beside the version (which still verifies), and real fine-tuning at a tiny budget on
the shipped sample: its held-out test queries through the CLI, its train queries through the
Python entry (training on them must raise their score)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import negminer
from negminer.config import EvaluateConfig, PipelineConfig
from negminer.errors import ConfigError, InputError
from negminer.evaluation import RetrievalSet, load_retrieval_set
from negminer.evaluation.data import select
from negminer.evaluation.records import evaluations_dir, markdown_table, record_key
from negminer.report import run_report
from negminer.storage.versions import verify_version

LOAD = {"titles": False, "max_queries": None, "max_corpus": None}


def _write_parquet_set(folder: Path, *, splits: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"doc_id": ["d1", "d2", "d3"], "title": ["T1", "", "T3"], "text": ["one", "two", "three"]}),
        folder / "corpus.parquet",
    )
    pq.write_table(pa.table({"query_id": ["q1", "q2", "q3"], "text": ["a", "b", "c"]}), folder / "queries.parquet")
    qrels = pa.table(
        {
            "query_id": ["q1", "q1", "q2", "q3"],
            "doc_id": ["d1", "d2", "d3", "d1"],
            "score": pa.array([1, 2, 0, 1], pa.int32()),  # q2's only judgment is not relevant
        }
    )
    pq.write_table(qrels, folder / "qrels.parquet")
    if splits:
        pq.write_table(
            pa.table({"query_id": ["q1", "q2", "q3"], "split": ["test", "test", "train"]}),
            folder / "query_splits.parquet",
        )
    return folder


def test_parquet_layout_splits_and_graded_labels(tmp_path: Path) -> None:
    folder = _write_parquet_set(tmp_path / "set", splits=True)
    test = load_retrieval_set(folder, split="test", **LOAD)
    assert test.queries == {"q1": "a"}  # q2 has no relevant document, q3 is train
    assert test.relevant == {"q1": {"d1", "d2"}} and len(test.corpus) == 3
    assert load_retrieval_set(folder, split=None, **LOAD).queries == {"q1": "a", "q3": "c"}
    titled = load_retrieval_set(folder, split="test", **{**LOAD, "titles": True})
    assert titled.corpus == {"d1": "T1 one", "d2": "two", "d3": "T3 three"}
    with pytest.raises(ConfigError, match="no split 'dev'; it has test, train"):
        load_retrieval_set(folder, split="dev", **LOAD)
    (folder / "query_splits.parquet").unlink()  # no split information: the whole set
    assert load_retrieval_set(folder, split="test", **LOAD).split is None


def test_beir_layout(tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td1\t1\n")
    data = load_retrieval_set(folder, split="test", **LOAD)
    assert data.queries == {"q1": "a"} and data.relevant == {"q1": {"d2"}} and data.corpus["d1"] == "one"
    assert set(load_retrieval_set(folder, split=None, **LOAD).queries) == {"q1", "q2"}
    with pytest.raises(ConfigError, match=r"no dev\.tsv; it has test, train"):
        load_retrieval_set(folder, split="dev", **LOAD)


def test_bad_retrieval_sets_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no corpus\.parquet or corpus\.jsonl"):
        load_retrieval_set(tmp_path, split=None, **LOAD)
    folder = _write_parquet_set(tmp_path / "set", splits=False)
    (folder / "qrels.parquet").unlink()
    with pytest.raises(InputError, match=r"qrels\.parquet: file not found"):
        load_retrieval_set(folder, split=None, **LOAD)
    pq.write_table(pa.table({"query_id": ["q1"], "doc": ["d1"], "score": [1]}), folder / "qrels.parquet")
    with pytest.raises(InputError, match=r"missing column\(s\) doc_id"):
        load_retrieval_set(folder, split=None, **LOAD)


def test_select_caps_queries_then_corpus() -> None:
    corpus = {f"d{i}": f"text {i}" for i in range(6)}
    qrels = {"q2": {"d5"}, "q1": {"d4"}, "q0": set()}
    picked = select({"q2": "b", "q1": "a", "q0": "c"}, corpus, qrels, max_queries=1, max_corpus=3)
    assert picked.queries == {"q1": "a"}  # q0 has no relevant document; then the first by id
    assert set(picked.corpus) == {"d4", "d0", "d1"}  # its relevant document first, then by id


def test_shipped_sample_is_a_held_out_retrieval_set(sample_dir: Path) -> None:
    data = load_retrieval_set(sample_dir, split="test", **LOAD)
    assert (len(data.queries), len(data.corpus), sum(map(len, data.relevant.values()))) == (77, 800, 87)
    train_ids = set(pq.read_table(sample_dir / "pairs.parquet")["anchor_id"].to_pylist())
    assert not train_ids & set(data.queries)  # held out: no training claim is evaluated on
    assert all(docs <= set(data.corpus) for docs in data.relevant.values())


def test_options_are_checked_before_any_model_loads(sample_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) stepz"):
        negminer.evaluate(sample_dir, stepz=3)
    with pytest.raises(ConfigError, match="steps"):
        negminer.evaluate(sample_dir, steps=0)
    with pytest.raises(ConfigError, match="not a complete dataset version"):
        negminer.evaluate(sample_dir, train=tmp_path)
    assert EvaluateConfig().steps == 240 and EvaluateConfig().batch_size == 16  # bench/downstream.py's CPU budget


def test_markdown_table_and_record_key() -> None:
    record = {
        "retrieval_set": {"path": "x", "queries": 2},
        "config": {"seed": 1},
        "arms": [
            {"arm": "base", "version": None, "ndcg@10": 0.5, "recall@100": 0.9, "mrr@10": 0.4},
            {
                "arm": "train",
                "version": "/r/sample/v0002",
                "rows_sha256": "ab",
                "ndcg@10": 0.6,
                "recall@100": 0.9,
                "mrr@10": 0.5,
                "delta": {"ndcg@10": 0.1, "recall@100": 0.0, "mrr@10": 0.1},
                "train_seconds": 3.0,
            },
        ],
    }
    assert (
        markdown_table(record).splitlines()[3]
        == "| sample/v0002 (train) | 0.6000 (+0.1000) | 0.9000 (+0.0000) | 0.5000 (+0.1000) |"
    )
    timed = {**record, "arms": [record["arms"][0], {**record["arms"][1], "train_seconds": 9.0}]}
    assert record_key(timed) == record_key(record)  # timings do not name an evaluation
    assert record_key({**record, "config": {"seed": 2}}) != record_key(record)
    assert evaluations_dir("/r/sample/v0002") == Path("/r/sample/evaluations/v0002")


# ---------------------------------------------------------------- with the model


@pytest.fixture(scope="module")
def version(sample_dir: Path, store_root: Path, tmp_path_factory) -> negminer.DatasetVersion:
    """The shipped sample mined in this process (one negative per pair)."""
    out = tmp_path_factory.mktemp("evaluate-datasets")
    config = PipelineConfig.from_dict({"embed": {"max_seq_length": 64}})
    return negminer.mine(
        sample_dir / "pairs.parquet",
        corpus=sample_dir / "corpus.parquet",
        out=out,
        name="sample",
        config=config,
        store=store_root,
        num_negatives=1,
    )


@pytest.mark.slow
def test_cli_on_the_held_out_queries_at_a_tiny_budget(sample_dir: Path, version, tmp_path: Path) -> None:
    pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs accelerate")
    output = tmp_path / "evaluation.json"
    budget = ["--steps", "2", "--batch-size", "4", "--max-seq-length", "64"]
    args = ["--train", str(version.path), *budget, "--output", str(output)]
    done = subprocess.run(
        [sys.executable, "-m", "negminer", "evaluate", str(sample_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(output)
    assert "| base model |" in done.stderr and "(train) |" in done.stderr
    assert len(done.stdout.strip().splitlines()) == 1  # the trainer's logs go to stderr
    record = json.loads(output.read_text())
    assert record["retrieval_set"]["queries"] == 77 and record["retrieval_set"]["corpus"] == 800
    assert record["config"]["steps"] == 2 and record["config"]["max_seq_length"] == 64
    base, trained = record["arms"]
    assert (base["arm"], trained["arm"], trained["version"]) == ("base", "train", str(version.path.resolve()))
    # all-MiniLM-L6-v2 on these 77 claims x 800 abstracts
    assert 0.7 < base["ndcg@10"] < 0.9 and 0.65 < base["mrr@10"] < 0.9 and base["recall@100"] >= 0.95
    for arm in record["arms"]:
        assert all(0.0 <= arm[m] <= 1.0 for m in ("ndcg@10", "recall@100", "mrr@10"))
    assert trained["rows"] == pq.read_metadata(version.path / "triplets.parquet").num_rows
    assert trained["delta"]["ndcg@10"] == pytest.approx(trained["ndcg@10"] - base["ndcg@10"], abs=1e-5)
    # alignment and uniformity (Wang & Isola) of both models on the set, and the mining model's in the manifest
    for arm in record["arms"]:
        assert 0.0 < arm["alignment"] < 2.0 and -4.0 < arm["uniformity"] < 0.0, arm
    assert trained["delta"]["alignment"] == pytest.approx(trained["alignment"] - base["alignment"], abs=1e-6)
    assert "| MRR@10 | alignment | uniformity |" in done.stderr
    diagnostics = version.manifest["diagnostics"]
    assert diagnostics["alignment_pairs"] == 225 and diagnostics["uniformity_vectors"] == 1000
    # a copy beside the version, not inside it: the version still verifies, its report lists it
    stored = list(evaluations_dir(version.path).glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["arms"] == record["arms"]
    assert verify_version(version.path) == []
    assert not (version.path / "evaluations").exists()
    assert "## Evaluations" in run_report(version.path).markdown


@pytest.mark.slow
@pytest.mark.extended  # the command's own run at a tiny budget runs by default
def test_training_raises_the_score_of_the_train_queries(sample_dir: Path, version) -> None:
    """Fine-tuned on the sample's own pairs, the model must rank their positives higher; the
    same version given twice trains twice to the same figures (seeded)."""
    pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs accelerate")
    pairs = pq.read_table(sample_dir / "pairs.parquet")
    corpus = pq.read_table(sample_dir / "corpus.parquet")
    qrels: dict[str, set[str]] = {}
    for anchor_id, positive_id in zip(pairs["anchor_id"].to_pylist(), pairs["positive_id"].to_pylist(), strict=True):
        qrels.setdefault(anchor_id, set()).add(positive_id)
    train_queries = select(
        dict(zip(pairs["anchor_id"].to_pylist(), pairs["anchor"].to_pylist(), strict=True)),
        dict(zip(corpus["id"].to_pylist(), corpus["text"].to_pylist(), strict=True)),
        qrels,
        max_queries=None,
        max_corpus=400,
    )
    assert isinstance(train_queries, RetrievalSet) and len(train_queries.queries) == 200
    result = negminer.evaluate(
        train_queries,
        train=version,
        against=version.path,
        steps=8,
        batch_size=16,
        learning_rate=2e-4,
        max_seq_length=64,
    )
    before, after = result.base.metrics, result.trained.metrics
    assert after["ndcg@10"] > before["ndcg@10"] + 0.01, (before, after)
    assert after["mrr@10"] > before["mrr@10"], (before, after)
    assert result.against.metrics == after  # same rows, budget and seed: the same model
    assert after["alignment"] < before["alignment"], "trained on these pairs: they move closer"
    assert result.path is None and [a.arm for a in result.arms] == ["base", "train", "against"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_precision_sets_the_arithmetic_and_keeps_float32_weights(precision, tmp_path, monkeypatch) -> None:
    pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs accelerate")
    import torch

    from negminer.evaluation import train

    seen: set[torch.dtype] = set()
    made = train.fresh_model

    def watched(*args, **kwargs):
        model = made(*args, **kwargs)
        first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        first_linear.register_forward_hook(lambda _m, _i, output: seen.add(output.dtype))
        return model

    monkeypatch.setattr(train, "fresh_model", watched)
    rows = pa.table({c: [f"{c} {i} on vitamin d and bone density" for i in range(8)] for c in ("anchor", "pos", "neg")})
    trained = train.train_model(
        rows,
        model=None,
        steps=1,
        batch_size=4,
        learning_rate=5e-5,
        warmup_ratio=0.0,
        max_seq_length=32,
        seed=1,
        device="cpu",
        output_dir=tmp_path,
        precision=precision,
    )
    assert seen == {getattr(torch, precision)}
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
