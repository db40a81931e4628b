"""A stronger relevance judge for curation: a cross-encoder fine-tuned on the run's own pairs.

RocketQA's denoised hard negatives, with nothing but the local embedding model: a
cross-encoder is initialised from the transformer weights of all-MiniLM-L6-v2 (a fresh
one-logit head), fine-tuned with binary cross-entropy on the run's given (anchor, positive)
pairs against negatives drawn from each anchor's own candidates at ranks ``--negative-ranks``
(deep enough that few are unlabelled positives) plus random corpus documents, then passed to
curation as ``curate.cross_encoder`` (its score becomes one more feature of the judge). The
hidden labels of the protocol are used only to score.

For each dataset, hidden-positives protocol of bench/false_negatives.py (train split, one
given positive per query drawn by a seeded hash, the others hidden): the curated arms with
the default features and with the fine-tuned cross-encoder, side by side: FN rate, coverage
of all anchors, hardness, share of given positives excluded, and the judge's cost (training
and scoring seconds).

Run: python -m bench.judge [--datasets nfcorpus scifact] [--epochs 1] [--max-length 128]
     [--negatives-per-pair 2] [--random-per-pair 1] [--negative-ranks 30 100]
     [--max-rank 100] [--tail-samples 50]

The judge scores every row curation judges (``curate.max_rank`` candidates and
``curate.tail_samples`` random documents per anchor, and the positives); on a CPU, lower both
for both arms (``--max-rank 30 --tail-samples 10``) to bound its cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from bench.false_negatives import CURATED_ARMS, Prepared, evaluate, prepare
from negminer.config import CurateConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The files of a BERT checkpoint that a sequence-classification model loads (not the
# sentence-transformers modules.json, which would make CrossEncoder load the bi-encoder).
TRANSFORMER_FILES = (
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def transformer_folder(target: Path) -> Path:
    """A folder with the packaged model's transformer weights and tokenizer, without its modules."""
    from negminer.mining.encoder import resolve_model_path

    source = resolve_model_path(None)
    target.mkdir(parents=True, exist_ok=True)
    for name in TRANSFORMER_FILES:
        shutil.copyfile(source / name, target / name)
    return target


def training_examples(prep: Prepared, args: argparse.Namespace) -> tuple[list[str], list[str], list[float]]:
    """(anchor texts, doc texts, labels): each given pair, and negatives from its anchor's candidates."""
    rng = random.Random(args.seed)
    anchors = prep.tables["anchors"].column("text").to_pylist()
    docs = prep.tables["docs"].column("text").to_pylist()
    pairs = prep.tables["pairs"]
    candidates = prep.tables["candidates"]
    low, high = args.negative_ranks
    window = candidates.filter(
        pc.and_(
            pc.invert(candidates.column("is_positive")),
            pc.and_(pc.greater_equal(candidates.column("rank"), low), pc.less(candidates.column("rank"), high)),
        )
    )
    by_anchor: dict[int, list[int]] = {}
    for a, d in zip(window.column("anchor_idx").to_pylist(), window.column("doc_idx").to_pylist(), strict=True):
        by_anchor.setdefault(a, []).append(d)
    left, right, labels = [], [], []
    for a, d in zip(pairs.column("anchor_idx").to_pylist(), pairs.column("doc_idx").to_pylist(), strict=True):
        left.append(anchors[a])
        right.append(docs[d])
        labels.append(1.0)
        pool = by_anchor.get(a, [])
        negatives = rng.sample(pool, min(args.negatives_per_pair, len(pool)))
        negatives += [rng.randrange(len(docs)) for _ in range(args.random_per_pair)]
        for n in negatives:
            if n != d:
                left.append(anchors[a])
                right.append(docs[n])
                labels.append(0.0)
    return left, right, labels


def fine_tune_judge(prep: Prepared, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train the cross-encoder into `folder`; returns its training figures."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    left, right, labels = training_examples(prep, args)
    start = time.perf_counter()
    base = transformer_folder(folder / "base")
    model = CrossEncoder(str(base), num_labels=1, max_length=args.max_length, device="cpu")
    data = Dataset.from_dict({"anchor": left, "doc": right, "label": labels}).shuffle(seed=args.seed)
    training = CrossEncoderTrainingArguments(
        output_dir=str(folder / "checkpoints"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,
        seed=args.seed,
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        use_cpu=True,
    )
    trainer = CrossEncoderTrainer(model=model, args=training, train_dataset=data, loss=BinaryCrossEntropyLoss(model))
    trainer.train()
    model.save_pretrained(str(folder / "judge"))
    positives = int(sum(labels))
    return {"examples": len(labels), "positives": positives, "seconds": time.perf_counter() - start}


def judge_rows(prep: Prepared, judge: Path | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The curated arms with the default features, or with the judge's score as one more."""
    from bench.curation_eval import curate_prepared, run_negminer_curated

    options = {"max_rank": args.max_rank, "tail_samples": args.tail_samples}  # both arms: the judge's cost
    if judge:
        options |= {"cross_encoder": str(judge), "cross_encoder_batch_size": 64}
    start = time.perf_counter()
    curated = curate_prepared(prep, CurateConfig(**options))  # once: every arm selects from the same verdicts
    curation_seconds = time.perf_counter() - start
    rows = []
    for label, strategy in CURATED_ARMS:
        negatives, seconds, result = run_negminer_curated(
            prep, strategy, k=args.num_negatives, depth=args.search_depth, curated=curated
        )
        metrics = evaluate(prep, negatives, k=args.num_negatives)
        rows.append(
            {
                "arm": label + (" + fine-tuned judge" if judge else ""),
                **metrics,
                "excluded": len(result.excluded_pairs) / prep.pairs.num_rows,
                "flagged_fn": result.counts.get("false_negative"),
                "seconds": curation_seconds + seconds,
            }
        )
    return rows


def bench_dataset(name: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(name, "train", Path(tmp), search_depth=args.search_depth, given="random", seed=0)
        print(f"\n## {name} ({prep.pairs.num_rows} anchors, {prep.corpus.num_rows} docs)", flush=True)
        rows = judge_rows(prep, None, args)
        training = fine_tune_judge(prep, Path(tmp) / "judge", args)
        print(
            f"judge: {training['examples']} examples ({training['positives']} positive), "
            f"trained in {training['seconds']:.0f} s",
            flush=True,
        )
        rows += judge_rows(prep, Path(tmp) / "judge" / "judge", args)
    print("| arm | FN rate | coverage | hardness | given positives excluded | false negatives flagged | curate s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['fn_rate']:.1%} | {r['coverage']:.1%} | {r['hardness']:.3f} | "
            f"{r['excluded']:.1%} | {r['flagged_fn']} | {r['seconds']:.0f} |",
            flush=True,
        )


def judge_parser() -> argparse.ArgumentParser:
    """This benchmark's options; ``judge_parser().parse_args([])`` gives the judge's default training."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["nfcorpus", "scifact"])
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--search-depth", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-length", type=int, default=128, help="tokens of anchor + doc the judge reads")
    parser.add_argument("--negatives-per-pair", type=int, default=2, help="drawn from the anchor's candidates")
    parser.add_argument("--random-per-pair", type=int, default=1, help="random corpus documents")
    parser.add_argument("--negative-ranks", type=int, nargs=2, default=[30, 100], metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-rank", type=int, default=CurateConfig().max_rank, help="curate.max_rank of both arms (rows judged)"
    )
    parser.add_argument(
        "--tail-samples", type=int, default=CurateConfig().tail_samples, help="curate.tail_samples of both arms"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = judge_parser().parse_args(argv)
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    np.random.seed(args.seed)
    for name in args.datasets:
        bench_dataset(name, args)


if __name__ == "__main__":
    main()
