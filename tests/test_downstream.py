"""bench/downstream.py's pieces on a tiny hand-made retrieval set (the real run is documented
in docs/benchmarks.md); the model tests train one step and evaluate on a handful of queries."""

from __future__ import annotations

import json
import statistics

import pyarrow as pa
import pytest

from bench import downstream
from bench.common import RetrievalSet

DOCS = {
    "d1": "Aspirin lowers the risk of heart attack in adults.",
    "d2": "Daily aspirin use raises bleeding risk.",
    "d3": "Vitamin D supplements do not prevent fractures.",
    "d4": "Bone density improves with weight training.",
    "d5": "Green tea contains antioxidants called catechins.",
    "d6": "Coffee consumption is linked to lower liver disease risk.",
}
QUERIES = {
    "q1": "Does aspirin prevent heart attacks?",
    "q2": "Do vitamin D pills prevent broken bones?",
    "q3": "Is coffee good for the liver?",
    "q4": "What is in green tea?",  # no relevant document: left out of the evaluation
}
QRELS = {"q1": {"d2", "d1"}, "q2": {"d3", "d4"}, "q3": {"d6"}}


@pytest.fixture
def data() -> RetrievalSet:
    corpus = pa.table({"doc_id": list(DOCS), "title": [""] * len(DOCS), "text": list(DOCS.values())})
    queries = pa.table({"query_id": list(QUERIES), "text": list(QUERIES.values())})
    return RetrievalSet(corpus, queries, QRELS)


@pytest.fixture
def task(data: RetrievalSet) -> downstream.Task:
    queries, corpus, relevant = downstream.test_inputs(data)
    return downstream.Task(
        name="tiny",
        pairs=downstream.train_pairs(data, max_positives=1),
        corpus=pa.table({"id": list(DOCS), "title": [""] * len(DOCS), "text": list(DOCS.values())}),
        relevant_train=downstream.relevant_texts(data),
        test_queries=queries,
        test_corpus=corpus,
        test_relevant=relevant,
    )


def test_train_pairs_caps_positives_by_sorted_doc_id(data: RetrievalSet) -> None:
    one = downstream.train_pairs(data, max_positives=1)
    assert one["anchor_id"].to_pylist() == ["q1", "q2", "q3"]
    assert one["positive_id"].to_pylist() == ["d1", "d3", "d6"]
    assert one["positive"].to_pylist()[0] == DOCS["d1"]
    assert downstream.train_pairs(data, max_positives=2).num_rows == 5
    with pytest.raises(ValueError, match="max_positives"):
        downstream.train_pairs(data, max_positives=0)


def test_test_inputs_drop_unjudged_queries_and_cap(data: RetrievalSet) -> None:
    queries, corpus, relevant = downstream.test_inputs(data)
    assert set(queries) == {"q1", "q2", "q3"} and len(corpus) == 6
    assert relevant["q1"] == {"d1", "d2"}
    queries, corpus, relevant = downstream.test_inputs(data, max_queries=1, max_corpus=3)
    assert list(queries) == ["q1"]
    assert set(corpus) == {"d1", "d2", "d3"}  # the relevant ones first, then by doc_id


def test_in_batch_rows_and_mined_stats(task: downstream.Task) -> None:
    rows = downstream.in_batch_rows(task).rows
    assert rows.column_names == ["anchor", "positive"] and rows.num_rows == 3
    mined = pa.table(
        {
            "anchor": [QUERIES["q1"], QUERIES["q2"]],
            "positive": [DOCS["d1"], DOCS["d3"]],
            "negative": [DOCS["d2"], DOCS["d5"]],  # d2 is relevant to q1 but was not given: a false negative
        }
    )
    stats = downstream.mined_stats(mined, task)
    assert stats == {"rows": 2, "anchors": 2, "anchors_given": 3, "false_negative_rate": 0.5}


def test_result_key_changes_with_rows_seed_and_budget(task: downstream.Task) -> None:
    budget = downstream.Budget(steps=10, batch_size=2)
    data = downstream.in_batch_rows(task)
    key = downstream.result_key(task, data, budget=budget, seed=1)
    assert key == downstream.result_key(task, downstream.in_batch_rows(task), budget=budget, seed=1)
    assert key != downstream.result_key(task, data, budget=budget, seed=2)
    assert key != downstream.result_key(task, data, budget=downstream.Budget(steps=11, batch_size=2), seed=1)
    fewer = downstream.ArmData("in-batch", data.rows.slice(0, 2))
    assert key != downstream.result_key(task, fewer, budget=budget, seed=1)


def test_run_one_reuses_a_cached_result(task: downstream.Task, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(downstream, "CACHE", tmp_path)
    budget = downstream.Budget(steps=1, batch_size=2)
    data = downstream.in_batch_rows(task)
    path = downstream.result_path(task, data, budget=budget, seed=3)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"arm": "in-batch", "seed": 3, "ndcg@10": 0.5}))
    assert downstream.run_one(task, data, budget=budget, seed=3)["ndcg@10"] == 0.5


def test_cached_only_reports_and_trains_nothing(task: downstream.Task, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(downstream, "CACHE", tmp_path)
    monkeypatch.setattr(downstream, "train", lambda *args, **kwargs: pytest.fail("--cached-only trained"))
    budget = downstream.Budget(steps=1, batch_size=2)
    data = downstream.in_batch_rows(task)
    assert downstream.run_one(task, data, budget=budget, seed=4, cached_only=True) is None
    assert not (tmp_path / "results").exists()


def test_summary_margin_and_table() -> None:
    ours = [{"seed": s, "ndcg@10": v, "recall@100": 0.9} for s, v in ((1, 0.62), (2, 0.60), (3, 0.64))]
    theirs = [{"seed": s, "ndcg@10": v, "recall@100": 0.8} for s, v in ((1, 0.60), (2, 0.61), (3, 0.60))]
    summary = downstream.summarise(ours, "ndcg@10")
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.62) and summary["std"] == pytest.approx(0.02)
    margin = downstream.paired_margin(ours, theirs, "ndcg@10")
    assert margin["mean"] == pytest.approx(0.05 / 3) and margin["min"] == pytest.approx(-0.01)
    table = downstream.markdown_table(
        "tiny", {"negminer-default": ours, "st-margin": theirs}, {"st-margin": {"rows": 7, "false_negative_rate": 0.1}}
    )
    assert "| negminer default | 3 | 0.6200 ± 0.0200 (0.6000–0.6400) |" in table
    assert "10.0%" in table
    diffs = [0.02, -0.01, 0.04]  # ours − theirs, seeds 1, 2, 3
    spread = pytest.approx(statistics.stdev(diffs), abs=1e-4)
    margins = table[table.index("| negminer default − |") :]
    row = next(line for line in margins.splitlines() if line.startswith("| ST mine_hard_negatives relative_margin"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[0] == "3" and cells[1] == "+0.0167" and float(cells[2]) == spread
    assert (cells[3], cells[4]) == ("-0.0100", "+0.0400")
    assert margin["std"] == pytest.approx(statistics.stdev(diffs))
    assert "base model" not in table  # no base arm in this run


def test_the_custom_arm_is_named_by_its_overrides() -> None:
    ours = [{"seed": 1, "ndcg@10": 0.62, "recall@100": 0.9}]
    custom = [{"seed": 1, "ndcg@10": 0.60, "recall@100": 0.9}]
    info = {"negminer-custom": {"overrides": downstream._override_text({"mine": {"strategy": "naive"}})}}
    table = downstream.markdown_table("tiny", {"negminer-default": ours, "negminer-custom": custom}, info)
    assert "| negminer with mine.strategy=naive | 1 | 0.6000 |" in table
    assert "| negminer with mine.strategy=naive | 1 | +0.0200 |" in table, "the margins table names it alike"
    assert downstream.ARM_LABELS["negminer-custom"] not in table


def test_table_says_when_no_trained_arm_beats_the_base_model() -> None:
    base = [{"seed": 0, "ndcg@10": 0.61, "recall@100": 0.9}]
    ours = [{"seed": s, "ndcg@10": v, "recall@100": 0.9} for s, v in ((1, 0.60), (2, 0.64))]
    theirs = [{"seed": 1, "ndcg@10": 0.58, "recall@100": 0.9}]
    by_arm = {"base": base, "negminer-default": ours, "st-margin": theirs}
    lines = downstream.markdown_table("tiny", by_arm, {}).splitlines()
    assert (
        lines[-1]
        == "mean nDCG@10 − base model: negminer default +0.0100, ST mine_hard_negatives relative_margin=0.05 -0.0300"
    )
    by_arm["negminer-default"] = ours[:1]
    assert downstream.markdown_table("tiny", by_arm, {}).endswith(
        "no trained arm beats the base model: at this budget training does not help on this set"
    )


def test_unknown_arm_is_refused(task: downstream.Task) -> None:
    with pytest.raises(ValueError, match="unknown arm"):
        downstream.build_arm("nope", task, budget=downstream.Budget(steps=1, batch_size=2), mining_model=None)


@pytest.mark.slow
def test_one_training_step_and_evaluation(task: downstream.Task, model, tmp_path) -> None:
    pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs accelerate")
    budget = downstream.Budget(steps=1, batch_size=2, max_seq_length=32)
    evaluator = downstream.build_evaluator(task.test_queries, task.test_corpus, task.test_relevant)
    base = downstream.evaluate(model, evaluator)
    assert set(base) == {"ndcg@10", "recall@100", "mrr@10"} and base["recall@100"] == 1.0  # 6 docs < 100
    assert base["ndcg@10"] > 0.5  # the base model already ranks these obvious pairs well
    trained = downstream.train(downstream.in_batch_rows(task).rows, budget=budget, seed=1, output_dir=tmp_path)
    assert trained.max_seq_length == 32
    assert 0.0 <= downstream.evaluate(trained, evaluator)["ndcg@10"] <= 1.0


@pytest.mark.slow
def test_st_arms_mine_one_negative_per_pair(task: downstream.Task, model, tmp_path, monkeypatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setattr(downstream, "CACHE", tmp_path)
    budget = downstream.Budget(steps=1, batch_size=2)
    naive = downstream.st_rows(task, model, arm="st-naive", budget=budget)
    assert naive.rows.column_names == ["anchor", "positive", "negative"] and naive.rows.num_rows == 3
    assert naive.info["anchors"] == 3 and naive.info["false_negative_rate"] is not None
    margin = downstream.st_rows(task, model, arm="st-margin", budget=budget)
    assert margin.info["options"] == {"relative_margin": 0.05} and margin.rows.num_rows <= 3
    assert any((tmp_path / "st-embeddings" / "tiny").iterdir())  # the embeddings are cached
