"""Hidden-positives evaluation of negminer with curation (DESIGN.md protocol).

`run_negminer_curated` is `bench.false_negatives.run_negminer` with the curation stage
between search and select: it curates the prepared candidate table, then derives the
negatives exactly as the other arms do, so its row sits in the same table with the same
metrics (FN rate by text, coverage, hardness). An anchor whose given positive curation
excluded from training gets no negatives (as in a real run: no training rows), so coverage
counts it as uncovered. The hidden labels are used only to score.

`curate_prepared` curates a prepared protocol run (bench/curation_noise.py uses it on its own
pairs); `stored_vectors` fetches vectors from the benchmark store (bench/.cache/store).

Run: python -m bench.curation_eval [--dataset nfcorpus] [--split train] [--sweep]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bench.common import STORE
from negminer.config import CurateConfig, EmbedConfig
from negminer.curation import CurationResult, curate_candidates
from negminer.mining.embedder import store_key
from negminer.storage.embedding_store import EmbeddingStore
from negminer.textkeys import content_hashes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (label, MineConfig options, CurateConfig options or None for no curation)
ARMS: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
    ("naive", {"strategy": "naive"}, None),
    ("naive + curation", {"strategy": "naive"}, {}),
    ("positive-aware + curation", {"strategy": "positive-aware"}, {}),
    ("default (simans)", {}, None),
    ("default (simans) + curation", {}, {}),
]
SWEEP = [0.5, 0.3, 0.25, 0.2, 0.15]


def run_negminer_curated(
    prep,
    options: dict[str, Any],
    *,
    k: int,
    depth: int,
    curate_options: dict[str, Any] | None = None,
    curated: CurationResult | None = None,
) -> tuple[dict[str, list[str]], float, CurationResult]:
    """Negatives (query id -> texts) after curation, the seconds it took, and curation's result.

    Args:
        prep: a `bench.false_negatives.Prepared` (read, stored vectors, searched).
        options: MineConfig options, as in `bench.false_negatives.NEGMINER_ARMS`.
        k: negatives per anchor.
        depth: search depth.
        curate_options: CurateConfig options (default: the defaults).
        curated: a curation result of `prep` to select from instead of curating again (its
            seconds are not counted).

    Example:
        >>> negatives, seconds, result = run_negminer_curated(prep, {"strategy": "naive"}, k=5, depth=100)
        ...                                                    # doctest: +SKIP
    """
    from bench.false_negatives import run_negminer

    start = time.perf_counter()
    result = curated or curate_prepared(prep, CurateConfig(**(curate_options or {})))
    path = prep.work / "curated-candidates.parquet"  # run_negminer derives from the file, as refilter does
    pq.write_table(result.candidates, path)
    curated = dataclasses.replace(prep, tables={**prep.tables, "candidates": result.candidates}, candidates_path=path)
    negatives, _ = run_negminer(curated, options, k=k, depth=depth, noise=result.noise)
    for qid in excluded_anchor_ids(prep, result.excluded_pairs):
        negatives[qid] = []  # an excluded given positive leaves its anchor without training rows
    return negatives, time.perf_counter() - start, result


def excluded_anchor_ids(prep, excluded_pairs: np.ndarray) -> set[str]:
    """Anchor ids whose every given positive curation took out of training (their anchors get no rows)."""
    pairs = prep.tables["pairs"]
    anchor_id = prep.tables["anchors"].column("anchor_id").to_pylist()
    excluded = np.isin(pairs.column("pair_idx").to_numpy(), excluded_pairs)
    anchor = pairs.column("anchor_idx").to_numpy()
    left = set(anchor[~excluded].tolist())
    return {anchor_id[a] for a in set(anchor[excluded].tolist()) - left}


def curate_prepared(prep, config: CurateConfig) -> CurationResult:
    """curate_candidates on a `bench.false_negatives.Prepared` (its work folder holds the vectors)."""
    anchors = pq.read_table(prep.work / "anchors.parquet", columns=["anchor_id", "text"])
    docs = pq.read_table(prep.work / "docs.parquet", columns=["doc_id", "text"])
    return curate_candidates(
        prep.tables["candidates"],
        pairs=prep.tables["pairs"],
        anchor_vectors=np.load(prep.work / "anchors.npy"),
        doc_vectors=np.load(prep.work / "docs.npy"),
        anchor_texts=anchors.column("text").to_pylist(),
        doc_texts=docs.column("text").to_pylist(),
        config=config,
        anchor_ids=anchors.column("anchor_id").to_pylist(),
        doc_ids=docs.column("doc_id").to_pylist(),
    )


def stored_vectors(texts: list[str], store_root: Path = STORE) -> np.ndarray:
    """Vectors of `texts` from the benchmark store (all-MiniLM-L6-v2); raise if any is missing."""
    store = EmbeddingStore(store_root, model_fingerprint=store_key(EmbedConfig()), dim=384, dtype="float32")
    positions = store.lookup(content_hashes(texts))
    if (positions < 0).any():
        missing = int((positions < 0).sum())
        raise RuntimeError(f"{missing} texts are not in {store_root}; run python -m bench.warm_store")
    return store.fetch(positions)


def main(argv: list[str] | None = None) -> None:
    from bench.false_negatives import ST_ARMS, curation_target, evaluate, prepare, run_negminer, run_st
    from negminer.mining.encoder import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nfcorpus")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--search-depth", type=int, default=100)
    parser.add_argument("--sweep", action="store_true", help="also sweep false_negative_quantile (naive)")
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers' arms")
    parser.add_argument("--given", choices=["lowest", "random"], default="random", help="which relevant doc is given")
    parser.add_argument("--given-seed", type=int, default=0, help="seed of --given random")
    args = parser.parse_args(argv)
    k, depth = args.num_negatives, args.search_depth
    arms = list(ARMS) + (
        [(f"naive + curation q={q}", {"strategy": "naive"}, {"false_negative_quantile": q}) for q in SWEEP]
        if args.sweep
        else []
    )
    rows, negatives_of = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(args.dataset, args.split, Path(tmp), search_depth=depth, given=args.given, seed=args.given_seed)
        for label, options, curate_options in arms:
            if curate_options is None:
                negatives, seconds = run_negminer(prep, options, k=k, depth=depth)
                counts = {}
            else:
                negatives, seconds, result = run_negminer_curated(
                    prep, options, k=k, depth=depth, curate_options=curate_options
                )
                counts = result.counts
            negatives_of[label] = negatives
            rows.append((label, evaluate(prep, negatives, k=k), seconds, counts))
        if not args.no_st:
            model = load_model(None, device="cpu", max_seq_length=None)
            for label, options in ST_ARMS:
                negatives_of[label], seconds = run_st(prep, model, options, k=k)
                rows.append((label, evaluate(prep, negatives_of[label], k=k), seconds, {}))
        curated = [label for label, _, curate_options in arms if curate_options is not None]
        target = curation_target(prep, negatives_of, k=k, arms=curated)
    given = "lowest doc_id" if args.given == "lowest" else f"random, seed {args.given_seed}"
    print(f"\n## {args.dataset} {args.split} ({prep.pairs.num_rows} anchors, {k} negatives, given positive: {given})")
    print("| arm | FN rate | coverage | hardness | negatives | FN flags | FP flags | time s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, m, seconds, counts in rows:
        print(
            f"| {label} | {m['fn_rate']:.1%} | {m['coverage']:.1%} | {m['hardness']:.3f} | {m['negatives']} | "
            f"{counts.get('false_negative', '–')} | {counts.get('false_positive', '–')} | {seconds:.1f} |"
        )
    for line in target:
        print(line)


if __name__ == "__main__":
    main()
