"""Downstream proof: fine-tune all-MiniLM-L6-v2 on each arm's training data, compare retrieval.

For each labelled retrieval set in ../shared/data (BEIR layout, bench/common.py):

* training pairs: the train split's (query, relevant document) pairs, at most
  ``--max-positives`` per query (the lowest doc_ids, so the choice is reproducible; NFCorpus
  has ~43 relevant documents per train query). The miners know only these positives; every
  other relevant document of a query is a potential false negative, as in real data.
* arms, one negative per pair (triplets) so every mined arm trains on batches of the same
  shape: ``base`` (no training), ``in-batch`` (pairs only, in-batch negatives),
  ``st-naive`` and ``st-margin`` (sentence-transformers' ``mine_hard_negatives``, naive
  top-k and ``relative_margin=0.05``), ``negminer-default`` (``negminer mine`` with
  ``PipelineConfig()`` defaults, read at run time) and ``negminer-no-curation`` (the same
  with ``curate.enabled: false``), ``negminer-relabel`` (``curate.false_negative_action:
  relabel``: confident false negatives become extra positives of their anchor) and
  ``negminer-hybrid`` (``mine.sources: [dense, bm25]``); ``negminer-custom``, not run by default, mines with the
  defaults plus ``--negminer-set SECTION.KEY=VALUE`` overrides (to try a setting);
  ``negminer-curriculum``, not run by default, mines with the defaults and
  ``mine.output_curriculum: true`` and trains on the curriculum stages in order, easy to hard
  (each stage's steps in proportion to its rows, the same total steps; the learning-rate
  schedule restarts with each stage, as the training loop in docs/strategies.md does). Mining
  searches the full corpus with the base model at its default max_seq_length (256); negminer
  reads the base model's vectors from the benchmark
  store (bench/.cache/store, ``python -m bench.warm_store``), sentence-transformers from its
  ``cache_folder`` (bench/.cache/downstream/st-embeddings).
* training and evaluation are ``negminer evaluate``'s (negminer.evaluation.train; this file
  adds the arms, the cache and the tables): a copy of the base model,
  MultipleNegativesRankingLoss, SentenceTransformerTrainer with ``BatchSamplers.NO_DUPLICATES``;
  the same steps, batch size, learning rate, warmup, max_seq_length (128) and seed for every
  arm. Arms whose miner drops anchors (no negative passed its filters) train on fewer distinct
  rows for the same number of steps.
* evaluation: InformationRetrievalEvaluator on the test split (all its queries with a relevant
  document, the full corpus; relevance is binary, graded NFCorpus labels count as relevant),
  nDCG@10 and recall@100 at max_seq_length 128. Texts are the ``text`` column (no titles),
  everywhere.

Every (dataset, arm, seed) result is a JSON file under bench/.cache/downstream/results, keyed
by the budget, the seed and the sha256 of the arm's training rows: a rerun skips what is done,
and a change of the mined data (a new negminer default) reruns only what it affects. Mining is
redone on every invocation (it is cheap once the vectors are cached). The base model is
evaluated once per dataset (it has no seed).

Run: python -m bench.downstream [--datasets scifact nfcorpus] [--seeds 1 2 3] [--steps N]
     [--batch-size N] [--learning-rate F] [--max-test-queries N] [--arms ...] [--threads N]
     [--negminer-set mine.search_depth=300 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import BENCH_CACHE, STORE, RetrievalSet, load_retrieval_set
from negminer.config import EvaluateConfig
from negminer.evaluation import data as eval_data
from negminer.evaluation import records
from negminer.evaluation import train as eval_train
from negminer.evaluation.run import table_fingerprint

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

logger = logging.getLogger("bench.downstream")

CACHE = BENCH_CACHE / "downstream"
ARMS = (
    "base",
    "in-batch",
    "st-naive",
    "st-margin",
    "negminer-default",
    "negminer-no-curation",
    "negminer-relabel",
    "negminer-hybrid",
)
ARM_LABELS = {
    "base": "base model (no training)",
    "in-batch": "in-batch negatives only",
    "st-naive": "ST mine_hard_negatives naive top-k",
    "st-margin": "ST mine_hard_negatives relative_margin=0.05",
    "negminer-default": "negminer default",
    "negminer-no-curation": "negminer without curation",
    "negminer-relabel": "negminer, confident false negatives relabelled as positives",
    "negminer-hybrid": "negminer, dense + BM25 candidates",
    "negminer-custom": "negminer with --negminer-set overrides",
    "negminer-curriculum": "negminer default, trained easy → medium → hard",
}
Device = Literal["cpu", "cuda"]
# Fixed budgets per device: the same for every arm of a run (overridable on the command line).
# CPU: 240 steps x 16 (3,840 triplets, most of an epoch of either set's pairs). At 60 steps two
# NFCorpus negative sets sharing 89% of their rows scored up to 1 nDCG@10 point apart and
# SciFact's miners tied, so that budget could not rank miners (docs/benchmarks.md).
# The CPU budget is negminer evaluate's default (EvaluateConfig).
_DEFAULTS = EvaluateConfig()
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {"steps": _DEFAULTS.steps, "batch_size": _DEFAULTS.batch_size},
    "cuda": {"steps": 1000, "batch_size": 64},
}


class ArmSkipped(Exception):
    """An arm that cannot run with this checkout (the reason says what is missing)."""


@dataclass(frozen=True)
class Budget:
    """What every trained arm of a run shares."""

    steps: int
    batch_size: int
    learning_rate: float = _DEFAULTS.learning_rate
    warmup_ratio: float = _DEFAULTS.warmup_ratio
    max_seq_length: int = 128
    num_negatives: int = 1
    device: Device = "cpu"
    precision: str = _DEFAULTS.precision


@dataclass(frozen=True)
class Task:
    """One dataset prepared for the protocol."""

    name: str
    pairs: pa.Table  # anchor_id, anchor, positive_id, positive
    corpus: pa.Table  # id, title, text (the full corpus)
    relevant_train: dict[str, set[str]]  # anchor text -> texts of ALL its train-relevant docs
    test_queries: dict[str, str]
    test_corpus: dict[str, str]
    test_relevant: dict[str, set[str]]


@dataclass(frozen=True)
class ArmData:
    """The rows an arm trains on (None for the base model) and what its miner reported."""

    arm: str
    rows: pa.Table | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return table_fingerprint(self.rows) if self.rows is not None else "none"


# ---------------------------------------------------------------- data


def train_pairs(data: RetrievalSet, *, max_positives: int) -> pa.Table:
    """(anchor_id, anchor, positive_id, positive): up to `max_positives` relevant docs per query.

    The kept positives are the query's relevant doc_ids in sorted order, the first ones.

    Example:
        >>> train_pairs(load_retrieval_set("scifact", "train"), max_positives=2).num_rows  # doctest: +SKIP
        919
    """
    if max_positives < 1:
        raise ValueError(f"max_positives must be >= 1, got {max_positives}")
    doc_text = _doc_texts(data.corpus)
    rows = []
    for qid, text in _query_items(data.queries):
        for doc_id in sorted(data.qrels.get(qid, ()))[:max_positives]:
            rows.append({"anchor_id": qid, "anchor": text, "positive_id": doc_id, "positive": doc_text[doc_id]})
    return pa.Table.from_pylist(rows, schema=_PAIRS_SCHEMA)


_PAIRS_SCHEMA = pa.schema([(name, pa.string()) for name in ("anchor_id", "anchor", "positive_id", "positive")])


def relevant_texts(data: RetrievalSet) -> dict[str, set[str]]:
    """Query text -> texts of every relevant document (all of them, not only the given ones)."""
    doc_text = _doc_texts(data.corpus)
    out: dict[str, set[str]] = {}
    for qid, text in _query_items(data.queries):
        out.setdefault(text, set()).update(doc_text[d] for d in data.qrels.get(qid, ()))
    return out


def test_inputs(
    data: RetrievalSet, *, max_queries: int | None = None, max_corpus: int | None = None
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant_docs) for InformationRetrievalEvaluator (negminer.evaluation.data.select).

    Queries without a relevant document are left out. For quick checks only (not the
    protocol): `max_queries` keeps the first queries by query_id, `max_corpus` keeps their
    relevant documents plus the first other documents by doc_id, `max_corpus` in all.
    """
    picked = eval_data.select(
        dict(_query_items(data.queries)),
        _doc_texts(data.corpus),
        data.qrels,
        max_queries=max_queries,
        max_corpus=max_corpus,
    )
    return picked.queries, picked.corpus, picked.relevant


def load_task(
    name: str, *, max_positives: int, max_test_queries: int | None = None, max_test_corpus: int | None = None
) -> Task:
    """Train pairs and test inputs of one dataset in ../shared/data."""
    train = load_retrieval_set(name, "train")
    test = load_retrieval_set(name, "test")
    queries, corpus, relevant = test_inputs(test, max_queries=max_test_queries, max_corpus=max_test_corpus)
    return Task(
        name=name,
        pairs=train_pairs(train, max_positives=max_positives),
        corpus=pa.table({"id": train.corpus["doc_id"], "title": train.corpus["title"], "text": train.corpus["text"]}),
        relevant_train=relevant_texts(train),
        test_queries=queries,
        test_corpus=corpus,
        test_relevant=relevant,
    )


def _doc_texts(corpus: pa.Table) -> dict[str, str]:
    return dict(zip(corpus["doc_id"].to_pylist(), corpus["text"].to_pylist(), strict=True))


def _query_items(queries: pa.Table) -> Iterable[tuple[str, str]]:
    return zip(queries["query_id"].to_pylist(), queries["text"].to_pylist(), strict=True)


# ---------------------------------------------------------------- arms


def in_batch_rows(task: Task) -> ArmData:
    """(anchor, positive) pairs: MultipleNegativesRankingLoss uses the batch's other positives."""
    anchors = len(set(task.pairs["anchor"].to_pylist()))
    return ArmData(
        "in-batch", task.pairs.select(["anchor", "positive"]), {"rows": task.pairs.num_rows, "anchors": anchors}
    )


def st_rows(task: Task, model: SentenceTransformer, *, arm: str, budget: Budget) -> ArmData:
    """sentence-transformers' mine_hard_negatives over the full corpus (top-k, FAISS)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    options = {"relative_margin": 0.05} if arm == "st-margin" else {}
    start = time.perf_counter()
    mined = mine_hard_negatives(
        Dataset.from_dict({"anchor": task.pairs["anchor"].to_pylist(), "positive": task.pairs["positive"].to_pylist()}),
        model,
        corpus=task.corpus["text"].to_pylist(),
        num_negatives=budget.num_negatives,
        sampling_strategy="top",
        use_faiss=True,
        batch_size=32,
        cache_folder=str(CACHE / "st-embeddings" / task.name),
        output_format="triplet" if budget.num_negatives == 1 else "n-tuple",
        verbose=False,
        **options,
    )
    rows = pa.Table.from_pydict({column: mined[column] for column in mined.column_names})
    info = {"options": options, "mine_seconds": round(time.perf_counter() - start, 1)}
    return ArmData(arm, rows, {**info, **mined_stats(rows, task)})


def negminer_rows(
    task: Task, folder: Path, *, arm: str, budget: Budget, overrides: dict[str, dict[str, Any]] | None = None
) -> ArmData:
    """``negminer mine`` (the CLI, its Prefect flow) with the defaults, or without curation."""
    from negminer.config import PipelineConfig

    config: dict[str, Any] = {"mine": {"num_negatives": budget.num_negatives}}
    if budget.num_negatives > 1:
        config["mine"]["output_format"] = "n-tuple"
    if arm == "negminer-no-curation":
        if "curate" not in PipelineConfig.model_fields:
            raise ArmSkipped("PipelineConfig has no `curate` section yet: nothing to switch off")
        config["curate"] = {"enabled": False}
    if arm == "negminer-curriculum":
        config["mine"]["output_curriculum"] = True
    if arm == "negminer-relabel":
        config["curate"] = {"false_negative_action": "relabel"}
    if arm == "negminer-hybrid":
        config["mine"]["sources"] = ["dense", "bm25"]
    if arm == "negminer-custom":
        if not overrides:
            raise ArmSkipped("negminer-custom needs --negminer-set SECTION.KEY=VALUE")
        for section, values in overrides.items():
            config.setdefault(section, {}).update(values)
    start = time.perf_counter()
    version = run_negminer_mine(task, folder, name=f"{task.name}-{arm}", config=config)
    manifest = json.loads((version / "manifest.json").read_text())
    rows = pq.read_table(version / "triplets.parquet")
    stages: dict[str, int] = {}
    if arm == "negminer-curriculum":
        from negminer.mining.difficulty import STAGE_STEMS

        tables = [pq.read_table(version / f"{stem}.parquet") for stem in STAGE_STEMS]
        stages = {stem: table.num_rows for stem, table in zip(STAGE_STEMS, tables, strict=True)}
        rows = pa.concat_tables(tables)
    info = {
        "version": str(version.relative_to(CACHE)) if version.is_relative_to(CACHE) else str(version),
        "config": {k: manifest["config"].get(k) for k in ("mine", "curate")},
        "curation_ran": curation_ran(version, manifest),
        "flagged_by_kind": manifest["counts"].get("flagged_by_kind"),
        "mine_seconds": round(time.perf_counter() - start, 1),
        **({"stages": stages} if stages else {}),
        **({"overrides": _override_text(overrides)} if arm == "negminer-custom" else {}),
    }
    curate_on = (manifest["config"].get("curate") or {}).get("enabled")
    if arm == "negminer-default" and curate_on and not info["curation_ran"]:
        info["note"] = "curate.enabled is true but the mine flow wrote no curation output (flagged.parquet)"
        logger.warning("%s: %s", task.name, info["note"])
    return ArmData(arm, rows, {**info, **mined_stats(rows, task)})


def _override_text(overrides: dict[str, dict[str, Any]] | None) -> str:
    """``section.key=value ...``, as given to --negminer-set."""
    items = ((section, key, value) for section, values in (overrides or {}).items() for key, value in values.items())
    return " ".join(f"{section}.{key}={value}" for section, key, value in items)


def run_negminer_mine(task: Task, folder: Path, *, name: str, config: dict[str, Any]) -> Path:
    """Write the inputs and config, run ``python -m negminer mine``; returns the version folder."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    pairs, corpus, config_path = folder / "pairs.parquet", folder / "corpus.parquet", folder / f"{name}.yaml"
    _write_if_changed(pairs, task.pairs)
    _write_if_changed(corpus, task.corpus)
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    command = [
        sys.executable,
        "-m",
        "negminer",
        "mine",
        str(pairs),
        "--corpus",
        str(corpus),
        "--out",
        str(folder / "datasets"),
        "--name",
        name,
        "--config",
        str(config_path),
        "--store",
        str(STORE),
    ]
    env = {"PREFECT_HOME": str(CACHE / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    done = subprocess.run(command, capture_output=True, text=True, env={**env, **os.environ}, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"negminer mine failed for {name} (exit {done.returncode}): {last}")
    return Path(done.stdout.strip().splitlines()[-1])


def _write_if_changed(path: Path, table: pa.Table) -> None:
    """Keep the file (and so negminer's work folder key) when its content is unchanged."""
    if path.exists() and pq.read_table(path).equals(table):
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two benchmark processes may write it at once
    pq.write_table(table, tmp)
    tmp.replace(path)


def curation_ran(version: Path, manifest: dict[str, Any]) -> bool:
    """Whether the version holds curation output (its flagged table or flag counts)."""
    return (version / "flagged.parquet").exists() or "flagged_by_kind" in manifest.get("counts", {})


def mined_stats(rows: pa.Table, task: Task) -> dict[str, Any]:
    """Rows, anchors kept and the share of negatives that are relevant train documents."""
    negatives = [c for c in rows.column_names if c.startswith("negative")]
    anchors = rows["anchor"].to_pylist()
    false = sum(
        text in task.relevant_train.get(anchor, ())
        for column in negatives
        for anchor, text in zip(anchors, rows[column].to_pylist(), strict=True)
    )
    total = rows.num_rows * len(negatives)
    return {
        "rows": rows.num_rows,
        "anchors": len(set(anchors)),
        "anchors_given": len(set(task.pairs["anchor"].to_pylist())),
        "false_negative_rate": round(false / total, 4) if total else None,
    }


def build_arm(
    arm: str,
    task: Task,
    *,
    budget: Budget,
    mining_model: SentenceTransformer | None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> ArmData:
    """The training rows of one arm (mines for the mined arms)."""
    if arm == "base":
        return ArmData("base", None)
    if arm == "in-batch":
        return in_batch_rows(task)
    if arm.startswith("st-"):
        if mining_model is None:
            raise ValueError("the sentence-transformers arms need the mining model")
        return st_rows(task, mining_model, arm=arm, budget=budget)
    if arm.startswith("negminer-"):
        return negminer_rows(task, CACHE / "mining" / task.name, arm=arm, budget=budget, overrides=overrides)
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


# ---------------------------------------------------------------- train and evaluate


def build_evaluator(
    queries: dict[str, str], corpus: dict[str, str], relevant: dict[str, set[str]], *, batch_size: int | None = None
) -> InformationRetrievalEvaluator:
    """negminer evaluate's InformationRetrievalEvaluator (nDCG@10, MRR@10, recall@100, cosine)."""
    size = _DEFAULTS.eval_batch_size if batch_size is None else batch_size
    return eval_train.build_evaluator(queries, corpus, relevant, batch_size=size)


def evaluate(model: SentenceTransformer, evaluator: InformationRetrievalEvaluator) -> dict[str, float]:
    """nDCG@10, recall@100 and MRR@10 of `model` (cosine scores), as negminer evaluate reports them."""
    return eval_train.score(model, evaluator)


def fresh_model(budget: Budget) -> SentenceTransformer:
    """A new copy of the packaged base model at the budget's max_seq_length and device."""
    return eval_train.fresh_model(None, device=budget.device, max_seq_length=budget.max_seq_length)


def train(
    rows: pa.Table,
    *,
    budget: Budget,
    seed: int,
    output_dir: str | Path,
    model: str | None = None,
    steps: int | None = None,
) -> SentenceTransformer:
    """Fine-tune a fresh copy of the base model (or of `model`, a folder) on `rows` as negminer evaluate does."""
    return eval_train.train_model(
        rows,
        model=model,
        steps=budget.steps if steps is None else steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        warmup_ratio=budget.warmup_ratio,
        max_seq_length=budget.max_seq_length,
        seed=seed,
        device=budget.device,
        output_dir=output_dir,
        precision=budget.precision,
    )


def train_stages(
    rows: pa.Table, stages: dict[str, int], *, budget: Budget, seed: int, output_dir: str | Path
) -> SentenceTransformer:
    """Train stage after stage (`rows` holds them in order), each for its share of the steps.

    A stage with fewer rows than a batch is trained together with the next one.
    """
    total, done, offset = sum(stages.values()), 0, 0
    model_dir: str | None = None
    pending, trained = 0, None
    for i, n in enumerate(stages.values()):
        pending += n
        last = i == len(stages) - 1
        if pending < budget.batch_size and not last:
            continue
        steps = max(1, budget.steps - done if last else round(budget.steps * pending / total))
        part = rows.slice(offset, pending)
        trained = train(part, budget=budget, seed=seed, output_dir=output_dir, model=model_dir, steps=steps)
        model_dir = str(Path(output_dir) / f"stage-{i + 1}")
        trained.save(model_dir)
        done, offset, pending = done + steps, offset + pending, 0
    return trained


def result_key(task: Task, data: ArmData, *, budget: Budget, seed: int | None) -> str:
    """Names a result: the budget, seed, training rows and evaluation set."""
    trained = asdict(budget)
    if trained["precision"] == "float32":  # the only precision before the option: keeps those results' names
        del trained["precision"]
    key = {
        "budget": trained if data.rows is not None else {"max_seq_length": budget.max_seq_length},
        "seed": seed,
        "rows": data.fingerprint,
        "test": sorted(task.test_queries),
        "corpus": len(task.test_corpus),
        **({"stages": data.info["stages"]} if "stages" in data.info else {}),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def result_path(task: Task, data: ArmData, *, budget: Budget, seed: int | None) -> Path:
    """Where a result is cached. Not keyed by arm: two arms with the same rows share it."""
    name = f"seed{seed}" if seed is not None else "untrained"
    return CACHE / "results" / task.name / f"{name}-{result_key(task, data, budget=budget, seed=seed)}.json"


def run_one(
    task: Task, data: ArmData, *, budget: Budget, seed: int | None, cached_only: bool = False
) -> dict[str, Any] | None:
    """Train (unless base) and evaluate one arm and seed; cached as JSON, reused when present.

    With `cached_only`, an (arm, seed) not cached yet is not run: None.
    """
    path = result_path(task, data, budget=budget, seed=seed)
    if path.exists():
        cached = json.loads(path.read_text())
        shared = {"same_rows_as": cached["arm"]} if cached["arm"] != data.arm else {}
        return {**cached, "arm": data.arm, "mined": data.info, **shared}
    if cached_only:
        logger.warning("%s %s seed %s: not run yet (--cached-only)", task.name, data.arm, seed)
        return None
    logger.info("%s %s seed %s: training on %s rows", task.name, data.arm, seed, data.info.get("rows", 0))
    start = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        if data.rows is None:
            model = fresh_model(budget)
        elif "stages" in data.info:
            model = train_stages(data.rows, data.info["stages"], budget=budget, seed=seed or 0, output_dir=tmp)
        else:
            model = train(data.rows, budget=budget, seed=seed or 0, output_dir=tmp)
    trained = time.perf_counter()
    evaluator = build_evaluator(task.test_queries, task.test_corpus, task.test_relevant)
    metrics = evaluate(model, evaluator)
    result = {
        "dataset": task.name,
        "arm": data.arm,
        "seed": seed,
        **metrics,
        "train_seconds": round(trained - start, 1),
        "eval_seconds": round(time.perf_counter() - trained, 1),
        "budget": asdict(budget),
        "test_queries": len(task.test_queries),
        "corpus": len(task.test_corpus),
        "mined": data.info,
        "rows_sha256": data.fingerprint,
        "environment": environment(),
    }
    _write_json(path, result)
    logger.info("%s %s seed %s: %s", task.name, data.arm, seed, metrics)
    return result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def environment() -> dict[str, Any]:
    """Device, threads and library versions of this process."""
    return records.environment()


# ---------------------------------------------------------------- report


def summarise(results: list[dict[str, Any]], metric: str) -> dict[str, float | int]:
    """Mean, sample standard deviation, min and max of `metric` over seeds."""
    values = [r[metric] for r in results]
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def paired_margin(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Per-seed differences ours − theirs (same seed), with their mean, min and max."""
    by_seed = {r["seed"]: r[metric] for r in theirs}
    diffs = [r[metric] - by_seed[r["seed"]] for r in ours if r["seed"] in by_seed]
    if not diffs:
        return None
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return {"n": len(diffs), "mean": statistics.fmean(diffs), "std": spread, "min": min(diffs), "max": max(diffs)}


def markdown_table(name: str, by_arm: dict[str, list[dict[str, Any]]], info: dict[str, dict[str, Any]]) -> str:
    """One dataset's table: per arm mean ± std (min–max) of nDCG@10 and recall@100."""
    lines = [
        f"**{name}**",
        "",
        "| arm | seeds | nDCG@10 | recall@100 | train rows | anchors | FN share of negatives |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, results in by_arm.items():
        if not results:
            continue
        cells = [_cell(summarise(results, m)) for m in ("ndcg@10", "recall@100")]
        mined = info.get(arm, {})
        fn = mined.get("false_negative_rate")
        no_curation = arm == "negminer-default" and mined.get("curation_ran") is False
        label = arm_label(arm, mined) + (" (the flow ran no curation)" if no_curation else "")
        lines.append(
            f"| {label} | {len(results)} | {cells[0]} | {cells[1]} | {mined.get('rows', '—')} | "
            f"{mined.get('anchors', '—')} | {'—' if fn is None else f'{100 * fn:.1f}%'} |"
        )
    lines += default_margins(by_arm, info)
    return "\n".join(lines + gain_over_base(by_arm))


def arm_label(arm: str, mined: dict[str, Any]) -> str:
    """The arm's name in the tables; the custom arm is named by its overrides."""
    return f"negminer with {mined['overrides']}" if mined.get("overrides") else ARM_LABELS[arm]


def default_margins(
    by_arm: dict[str, list[dict[str, Any]]], info: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """negminer default − each other trained arm, nDCG@10 paired by seed: mean, spread, per seed."""
    ours = by_arm.get("negminer-default", [])
    lines = []
    for arm, theirs in by_arm.items():
        margin = paired_margin(ours, theirs, "ndcg@10") if arm not in ("base", "negminer-default") else None
        if margin is None:
            continue
        if not lines:
            lines = [
                "",
                "| negminer default − | seeds | nDCG@10 mean | stdev | min | max |",
                "|---|---|---|---|---|---|",
            ]
        lines.append(
            f"| {arm_label(arm, (info or {}).get(arm, {}))} | {margin['n']} | {margin['mean']:+.4f} | "
            f"{margin['std']:.4f} | "
            f"{margin['min']:+.4f} | {margin['max']:+.4f} |"
        )
    return lines


def gain_over_base(by_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Each trained arm's mean nDCG@10 minus the base model's, and a note when none gains.

    When no arm improves on the untrained model, the budget (or the training pairs) does not
    let the data reward training at all, and differences between miners there say little.
    """
    base, trained = by_arm.get("base"), {arm: r for arm, r in by_arm.items() if arm != "base" and r}
    if not base or not trained:
        return []
    gains = {arm: summarise(r, "ndcg@10")["mean"] - base[0]["ndcg@10"] for arm, r in trained.items()}
    lines = ["", "mean nDCG@10 − base model: " + ", ".join(f"{ARM_LABELS[a]} {g:+.4f}" for a, g in gains.items())]
    if max(gains.values()) <= 0:
        lines.append("no trained arm beats the base model: at this budget training does not help on this set")
    return lines


def _cell(s: dict[str, float | int]) -> str:
    if s["n"] == 1:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['std']:.4f} ({s['min']:.4f}–{s['max']:.4f})"


# ---------------------------------------------------------------- main


def run_dataset(name: str, args: argparse.Namespace, budget: Budget) -> str:
    """Mine every arm once, then train and evaluate each (arm, seed) not cached yet."""
    task = load_task(
        name,
        max_positives=args.max_positives,
        max_test_queries=args.max_test_queries,
        max_test_corpus=args.max_test_corpus,
    )
    logger.info(
        "%s: %d train pairs, %d test queries, %d docs",
        name,
        task.pairs.num_rows,
        len(task.test_queries),
        len(task.test_corpus),
    )
    mining_model = _mining_model(args.arms, budget)
    by_arm: dict[str, list[dict[str, Any]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        try:
            data = build_arm(
                arm, task, budget=budget, mining_model=mining_model, overrides=parse_overrides(args.negminer_set)
            )
        except ArmSkipped as skip:
            logger.warning("%s %s: skipped: %s", name, arm, skip)
            continue
        info[arm] = data.info
        seeds = [None] if arm == "base" else args.seeds
        results = [run_one(task, data, budget=budget, seed=seed, cached_only=args.cached_only) for seed in seeds]
        by_arm[arm] = [result for result in results if result is not None]
    return markdown_table(name, by_arm, info)


def _mining_model(arms: list[str], budget: Budget) -> SentenceTransformer | None:
    """The base model at its default max_seq_length (what negminer mines with), for the ST arms."""
    if not any(arm.startswith("st-") for arm in arms):
        return None
    from negminer.mining.encoder import load_model

    return load_model(None, device=budget.device, max_seq_length=None)


def parse_overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["mine.search_depth=300", ...]`` as config sections (values parsed as YAML)."""
    import yaml

    sections: dict[str, dict[str, Any]] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise SystemExit(f"--negminer-set {setting!r}: expected SECTION.KEY=VALUE, e.g. mine.search_depth=300")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    return sections


def pick_budget(args: argparse.Namespace) -> Budget:
    """The device's default budget with the command line's overrides."""
    import torch

    device: Device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = BUDGETS[device]
    return Budget(
        steps=args.steps or defaults["steps"],
        batch_size=args.batch_size or defaults["batch_size"],
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        max_seq_length=args.max_seq_length,
        num_negatives=args.num_negatives,
        device=device,
        precision=args.precision,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument(
        "--arms", nargs="+", default=list(ARMS), choices=[*ARMS, "negminer-custom", "negminer-curriculum"]
    )
    parser.add_argument(
        "--negminer-set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config overrides for the negminer-custom arm (on top of the defaults), e.g. mine.search_depth=300",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, help="training steps (default: 240 on CPU, 1000 on a GPU)")
    parser.add_argument("--batch-size", type=int, help="default: 16 on CPU, 64 on a GPU")
    parser.add_argument("--learning-rate", type=float, default=_DEFAULTS.learning_rate)
    parser.add_argument("--warmup-ratio", type=float, default=_DEFAULTS.warmup_ratio)
    parser.add_argument("--max-seq-length", type=int, default=128, help="for training and evaluation")
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default=_DEFAULTS.precision,
        help="training arithmetic (bfloat16: mixed precision, about 1.4x faster on a CPU with AVX512-BF16)",
    )
    parser.add_argument("--num-negatives", type=int, default=1, help="per pair, for every mined arm")
    parser.add_argument("--max-positives", type=int, default=2, help="training positives per query")
    parser.add_argument("--max-test-queries", type=int, help="evaluate on the first N test queries (a quick check)")
    parser.add_argument("--max-test-corpus", type=int, help="evaluate against N documents (a quick check)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument(
        "--cached-only", action="store_true", help="report the cached results only; train nothing (arms are mined)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    budget = pick_budget(args)
    start = time.perf_counter()
    tables = [run_dataset(name, args, budget) for name in args.datasets]
    env = environment()
    print(
        f"device {env['device']}, torch threads {env['torch_threads']}; budget {asdict(budget)}; "
        f"seeds {args.seeds}; max positives per query {args.max_positives}; "
        f"wall {time.perf_counter() - start:.0f} s (cached results not re-run)\n"
    )
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
