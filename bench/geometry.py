"""Alignment and uniformity before and after fine-tuning on negminer's SciFact triplets.

Mines SciFact's train split with ``negminer mine`` at its defaults (the pairs and corpus of
bench/downstream.py: up to ``--max-positives`` relevant documents per query), then runs
``negminer.evaluate`` on the test split (300 queries, 5,183 documents): the base
all-MiniLM-L6-v2 and a copy fine-tuned on the version's triplets.parquet, each with nDCG@10
and Wang & Isola's alignment (over the test set's relevant pairs) and uniformity (over a
seeded sample of ``diagnostics.sample`` test queries and documents). It also prints the mined
version's own ``diagnostics`` (the base model on the train pairs, from the stored vectors).

Expected direction after contrastive fine-tuning: alignment down (positives closer) and
uniformity more negative (more spread).

Run: python -m bench.geometry [--steps 60] [--batch-size 16] [--seed 1] [--max-corpus N] [--version PATH]

``--version`` evaluates an already mined version instead of mining again; ``--max-corpus``
keeps the test queries' relevant documents plus the first others by id, N in all (a cheaper
evaluation: every query keeps all its relevant documents).
"""

from __future__ import annotations

import argparse
import json
import logging

from bench.common import SHARED_DATA
from bench.downstream import CACHE, load_task, run_negminer_mine

COLUMNS = ("ndcg@10", "alignment", "uniformity")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--batch-size", type=int, default=16, help="triplets per step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-positives", type=int, default=2, help="training positives per query")
    parser.add_argument("--max-corpus", type=int, help="test documents kept (default: all 5,183)")
    parser.add_argument("--version", help="a mined version to evaluate (default: mine SciFact train now)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import negminer

    if args.version:
        version = args.version
    else:
        task = load_task("scifact", max_positives=args.max_positives)
        version = run_negminer_mine(task, CACHE / "geometry" / "scifact", name="negminer-default", config={})
    manifest = negminer.open_version(version).manifest
    print(f"mined version {version}: diagnostics of the mining model on the train pairs")
    print(json.dumps({k: v for k, v in manifest["diagnostics"].items() if k != "histograms"}, indent=2))
    result = negminer.evaluate(
        SHARED_DATA / "scifact",
        train=version,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        max_corpus=args.max_corpus,
    )
    print(f"\n{result.record['retrieval_set']}: {args.steps} steps x {args.batch_size}, seed {args.seed}")
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for arm in result.arms:
        cells = [f"{arm.metrics[c]:.4f}" + (f" ({arm.delta[c]:+.4f})" if c in arm.delta else "") for c in COLUMNS]
        print(f"| {arm.arm} | " + " | ".join(cells) + " |")
    print(json.dumps(result.record["arms"], indent=2))


if __name__ == "__main__":
    main()
