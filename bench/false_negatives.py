"""False negatives, coverage, hardness and time of every strategy (hidden-positives protocol).

For each dataset: the queries of a split with >= 2 relevant documents get ONE of them as the
positive, the rest are hidden (bench/common.py); which one is drawn per query by a seeded hash
(``--given random``, the default; ``--given lowest``: the lowest doc id). negminer reads, embeds (from the benchmark
store, bench/.cache/store: run ``python -m bench.warm_store`` first) and searches once, then
derives every strategy from that one candidate table. sentence-transformers'
``mine_hard_negatives`` runs in the same process for its naive and ``relative_margin=0.05``
settings, with ``cache_folder=bench/.cache/st``: its first run ever embeds (that run's time is
printed as the "cold" row), later runs load the cached vectors.

The curated arms (issue 4) run curation with its defaults on the same candidate table before
their strategy; after the table, each is checked against issue 4's target (FN rate at most
half of ``relative_margin=0.05``'s, coverage >= 95%, hardness at least its) and shown on the
anchors that baseline covers.

Metrics, per arm: FN rate = share of mined negatives that are hidden relevant documents
(compared by text, so duplicate documents count); coverage = share of ALL anchors with all
``num_negatives`` negatives (an anchor whose given positive curation excluded has none);
positives excluded = share of given positives curation took out of training (every one is
relevant by the qrels, so each is a false alarm); ">=1" = share with at least one; hardness = mean cosine
anchor–negative under all-MiniLM-L6-v2 (the same vectors for every arm); time = seconds to
produce that arm's negatives from embedded vectors (negminer: read + store fetch + search +
select, + curate for the curated arms; "derive" = select alone, from the stored candidate
table, what ``refilter`` costs).
The embedding time E of the same texts is the same for both tools (same model, batch 32): it
is measured as sentence-transformers' cold minus warm time when its cache was cold, or with
``--measure-embedding`` (negminer into an empty store); "with E" = time + E.

The hybrid arms (``mine.sources: [dense, bm25]``) derive their strategy from a second search
of the same anchors whose candidates fuse the dense list with BM25's (reciprocal-rank fusion,
k=60, and score fusion); their time adds the BM25 index build and the fused search to the
shared line's read and store fetch.

Run: python -m bench.false_negatives [--datasets nfcorpus scifact] [--split train]
     [--num-negatives 5] [--search-depth 100] [--measure-embedding] [--given random]
     [--no-curation] [--no-st] [--no-hybrid]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import BENCH_CACHE, STORE, hidden_positive_inputs, load_retrieval_set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ST_CACHE = BENCH_CACHE / "st"
EMBED_TIMES = BENCH_CACHE / "embedding-seconds.json"

# (label, MineConfig options). Presets first, then variants that explain the choice of defaults.
NEGMINER_ARMS: list[tuple[str, dict[str, Any]]] = [
    ("naive", {"strategy": "naive"}),
    ("positive-aware", {"strategy": "positive-aware"}),
    ("semi-hard", {"strategy": "semi-hard"}),
    ("calibrated", {"strategy": "calibrated"}),
    ("simans (default without curation)", {"strategy": "simans"}),
    ("naive range_min=10", {"strategy": "naive", "range_min": 10}),
    ("naive range_min=20", {"strategy": "naive", "range_min": 20}),
    ("positive-aware, ST's window", {"strategy": "positive-aware", "range_max": "st"}),
    ("absolute_margin=0.05", {"strategy": "naive", "absolute_margin": 0.05}),
    ("semi-hard, top", {"strategy": "semi-hard", "sampling_strategy": "top"}),
    ("calibrated p50", {"strategy": "calibrated", "max_score_percentile": 50.0}),
    ("calibrated p90", {"strategy": "calibrated", "max_score_percentile": 90.0}),
    ("simans a=200 b=0", {"strategy": "simans", "simans_a": 200.0, "simans_b": 0.0}),
    ("simans a=20", {"strategy": "simans", "simans_a": 20.0}),
    ("random", {"strategy": "naive", "sampling_strategy": "random"}),
]
# Curated with CurateConfig() defaults, then the strategy: issue 4's arms.
CURATED_ARMS: list[tuple[str, dict[str, Any]]] = [
    ("auto (default) + curation", {}),  # naive or simans, from curation's noise estimate
    ("simans + curation", {"strategy": "simans"}),
    ("naive + curation", {"strategy": "naive"}),
]
# (label, fusion, MineConfig options, curated): arms over the fused dense + BM25 candidates.
HYBRID_ARMS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("naive, dense+bm25 rrf", "rrf", {"strategy": "naive"}, False),
    ("positive-aware, dense+bm25 rrf", "rrf", {"strategy": "positive-aware"}, False),
    ("simans, dense+bm25 rrf", "rrf", {"strategy": "simans"}, False),
    ("simans, dense+bm25 score", "score", {"strategy": "simans"}, False),
    ("simans + curation, dense+bm25 rrf", "rrf", {"strategy": "simans"}, True),
    ("naive + curation, dense+bm25 rrf", "rrf", {"strategy": "naive"}, True),
]
TARGET_BASELINE = "ST relative_margin=0.05"
ST_ARMS: list[tuple[str, dict[str, Any]]] = [
    ("ST naive", {}),
    ("ST relative_margin=0.05", {"relative_margin": 0.05}),
]


@dataclass
class Prepared:
    name: str
    pairs: pa.Table  # anchor_id, anchor, positive_id, positive (one given positive per query)
    corpus: pa.Table
    hidden: dict[str, set[str]]  # anchor_id -> hidden relevant doc ids
    work: Path
    tables: dict[str, pa.Table] = field(default_factory=dict)
    candidates_path: Path | None = None  # the search's candidate file (tables["candidates"] read)
    seconds: dict[str, float] = field(default_factory=dict)
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> text -> vector


@dataclass(frozen=True)
class Row:
    dataset: str
    arm: str
    fn_rate: float
    coverage: float
    any_negative: float
    hardness: float
    negatives: int
    seconds: float
    derive: float | None
    excluded: float | None = None  # share of given positives curation took out of training


def prepare(
    name: str, split: str, folder: Path, *, search_depth: int, given: str = "lowest", seed: int = 0
) -> Prepared:
    """Write the protocol's inputs, then read, fetch vectors from the store and search once."""
    pairs, corpus, hidden = hidden_positive_inputs(load_retrieval_set(name, split), given=given, seed=seed)
    return prepare_pairs(name, pairs, corpus, hidden, folder, search_depth=search_depth)


def prepare_pairs(
    name: str, pairs: pa.Table, corpus: pa.Table, hidden: dict[str, set[str]], folder: Path, *, search_depth: int
) -> Prepared:
    """Write pairs and corpus into `folder`, then read, fetch vectors from the store and search once.

    Args:
        pairs: anchor_id, anchor, positive_id, positive. corpus: id, title, text.
        hidden: anchor_id -> hidden relevant doc ids (empty where nothing is hidden).
    """
    from negminer import stages
    from negminer.config import PipelineConfig

    pq.write_table(pairs, folder / "pairs.parquet")
    pq.write_table(corpus, folder / "corpus.parquet")
    prep = Prepared(name, pairs, corpus, hidden, folder / "work")
    config = PipelineConfig.from_dict({"mine": {"search_depth": search_depth}})
    timed = _timer(prep.seconds)
    with timed("read"):
        stages.read_stage(folder / "pairs.parquet", folder / "corpus.parquet", prep.work, config=config.input)
    with timed("store"):
        embed = stages.embed_stage(prep.work, config=config.embed, store_root=STORE)
    new = sum(counts.embedded for counts in embed.embedding.values())
    if new:
        print(f"  note: {new} texts were not in the benchmark store and were embedded now")
    with timed("search"):
        search = stages.search_stage(prep.work, config=config.mine, index_config=config.index)
    prep.candidates_path = Path(search.candidates)
    prep.tables = {
        "candidates": pq.read_table(search.candidates),
        "anchors": pq.read_table(prep.work / "anchors.parquet", columns=["anchor_id", "text"]),
        "docs": pq.read_table(prep.work / "docs.parquet", columns=["doc_id", "text", "text_key"]),
        "pairs": pq.read_table(prep.work / "pairs.parquet"),
    }
    return prep


class _timer:
    def __init__(self, into: dict[str, float]) -> None:
        self.into = into

    def __call__(self, key: str) -> _timer:
        self.key = key
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.into[self.key] = time.perf_counter() - self.start


def st_range_max(num_negatives: int, pairs: pa.Table) -> int:
    """Raw depth sentence-transformers searches with a filter set and no range_max."""
    max_positives = max(Counter(pairs.column("anchor").to_pylist()).values())
    return 10 * num_negatives + 2 * max_positives


def run_negminer(
    prep: Prepared, options: dict[str, Any], *, k: int, depth: int, noise: dict[str, Any] | None = None
) -> tuple[dict, float]:
    """query id -> negative texts in slot order, and the seconds the selection took.

    The selection is ``derive_files`` over the stored candidate file, as ``refilter`` runs it:
    the seconds include reading the candidates and writing the candidate table and views.
    `noise` is curation's estimate, which ``strategy: auto`` (the default) chooses from.
    """
    from negminer.config import MineConfig
    from negminer.mining.auto_strategy import resolve_strategy
    from negminer.mining.streaming import derive_files

    options = dict(options)
    if options.get("range_max") == "st":
        options["range_max"] = st_range_max(k, prep.pairs)
    config = resolve_strategy(MineConfig(num_negatives=k, search_depth=depth, **options), noise)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        derived = derive_files(
            prep.candidates_path,
            {stem: Path(tmp) / f"{stem}.parquet" for stem in ("candidates", "triplets")},
            **_inputs(prep),
            config=config,
        )
        seconds = time.perf_counter() - start
        published = pq.read_table(derived.paths["candidates"])
    chosen = published.filter(pc.is_valid(published.column("negative_slot")))
    return _negatives_by_text(chosen, prep), seconds


def hybrid_prepared(prep: Prepared, *, depth: int, fusion: str) -> tuple[Prepared, float, dict[str, Any]]:
    """`prep` with the candidates of a dense + BM25 search (same work folder, vectors and anchors),
    the seconds the BM25 index and the fused search took, and the search's ``sources`` entry."""
    from negminer import stages
    from negminer.config import PipelineConfig

    mine = {"search_depth": depth, "sources": ["dense", "bm25"], "fusion": fusion}
    config = PipelineConfig.from_dict({"mine": mine})
    start = time.perf_counter()
    search = stages.search_stage(prep.work, config=config.mine.retrieval, index_config=config.index)
    seconds = time.perf_counter() - start
    tables = {**prep.tables, "candidates": pq.read_table(search.candidates)}
    return dataclasses.replace(prep, tables=tables, candidates_path=Path(search.candidates)), seconds, search.sources


def _hybrid_rows(
    prep: Prepared, args: argparse.Namespace, negatives_of: dict[str, dict[str, list[str]]], notes: dict[str, Any]
) -> list[Row]:
    """The hybrid arms: each fusion searched once, every arm derived from its candidates."""
    from bench.curation_eval import run_negminer_curated

    k, depth = args.num_negatives, args.search_depth
    shared = prep.seconds["read"] + prep.seconds["store"]
    searched: dict[str, tuple[Prepared, float]] = {}
    rows = []
    for label, fusion, options, curated in HYBRID_ARMS:
        if curated and args.no_curation:
            continue
        if fusion not in searched:
            hybrid, seconds, sources = hybrid_prepared(prep, depth=depth, fusion=fusion)
            searched[fusion] = (hybrid, seconds)
            notes.setdefault("hybrid", {})[fusion] = {
                "seconds": seconds,
                "rows_by_source": sources["rows_by_source"],
                "hidden_by_source": hidden_by_source(hybrid),
            }
        hybrid, search_seconds = searched[fusion]
        if curated:
            negatives_of[label], seconds, result = run_negminer_curated(hybrid, options, k=k, depth=depth)
            excluded = len(result.excluded_pairs) / prep.pairs.num_rows
            metrics = evaluate(prep, negatives_of[label], k=k)
            rows.append(
                Row(
                    prep.name,
                    label,
                    **metrics,
                    seconds=shared + search_seconds + seconds,
                    derive=None,
                    excluded=excluded,
                )
            )
            continue
        negatives_of[label], seconds = run_negminer(hybrid, options, k=k, depth=depth)
        metrics = evaluate(prep, negatives_of[label], k=k)
        rows.append(Row(prep.name, label, **metrics, seconds=shared + search_seconds + seconds, derive=seconds))
    return rows


def hidden_by_source(prep: Prepared) -> dict[str, tuple[int, float]]:
    """Per value of the candidates' ``source``: non-positive candidate rows, and the share of them
    that are hidden relevant documents (by text, as the FN rate counts them)."""
    candidates = prep.tables["candidates"].filter(pc.invert(prep.tables["candidates"].column("is_positive")))
    anchor_id = prep.tables["anchors"].column("anchor_id").to_pylist()
    doc_text = prep.tables["docs"].column("text").to_pylist()
    corpus_text = dict(zip(prep.corpus.column("id").to_pylist(), prep.corpus.column("text").to_pylist(), strict=True))
    hidden = {qid: {corpus_text[d] for d in docs} for qid, docs in prep.hidden.items()}
    rows: Counter[str] = Counter()
    found: Counter[str] = Counter()
    columns = (candidates.column(c).to_pylist() for c in ("anchor_idx", "doc_idx", "source"))
    for a, d, source in zip(*columns, strict=True):
        rows[source] += 1
        found[source] += doc_text[d] in hidden.get(anchor_id[a], ())
    return {source: (rows[source], found[source] / rows[source]) for source in sorted(rows)}


def _inputs(prep: Prepared) -> dict[str, pa.Table]:
    return {key: prep.tables[key] for key in ("anchors", "docs", "pairs")}


def _negatives_by_text(chosen: pa.Table, prep: Prepared) -> dict[str, list[str]]:
    """anchor id (the query id) -> negative texts in slot order."""
    anchor_id = prep.tables["anchors"].column("anchor_id").to_pylist()
    doc_text = prep.tables["docs"].column("text").to_pylist()
    order = np.lexsort((chosen.column("negative_slot").to_numpy(), chosen.column("anchor_idx").to_numpy()))
    anchors = chosen.column("anchor_idx").to_numpy()[order]
    docs = chosen.column("doc_idx").to_numpy()[order]
    out: dict[str, list[str]] = {}
    for a, d in zip(anchors.tolist(), docs.tolist(), strict=True):
        out.setdefault(anchor_id[a], []).append(doc_text[d])
    return out


def run_st(prep: Prepared, model, options: dict[str, Any], *, k: int) -> tuple[dict, float]:
    """sentence-transformers' negatives (query id -> texts) and its wall time.

    It merges queries with equal texts into one query (their positives pooled), so each
    such query id gets the merged query's negatives.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    dataset = Dataset.from_dict(
        {"anchor": prep.pairs.column("anchor").to_pylist(), "positive": prep.pairs.column("positive").to_pylist()}
    )
    start = time.perf_counter()
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=prep.corpus.column("text").to_pylist(),
        num_negatives=k,
        sampling_strategy="top",
        use_faiss=True,
        batch_size=32,
        cache_folder=str(ST_CACHE / prep.name),
        verbose=False,
        output_format="triplet",
        **options,
    )
    seconds = time.perf_counter() - start
    by_text: dict[str, list[str]] = {}
    for anchor, negative in zip(mined["anchor"], mined["negative"], strict=True):
        negatives = by_text.setdefault(anchor, [])
        if negative not in negatives:  # one row per (positive, negative): keep each once
            negatives.append(negative)
    queries = zip(prep.pairs.column("anchor_id").to_pylist(), prep.pairs.column("anchor").to_pylist(), strict=True)
    return {qid: by_text.get(text, []) for qid, text in queries}, seconds


def evaluate(
    prep: Prepared, negatives: dict[str, list[str]], *, k: int, queries: set[str] | None = None
) -> dict[str, float]:
    """FN rate, coverage, share with any negative, hardness and count over the protocol's queries.

    Args:
        negatives: query id -> mined negative texts.
        queries: only these query ids (coverage is then a share of them); default all.
    """
    doc_text = dict(zip(prep.corpus.column("id").to_pylist(), prep.corpus.column("text").to_pylist(), strict=True))
    vectors = _vector_lookup(prep)
    fn = total = full = some = 0
    cosines: list[float] = []
    vectors_of = {
        qid: vectors["anchor"][text]
        for qid, text in zip(
            prep.pairs.column("anchor_id").to_pylist(), prep.pairs.column("anchor").to_pylist(), strict=True
        )
    }
    if queries is not None:
        vectors_of = {qid: vector for qid, vector in vectors_of.items() if qid in queries}
    for qid, anchor_vector in vectors_of.items():
        mined = negatives.get(qid, [])
        hidden = {doc_text[d] for d in prep.hidden[qid]}
        fn += sum(text in hidden for text in mined)
        total += len(mined)
        full += len(mined) >= k
        some += len(mined) > 0
        cosines += [float(anchor_vector @ vectors["doc"][text]) for text in mined]
    n = len(vectors_of)
    return {
        "fn_rate": fn / total if total else float("nan"),
        "coverage": full / n,
        "any_negative": some / n,
        "hardness": float(np.mean(cosines)) if cosines else float("nan"),
        "negatives": total,
    }


def _vector_lookup(prep: Prepared) -> dict[str, dict[str, np.ndarray]]:
    if not prep.vectors:
        for kind, stem in (("anchor", "anchors"), ("doc", "docs")):
            vectors = np.load(prep.work / f"{stem}.npy")
            texts = prep.tables[stem].column("text").to_pylist()
            prep.vectors[kind] = {text: vectors[i] for i, text in enumerate(texts)}
    return prep.vectors


def measure_embedding(prep: Prepared) -> float:
    """negminer's cold embedding of this run's anchors and docs into an empty store."""
    from negminer.mining.embedding import embed_to_file
    from negminer.mining.encoder import embedding_dimension, load_model
    from negminer.storage.embedding_store import EmbeddingStore

    model = load_model(None, device="cpu", max_seq_length=None)
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore(tmp, model_fingerprint="cold", dim=embedding_dimension(model), dtype="float32")
        start = time.perf_counter()
        for stem in ("anchors", "docs"):
            texts = prep.tables[stem].column("text").to_pylist()
            embed_to_file(
                texts,
                Path(tmp) / f"{stem}.npy",
                model=model,
                store=store,
                batch_size=32,
                chunk_size=4096,
                processes=1,
                precision="float32",
            )
        return time.perf_counter() - start


def extra_curated_arms(settings: list[list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """``--curated`` arms: (label, mine options), the options parsed as YAML values."""
    import yaml

    arms = []
    for items in settings:
        options = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in items)}
        arms.append((", ".join(items) + " + curation", options))
    return arms


def bench_dataset(name: str, args: argparse.Namespace, model) -> tuple[list[Row], dict[str, Any]]:
    k, depth = args.num_negatives, args.search_depth
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(name, args.split, Path(tmp), search_depth=depth, given=args.given, seed=args.given_seed)
        shared = sum(prep.seconds.values())
        rows, notes = [], {"anchors": prep.pairs.num_rows, "docs": prep.corpus.num_rows, **prep.seconds}
        negatives_of: dict[str, dict[str, list[str]]] = {}
        for label, options in NEGMINER_ARMS:
            negatives_of[label], seconds = run_negminer(prep, options, k=k, depth=depth)
            metrics = evaluate(prep, negatives_of[label], k=k)
            rows.append(Row(name, label, **metrics, seconds=shared + seconds, derive=seconds))
        for label, options in [*CURATED_ARMS, *extra_curated_arms(args.curated)] if not args.no_curation else []:
            from bench.curation_eval import run_negminer_curated

            negatives_of[label], seconds, result = run_negminer_curated(prep, options, k=k, depth=depth)
            metrics = evaluate(prep, negatives_of[label], k=k)
            excluded = len(result.excluded_pairs) / prep.pairs.num_rows
            rows.append(Row(name, label, **metrics, seconds=shared + seconds, derive=None, excluded=excluded))
            notes.setdefault("curation_counts", {})[label] = result.counts
            notes["noise"] = result.noise
        if not args.no_hybrid:
            rows += _hybrid_rows(prep, args, negatives_of, notes)
        st_was_cold = not (ST_CACHE / name).exists()
        for label, options in ST_ARMS if not args.no_st else []:
            negatives, seconds = run_st(prep, model, options, k=k)
            if st_was_cold and "st_cold" not in notes:
                notes["st_cold"] = seconds
                negatives, seconds = run_st(prep, model, options, k=k)
                notes["embedding"] = notes["st_cold"] - seconds
                notes["embedding_from"] = "sentence-transformers cold - warm"
            negatives_of[label] = negatives
            rows.append(Row(name, label, **evaluate(prep, negatives, k=k), seconds=seconds, derive=None))
        notes["target"] = curation_target(prep, negatives_of, k=k, arms=[label for label, _ in CURATED_ARMS])
        if args.measure_embedding:
            notes["embedding"] = measure_embedding(prep)
            notes["embedding_from"] = "negminer, empty store"
    return rows, notes


def curation_target(
    prep: Prepared, negatives_of: dict[str, dict[str, list[str]]], *, k: int, arms: list[str]
) -> list[str]:
    """Issue 4's check of each curated arm against sentence-transformers' relative_margin=0.05.

    The target: FN rate at most half the baseline's, coverage >= 95%, hardness at least the
    baseline's. The baseline's hardness is a mean over the anchors it covers, so each arm is
    also shown on those anchors alone (like for like).
    """
    baseline = negatives_of.get(TARGET_BASELINE)
    arms = [label for label in arms if label in negatives_of]
    if baseline is None or not arms:
        return []
    base = evaluate(prep, baseline, k=k)
    covered = {qid for qid, texts in baseline.items() if len(texts) >= k}
    base_covered = evaluate(prep, baseline, k=k, queries=covered)
    lines = [
        f"issue 4 target: FN <= {base['fn_rate'] / 2:.2%} (half of {TARGET_BASELINE}'s {base['fn_rate']:.2%}), "
        f"coverage >= 95%, hardness >= {base['hardness']:.4f}"
    ]
    for label in arms:
        m = evaluate(prep, negatives_of[label], k=k)
        checks = {
            "FN rate": m["fn_rate"] <= base["fn_rate"] / 2,
            "coverage": m["coverage"] >= 0.95,
            "hardness": m["hardness"] >= base["hardness"],
        }
        missed = [check for check, ok in checks.items() if not ok]
        same = evaluate(prep, negatives_of[label], k=k, queries=covered)
        lines += [
            f"  {label}: FN {m['fn_rate']:.2%}, coverage {m['coverage']:.1%}, hardness {m['hardness']:.4f}: "
            + ("met" if not missed else f"missed ({', '.join(missed)})"),
            f"    on the {len(covered)} anchors {TARGET_BASELINE} covers: FN {same['fn_rate']:.2%} vs "
            f"{base_covered['fn_rate']:.2%}, hardness {same['hardness']:.4f} vs {base_covered['hardness']:.4f}",
        ]
    return lines


def _embedding_seconds(name: str, notes: dict[str, Any]) -> float | None:
    """This run's measured embedding time, else the last one recorded for the dataset."""
    recorded = json.loads(EMBED_TIMES.read_text()) if EMBED_TIMES.exists() else {}
    if "embedding" in notes:
        recorded[name] = {"seconds": notes["embedding"], "from": notes["embedding_from"]}
        EMBED_TIMES.parent.mkdir(parents=True, exist_ok=True)
        EMBED_TIMES.write_text(json.dumps(recorded, indent=2))
    entry = recorded.get(name)
    if entry:
        notes.setdefault("embedding", entry["seconds"])
        notes.setdefault("embedding_from", f"{entry['from']} (recorded by an earlier run)")
    return entry["seconds"] if entry else None


def print_table(name: str, rows: list[Row], notes: dict[str, Any], k: int) -> None:
    embedding = _embedding_seconds(name, notes)
    print(f"\n## {name} ({notes['anchors']} anchors, {notes['docs']} docs, {k} negatives)")
    print(
        f"shared by negminer arms: read {notes['read']:.2f} s, store fetch {notes['store']:.2f} s, "
        f"search {notes['search']:.2f} s"
    )
    if embedding is not None:
        print(f"embedding E = {embedding:.1f} s ({notes['embedding_from']})")
    if "st_cold" in notes:
        print(f"sentence-transformers cold (embeds + mines): {notes['st_cold']:.1f} s")
    print(
        "| arm | FN rate | coverage | >=1 neg | hardness | negatives | positives excluded | time s | with E s "
        "| derive s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        with_e = f"{r.seconds + embedding:.1f}" if embedding is not None else "n/a"
        derive = f"{r.derive:.3f}" if r.derive is not None else "–"
        excluded = f"{r.excluded:.1%}" if r.excluded is not None else "–"
        print(
            f"| {r.arm} | {r.fn_rate:.1%} | {r.coverage:.1%} | {r.any_negative:.1%} | {r.hardness:.3f} | "
            f"{r.negatives} | {excluded} | {r.seconds:.2f} | {with_e} | {derive} |"
        )
    for fusion, entry in notes.get("hybrid", {}).items():
        print(
            f"dense+bm25 ({fusion} fusion): BM25 index + fused search {entry['seconds']:.2f} s; "
            f"candidate rows by source {entry['rows_by_source']}"
        )
        shares = ", ".join(f"{s} {share:.1%} of {n}" for s, (n, share) in entry["hidden_by_source"].items())
        print(f"  hidden relevant among the non-positive candidates, by source: {shares}")
    for label, counts in notes.get("curation_counts", {}).items():
        print(
            f"{label}: given positives flagged false_positive {counts['false_positive']}, kept "
            f"{counts['false_positive_kept']}, excluded {counts['false_positive_excluded']}"
        )
    if notes.get("noise"):
        from negminer.config import MineConfig
        from negminer.mining.auto_strategy import auto_choice

        choice = auto_choice(MineConfig(), notes["noise"])
        print(
            f"curation's noise.negatives_relevant {notes['noise'].get('negatives_relevant')}: "
            f"strategy auto chose {choice['chosen']} ({choice['reason']})"
        )
    for line in notes.get("target", []):
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["nfcorpus", "scifact"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--search-depth", type=int, default=100)
    parser.add_argument("--measure-embedding", action="store_true")
    parser.add_argument("--given", choices=["lowest", "random"], default="random", help="which relevant doc is given")
    parser.add_argument("--given-seed", type=int, default=0, help="seed of --given random")
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers' arms")
    parser.add_argument("--no-curation", action="store_true", help="skip the curated arms (issue 4)")
    parser.add_argument("--no-hybrid", action="store_true", help="skip the dense + BM25 arms")
    parser.add_argument(
        "--curated",
        nargs="+",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more curated arm with these mine options (YAML values), e.g. --curated simans_b=-0.05; repeatable",
    )
    args = parser.parse_args(argv)
    import torch

    from negminer.mining.encoder import load_model

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    model = load_model(None, device="cpu", max_seq_length=None)
    for name in args.datasets:
        rows, notes = bench_dataset(name, args, model)
        print_table(name, rows, notes, args.num_negatives)


if __name__ == "__main__":
    main()
