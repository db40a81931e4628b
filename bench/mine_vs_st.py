"""negminer vs sentence-transformers' mine_hard_negatives on NFCorpus train, one process.

Prints wall times and the ratios of issue 7: negminer cold / ST cold (target <= 1.0),
negminer warm (embeddings stored) / ST cold (target <= 0.2), and negminer cold over
embedding-only time for the same texts (target <= 1.15). Same model (packaged
all-MiniLM-L6-v2), batch size 32, 5 negatives, top-k, exact FAISS search; these negminer runs
do the same job as sentence-transformers (``--strategy naive``, curation off).

Then the same three runs with the forward pass in bfloat16 (``embed.precision: bfloat16``;
sentence-transformers under the same ``torch.autocast``), with the share of negminer's
negatives that bfloat16 leaves unchanged (``--skip-bfloat16`` leaves them out).

Then the cost of curation (issue 4: at most +25% on a mine run): negminer's default run
(curation on) cold into a fresh store and warm, over the same runs with curation off.

``--fresh-processes`` runs every float32 run in its own Python process, as a user runs either
tool (the default runs them all in this process, where each run inherits the heap, threads and
models the runs before it left; a first flow run after the other arms was measured ~15%
slower than later ones, docs/benchmarks.md). Each run is timed inside its process the same way
in both modes (sentence-transformers from after its model load, negminer over the whole
``run_mine``); fresh processes also print each run's peak RSS.

Issue 22 (the encoding backend): "negminer cold" runs negminer's defaults (``embed.backend`` and
``embed.precision`` auto: OpenVINO bfloat16 where it is installed and this CPU has bf16). Once
after the rounds, "negminer cold, torch float32" runs the same job on PyTorch float32 vectors,
and the report sets side by side each run's ratio to sentence-transformers' cold run (float32,
its defaults; targets: default cold <= 0.5, warm <= 0.05) and the share of the default run's
naive top-5 negatives identical to the float32 run's (target >= 99%). "negminer cold, first
use" runs the default once more with an empty conversion cache (``NEGMINER_CACHE_DIR``): the
one-time OpenVINO conversion and auto's check included. ``--skip-embedding-only`` leaves out
the two embedding-only arms of the rounds.

Run: python -m bench.mine_vs_st [--dataset nfcorpus] [--split train] [--limit N] [--rounds N]
     [--fresh-processes] [--skip-bfloat16] [--skip-curation] [--skip-embedding-only]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import hidden_positive_inputs, load_retrieval_set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # slow on a busy 2-core box


def _autocast(precision: str):
    import torch

    return contextlib.nullcontext() if precision == "float32" else torch.autocast("cpu", dtype=torch.bfloat16)


def embedding_only(anchors: list[str], docs: list[str], precision: str = "float32") -> float:
    """The forward passes alone, batched as sentence-transformers batches them (by characters)."""
    from negminer.mining.encoder import load_model

    model = load_model(None, device="cpu", max_seq_length=None)
    start = time.perf_counter()
    with _autocast(precision):
        for texts in (anchors, docs):
            model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - start


def embedding_token_order(anchors: list[str], docs: list[str]) -> float:
    """The same forward passes through negminer's encode (batches cut by token count)."""
    from negminer.mining.encoder import encode, load_model

    model = load_model(None, device="cpu", max_seq_length=None)
    start = time.perf_counter()
    encode(anchors, model, batch_size=32, processes=1, precision="float32")
    encode(docs, model, batch_size=32, processes=1, precision="float32")
    return time.perf_counter() - start


def st_cold(pairs, corpus_texts: list[str], num_negatives: int, precision: str = "float32") -> float:
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    from negminer.mining.encoder import load_model

    model = load_model(None, device="cpu", max_seq_length=None)
    dataset = datasets.Dataset.from_dict(
        {"anchor": pairs.column("anchor").to_pylist(), "positive": pairs.column("positive").to_pylist()}
    )
    start = time.perf_counter()
    with _autocast(precision):
        mine_hard_negatives(
            dataset,
            model,
            corpus=corpus_texts,
            num_negatives=num_negatives,
            use_faiss=True,
            batch_size=32,
            verbose=False,
        )
    return time.perf_counter() - start


def negminer_run(
    pairs_path: Path,
    corpus_path: Path,
    out: Path,
    store: Path,
    num_negatives: int,
    *,
    curate: bool,
    embed: dict | None = None,
) -> tuple[float, str]:
    """One `run_mine`; `embed` overrides the embed section (None: negminer's defaults)."""
    from negminer.config import PipelineConfig
    from negminer.flows.mine import run_mine

    mine: dict = {"num_negatives": num_negatives}
    if not curate:
        mine["strategy"] = "naive"
    config = PipelineConfig.from_dict({"mine": mine, "curate": {"enabled": curate}, "embed": embed or {}})
    start = time.perf_counter()
    version = run_mine(  # what `negminer mine` runs
        str(pairs_path), str(out), "bench", corpus=str(corpus_path), config=config, store=str(store)
    )
    return time.perf_counter() - start, version


COLD_RUNS = ("embedding only", "embedding only, token-ordered batches", "sentence-transformers cold", "negminer cold")
EMBEDDING_ONLY = COLD_RUNS[:2]
FLOAT32 = {"backend": "torch", "precision": "float32"}  # the reference vectors (negminer's default before issue 22)
TORCH_BFLOAT16 = {"backend": "torch", "precision": "bfloat16"}


def distinct_texts(pairs, corpus) -> tuple[list[str], list[str]]:
    """The texts each tool embeds: distinct anchors, and distinct corpus texts and positives."""
    anchors = sorted(set(pairs.column("anchor").to_pylist()))
    docs = sorted(set(corpus.column("text").to_pylist()) | set(pairs.column("positive").to_pylist()))
    return anchors, docs


def run_arm(name: str, tmp: Path, num_negatives: int, run_id: int) -> tuple[float, str | None]:
    """One timed run of `name` on the inputs in `tmp`; returns (seconds, negminer version or None).

    A negminer cold run embeds into the empty store ``store-<run_id>``; the warm run reuses the
    store of cold run `run_id` with a fresh output root, so no stage result is reused.
    """
    pairs, corpus = pq.read_table(tmp / "pairs.parquet"), pq.read_table(tmp / "corpus.parquet")
    anchors, docs = distinct_texts(pairs, corpus)
    inputs = (tmp / "pairs.parquet", tmp / "corpus.parquet")
    if name == "embedding only":
        return embedding_only(anchors, docs), None
    if name == "embedding only, token-ordered batches":
        return embedding_token_order(anchors, docs), None
    if name == "sentence-transformers cold":
        return st_cold(pairs, corpus.column("text").to_pylist(), num_negatives), None
    if name in NEGMINER_RUNS:
        from prefect.server.api.server import SubprocessASGIServer

        folder, embed = NEGMINER_RUNS[name]
        store = tmp / (f"store-{run_id}" if folder in ("", "warm") else f"store-{folder}-{run_id}")
        out = tmp / f"out-{folder or 'cold'}-{run_id}"
        previous = os.environ.get("NEGMINER_CACHE_DIR")
        if folder == "first-use":  # an empty conversion cache: the OpenVINO conversion and auto's check included
            os.environ["NEGMINER_CACHE_DIR"] = str(tmp / f"cache-{run_id}")
        try:
            seconds, version = negminer_run(*inputs, out, store, num_negatives, curate=False, embed=embed)
        finally:
            os.environ.pop("NEGMINER_CACHE_DIR", None)
            if previous is not None:
                os.environ["NEGMINER_CACHE_DIR"] = previous
        SubprocessASGIServer().stop()  # so every cold run starts Prefect's temporary server, as a CLI run does
        return seconds, version
    raise ValueError(f"unknown run {name!r}")


# negminer's runs: name -> (folder tag, embed section overrides). "warm" reuses the store of cold run `run_id`.
NEGMINER_RUNS: dict[str, tuple[str, dict | None]] = {
    "negminer cold": ("", None),
    "negminer warm": ("warm", None),
    "negminer cold, torch float32": ("float32", FLOAT32),
    "negminer cold, first use": ("first-use", None),
}


def run_arm_in_child(name: str, tmp: Path, num_negatives: int, run_id: int) -> tuple[float, str | None]:
    """:func:`run_arm` in a fresh Python process, as a user runs either tool; prints its peak RSS."""
    command = [sys.executable, "-m", "bench.mine_vs_st", "--child", name, "--workdir", str(tmp)]
    command += ["--num-negatives", str(num_negatives), "--run-id", str(run_id)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"    {name}: peak RSS of its process {result['peak_rss_mb']:.0f} MB", flush=True)
    return result["seconds"], result["version"]


def _child(args: argparse.Namespace) -> None:
    seconds, version = run_arm(args.child, Path(args.workdir), args.num_negatives, args.run_id)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "version": version, "peak_rss_mb": peak}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="nfcorpus")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only (quick check)")
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--skip-curation", action="store_true", help="skip the curation-cost runs")
    parser.add_argument("--skip-bfloat16", action="store_true", help="skip the torch bfloat16 autocast runs")
    parser.add_argument(
        "--skip-embedding-only", action="store_true", help="leave the two embedding-only arms out of the rounds"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the float32 cold runs, every other round in reverse order"
    )
    parser.add_argument(
        "--fresh-processes",
        action="store_true",
        help="run every float32 run in a fresh Python process (as a user runs either tool), not all in this one",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    pairs, corpus, _ = hidden_positive_inputs(load_retrieval_set(args.dataset, args.split))
    if args.limit:
        pairs = pairs.slice(0, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pq.write_table(pairs, tmp / "pairs.parquet")
        pq.write_table(corpus, tmp / "corpus.parquet")
        anchors, docs = distinct_texts(pairs, corpus)
        corpus_texts = corpus.column("text").to_pylist()
        where = "each run in a fresh process" if args.fresh_processes else "all runs in this process"
        print(
            f"{args.dataset}/{args.split}: {pairs.num_rows} pairs, {len(anchors)} anchors, {len(docs)} docs; {where}",
            flush=True,
        )
        inputs = (tmp / "pairs.parquet", tmp / "corpus.parquet")
        runner = run_arm_in_child if args.fresh_processes else run_arm
        cold_runs = 0
        versions: dict[str, Path] = {}

        def timed(name: str) -> float:
            nonlocal cold_runs
            cold_runs += name == "negminer cold"
            seconds, version = runner(name, tmp, args.num_negatives, cold_runs)
            if version:
                versions[name] = Path(version)
            return seconds

        arms = [name for name in COLD_RUNS if not (args.skip_embedding_only and name in EMBEDDING_ONLY)]
        timings = timed_rounds({name: functools.partial(timed, name) for name in arms}, args.rounds)
        for name in ("negminer warm", "negminer cold, torch float32", "negminer cold, first use"):
            timings[name] = timed(name)
            print(f"once: {name} {timings[name]:.1f} s", flush=True)
        print_report(timings, versions)
        if not args.skip_bfloat16:
            version = versions["negminer cold, torch float32"]
            half = {"embedding only": embedding_only(anchors, docs, "bfloat16")}
            gc.collect()
            half["sentence-transformers cold"] = st_cold(pairs, corpus_texts, args.num_negatives, "bfloat16")
            gc.collect()
            half["negminer cold"], half_version = negminer_run(
                *inputs, tmp / "out-bf16", tmp / "store-bf16", args.num_negatives, curate=False, embed=TORCH_BFLOAT16
            )
            full = {**timings, "negminer cold": timings["negminer cold, torch float32"]}
            print_bfloat16(full, half, version, Path(half_version))
        if not args.skip_curation:
            curated = {
                "cold": negminer_run(*inputs, tmp / "out-c", tmp / "store-c", args.num_negatives, curate=True)[0],
                "warm": negminer_run(*inputs, tmp / "out-cw", tmp / "store-c", args.num_negatives, curate=True)[0],
            }
            print_curation_cost(timings, curated)


def timed_rounds(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median seconds of each run over `rounds` rounds; odd rounds run in reverse order (drift cancels)."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_number in range(rounds):
        names = list(runs) if round_number % 2 == 0 else list(reversed(runs))
        for name in names:
            gc.collect()
            seconds[name].append(runs[name]())
            print(f"round {round_number + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    if rounds > 1:
        st = seconds["sentence-transformers cold"]
        ratios = ", ".join(f"{n / s:.3f}" for n, s in zip(seconds["negminer cold"], st, strict=True))
        print(f"negminer cold / ST cold per round: {ratios}")
    return {name: statistics.median(values) for name, values in seconds.items()}


def print_report(timings: dict[str, float], versions: dict[str, Path]) -> None:
    """The medians, each run's ratio to sentence-transformers' cold run and its top-5 agreement, side by side."""
    manifest = json.loads((versions["negminer cold"] / "manifest.json").read_text())
    warm = json.loads((versions["negminer warm"] / "manifest.json").read_text())
    model = manifest["model"]
    print(f"\nnegminer's default encoding here: backend {model.get('backend')}, precision {model.get('precision')}")
    reference = versions["negminer cold, torch float32"]
    st = timings["sentence-transformers cold"]
    print("\n| run | wall s (median of the rounds) | / ST cold | naive top-5 negatives identical to float32's |")
    print("|---|---|---|---|")
    for name, seconds in timings.items():
        agreement = ""
        if name in versions:
            same, total = _shared_negatives(reference, versions[name])
            agreement = f"{same}/{total} ({same / total:.2%})"
        print(f"| {name} | {seconds:.1f} | {seconds / st:.3f} | {agreement} |")
    same, total = _shared_negatives(reference, versions["negminer cold"])
    print(f"\nnegminer cold (default) / ST cold = {timings['negminer cold'] / st:.3f}  (target <= 0.5)")
    print(f"negminer warm (default) / ST cold = {timings['negminer warm'] / st:.3f}  (target <= 0.05)")
    print(f"default run's naive top-5 negatives identical to float32's: {same / total:.2%}  (target >= 99%)")
    if "embedding only" in timings:
        print(f"negminer cold / embedding only (float32) = {timings['negminer cold'] / timings['embedding only']:.3f}")
        ordered = timings["embedding only, token-ordered batches"] / timings["embedding only"]
        print(f"token-ordered / sentence-transformers-ordered batches = {ordered:.3f}")
    print(f"warm run embedded: {warm['counts']['embedding']}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def print_bfloat16(full: dict[str, float], half: dict[str, float], version: Path, half_version: Path) -> None:
    print("\n| run | float32 s | bfloat16 s | bfloat16 / float32 |\n|---|---|---|---|")
    for name, seconds in half.items():
        print(f"| {name} | {full[name]:.1f} | {seconds:.1f} | {seconds / full[name]:.3f} |")
    st_full, st_half = full["sentence-transformers cold"], half["sentence-transformers cold"]
    print(f"\nnegminer cold bfloat16 / ST cold float32 = {half['negminer cold'] / st_full:.3f}")
    print(f"negminer cold bfloat16 / ST cold bfloat16 = {half['negminer cold'] / st_half:.3f}")
    print(f"negminer cold bfloat16 / embedding only bfloat16 = {half['negminer cold'] / half['embedding only']:.3f}")
    same, total = _shared_negatives(version, half_version)
    print(f"negatives unchanged by torch bfloat16 autocast: {same}/{total} ({same / total:.2%})")


def _shared_negatives(version: Path, other: Path) -> tuple[int, int]:
    def negatives(folder: Path) -> set[tuple[str, str]]:
        table = pq.read_table(folder / "candidates.parquet", columns=["anchor_id", "doc_id", "negative_slot"])
        chosen = table.filter(pc.is_valid(table.column("negative_slot")))
        return set(zip(chosen.column("anchor_id").to_pylist(), chosen.column("doc_id").to_pylist(), strict=True))

    first, second = negatives(version), negatives(other)
    return len(first & second), len(first)


def print_curation_cost(timings: dict[str, float], curated: dict[str, float]) -> None:
    print("\n| negminer run | curation off s | default (curation on) s | ratio |\n|---|---|---|---|")
    for run in ("cold", "warm"):
        plain = timings[f"negminer {run}"]
        print(f"| {run} | {plain:.1f} | {curated[run]:.1f} | {curated[run] / plain:.3f} |")
    print(f"\ncuration adds {curated['cold'] / timings['negminer cold'] - 1:.1%} to a cold run (target <= 25%)")


if __name__ == "__main__":
    main()
