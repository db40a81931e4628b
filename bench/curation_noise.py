"""Planted wrong positives on SciFact: does curation flag them as `false_positive`?

Every SciFact query's relevant abstracts are its positives (a query with two relevant
abstracts has two pairs). A seeded 10% of the pairs get a random abstract instead of the
relevant one ("random" swaps) and another 10% the best-ranked abstract that is not relevant
to the query under all-MiniLM-L6-v2 ("close" swaps: topically close, the hardest wrong positive
there is for a detector that sees the same embeddings). negminer then searches and curates as
the pipeline does (vectors from the benchmark store, bench/.cache/store) and we count, per kind
of swap, how many of the planted pairs are flagged `false_positive`, and how many are excluded
from training (the confident flags, `false_positive_confidence`):

* recall = planted pairs of the kind that are flagged / planted pairs of the kind;
* precision = flagged planted pairs of the kind / flagged pairs among that kind and the clean
  pairs (the other kind of swap is left out, so each kind is scored on its own);
* AUC = how well curation's label-quality score ranks that kind below the clean pairs.

With ``--judge`` a cross-encoder is fine-tuned on the noisy pairs themselves (bench/judge.py's
recipe: the given pairs against candidates at ranks 30-100 and random documents) and passed to
curation as ``curate.cross_encoder``; curation then judges ``--judge-max-rank`` candidates and
``--judge-tail-samples`` random documents per anchor (the cross-encoder's cost on a CPU), and
the same curation without the judge is scored first for comparison.

Run: python -m bench.curation_noise [--splits train test] [--rate 0.1] [--seed 0] [--curate KEY=VALUE ...]
     [--judge [--judge-max-rank 30] [--judge-tail-samples 10]]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import load_retrieval_set
from bench.curation_eval import curate_prepared, stored_vectors
from bench.false_negatives import Prepared, prepare_pairs
from negminer.config import CurateConfig
from negminer.mining.strategies import pair_priority, stable_hash64


def relevant_pairs(splits: list[str]) -> tuple[pa.Table, pa.Table, dict[str, set[str]]]:
    """(pairs, corpus, qrels) with one pair per (query, relevant abstract) of `splits`."""
    rows, qrels, corpus = [], {}, None
    for split in splits:
        data = load_retrieval_set("scifact", split)
        corpus = data.corpus
        text = dict(
            zip(data.queries.column("query_id").to_pylist(), data.queries.column("text").to_pylist(), strict=True)
        )
        for qid, docs in sorted(data.qrels.items()):
            qrels[qid] = set(docs)
            rows += [{"anchor_id": qid, "anchor": text[qid], "positive_id": d} for d in sorted(docs)]
    pool = pa.table({"id": corpus.column("doc_id"), "title": corpus.column("title"), "text": corpus.column("text")})
    return pa.Table.from_pylist(rows), pool, qrels


def plant_noise(
    pairs: pa.Table, corpus: pa.Table, qrels: dict[str, set[str]], *, rate: float, seed: int
) -> tuple[pa.Table, np.ndarray]:
    """Swap `rate` of the positives for random abstracts and `rate` for close wrong ones.

    Returns:
        (pairs with a ``positive`` text column, kind per pair: "clean", "random" or "close").
    """
    n = pairs.num_rows
    keys = [
        f"{a}|{d}"
        for a, d in zip(pairs.column("anchor_id").to_pylist(), pairs.column("positive_id").to_pylist(), strict=True)
    ]
    draw = pair_priority(stable_hash64(keys), np.zeros(n, np.uint64), seed)
    order = np.argsort(draw, kind="stable")
    kind = np.full(n, "clean", dtype=object)
    kind[order[: round(rate * n)]] = "random"
    kind[order[round(rate * n) : 2 * round(rate * n)]] = "close"
    doc_ids = corpus.column("id").to_pylist()
    closest = _closest_wrong(pairs, corpus, qrels)
    positive = pairs.column("positive_id").to_pylist()
    for i in np.nonzero(kind == "random")[0]:
        pick = int(draw[i] % np.uint64(len(doc_ids)))
        while doc_ids[pick] in qrels[pairs.column("anchor_id")[i].as_py()]:
            pick = (pick + 1) % len(doc_ids)
        positive[i] = doc_ids[pick]
    for i in np.nonzero(kind == "close")[0]:
        positive[i] = closest[pairs.column("anchor_id")[i].as_py()]
    text = dict(zip(doc_ids, corpus.column("text").to_pylist(), strict=True))
    out = pairs.set_column(2, "positive_id", pa.array(positive, pa.string()))
    return out.append_column("positive", pa.array([text[d] for d in positive], pa.string())), kind


def _closest_wrong(pairs: pa.Table, corpus: pa.Table, qrels: dict[str, set[str]]) -> dict[str, str]:
    """Query id -> the abstract with the highest cosine to the query that is not relevant."""
    queries = dict(zip(pairs.column("anchor_id").to_pylist(), pairs.column("anchor").to_pylist(), strict=True))
    qids = sorted(queries)
    scores = stored_vectors([queries[q] for q in qids]) @ stored_vectors(corpus.column("text").to_pylist()).T
    doc_ids = np.asarray(corpus.column("id").to_pylist(), dtype=object)
    out = {}
    for row, qid in enumerate(qids):
        ranked = doc_ids[np.argsort(-scores[row], kind="stable")[:50]]
        out[qid] = next(d for d in ranked if d not in qrels[qid])
    return out


def score_flags(prep: Prepared, flagged_pairs: np.ndarray, quality: np.ndarray, kind: np.ndarray) -> dict:
    """Precision, recall and AUC of the false_positive flags for each kind of swap."""
    from sklearn.metrics import roc_auc_score

    source = prep.tables["pairs"].column("source_row").to_numpy()
    pair_kind = kind[source - 1]  # source_row is 1-based
    flagged = np.isin(prep.tables["pairs"].column("pair_idx").to_numpy(), flagged_pairs)
    out = {}
    for name in ("random", "close"):
        scope = (pair_kind == name) | (pair_kind == "clean")
        hit = flagged & (pair_kind == name)
        out[name] = {
            "planted": int(np.sum(pair_kind == name)),
            "flagged": int(hit.sum()),
            "recall": float(hit.sum() / max(np.sum(pair_kind == name), 1)),
            "precision": float(hit.sum() / max(np.sum(flagged & scope), 1)),
            "auc": float(roc_auc_score(pair_kind[scope] == name, -quality[scope])),
        }
    clean = pair_kind == "clean"
    out["clean"] = {"pairs": int(clean.sum()), "flagged": int(np.sum(flagged & clean))}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curate", nargs="*", default=[], help="CurateConfig options as KEY=VALUE (YAML values)")
    parser.add_argument("--judge", action="store_true", help="also curate with a fine-tuned cross-encoder")
    parser.add_argument("--judge-max-rank", type=int, default=30, help="curate.max_rank of both --judge runs")
    parser.add_argument("--judge-tail-samples", type=int, default=10, help="curate.tail_samples of both --judge runs")
    args = parser.parse_args(argv)
    import yaml

    config = CurateConfig(**{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.curate)})
    if args.judge:
        config = config.model_copy(update={"max_rank": args.judge_max_rank, "tail_samples": args.judge_tail_samples})
    pairs, corpus, qrels = relevant_pairs(args.splits)
    noisy, kind = plant_noise(pairs, corpus, qrels, rate=args.rate, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare_pairs("scifact", noisy, corpus, {}, Path(tmp), search_depth=CurateConfig().max_rank)
        report(prep, config, kind, args, label="")
        if args.judge:
            from bench.judge import fine_tune_judge, judge_parser

            training = fine_tune_judge(prep, Path(tmp) / "judge", judge_parser().parse_args([]))
            print(f"\njudge: {training['examples']} examples, trained in {training['seconds']:.0f} s")
            judged = config.model_copy(update={"cross_encoder": str(Path(tmp) / "judge" / "judge")})
            report(prep, judged, kind, args, label=" + fine-tuned judge")


def report(prep: Prepared, config: CurateConfig, kind: np.ndarray, args: argparse.Namespace, *, label: str) -> None:
    """Curate the prepared pairs with `config`; print recall, precision and AUC per kind of swap."""
    start = time.perf_counter()
    result = curate_prepared(prep, config)
    seconds = time.perf_counter() - start
    quality = np.ones(prep.tables["pairs"].num_rows)
    quality[result.pair_scores.column("pair_idx").to_numpy()] = result.pair_scores.column("quality").to_numpy()
    print(
        f"\nscifact {'+'.join(args.splits)}{label}: {prep.tables['pairs'].num_rows} pairs, "
        f"{prep.tables['anchors'].num_rows} anchors, {args.rate:.0%} random + {args.rate:.0%} close swaps, "
        f"curation {seconds:.1f}s (max_rank {config.max_rank}, tail_samples {config.tail_samples})"
    )
    verdicts = [
        ("flagged false_positive", result.false_positive_pairs),
        ("excluded (confident)", result.excluded_pairs),
    ]
    for verdict, chosen in verdicts:
        scores = score_flags(prep, chosen, quality, kind)
        print(f"\n{verdict}:")
        print(f"{'swap':8} {'planted':>8} {'hits':>8} {'precision':>10} {'recall':>8} {'AUC':>6}")
        for name in ("random", "close"):
            s = scores[name]
            print(
                f"{name:8} {s['planted']:8d} {s['flagged']:8d} {s['precision']:10.3f} {s['recall']:8.3f} "
                f"{s['auc']:6.3f}"
            )
        print(f"clean pairs {verdict}: {scores['clean']['flagged']} of {scores['clean']['pairs']}")
    print("noise estimates:", {k: v for k, v in result.noise.items() if k != "confident_joint"})


if __name__ == "__main__":
    main()
