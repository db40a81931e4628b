"""refilter vs a full mine run on NFCorpus: deriving a new version must cost < 5% of mining.

Inputs: the hidden-positives pairs of a split (bench/common.py) and the whole corpus. Runs the
real CLI as subprocesses, each timed by wall clock from start to exit:

1. ``negminer mine`` cold: an empty embedding store, so it embeds, searches and selects;
2. ``negminer mine`` warm: the benchmark store (bench/.cache/store), so it only fetches vectors;
3. ``negminer refilter VERSION --strategy S`` for each strategy: reads the stored candidate
   table and writes a new version, no model, no search.

It also times the library call :func:`negminer.refilter.refilter` in-process (no interpreter
start-up). Prints the ratios refilter / cold mine (the issue's target: < 5%) and refilter /
warm mine. ``--skip-cold`` leaves out run 1 (it embeds the whole corpus: minutes on a CPU).

Run: python -m bench.refilter_speed [--dataset nfcorpus] [--split train] [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import STORE, hidden_positive_inputs, load_retrieval_set

STRATEGIES = ("positive-aware", "semi-hard", "calibrated", "simans", "naive")
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def run_cli(*args: str, home: Path) -> tuple[float, str]:
    """Wall seconds of one ``negminer`` process and the last line of its stdout."""
    env = {**ENV, "PREFECT_HOME": str(home)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "negminer", *args], capture_output=True, text=True, env=env, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"negminer {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stdout.strip().splitlines()[-1]


def mine(pairs: Path, corpus: Path, out: Path, store: Path, home: Path, k: int) -> tuple[float, str]:
    return run_cli(
        "mine",
        str(pairs),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--name",
        "bench",
        "--store",
        str(store),
        "--num-negatives",
        str(k),
        "--strategy",
        "naive",
        home=home,
    )


def embedded(version: str) -> int:
    from negminer.storage.versions import read_manifest

    counts = read_manifest(version)["counts"]["embedding"]
    return sum(part.get("embedded", 0) for part in counts.values() if isinstance(part, dict))


def library_refilter(version: str, strategy: str) -> float:
    from negminer.refilter import refilter, refilter_config

    start = time.perf_counter()
    refilter(version, mine=refilter_config(version, strategy=strategy))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nfcorpus")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pairs_table, corpus_table, _ = hidden_positive_inputs(load_retrieval_set(args.dataset, args.split))
        pairs, corpus = folder / "pairs.parquet", folder / "corpus.parquet"
        pq.write_table(pairs_table, pairs)
        pq.write_table(corpus_table, corpus)
        k = args.num_negatives
        print(
            f"{args.dataset} {args.split}: {pairs_table.num_rows} pairs, {corpus_table.num_rows} docs, "
            f"{args.num_negatives} negatives, {os.cpu_count()} cpus"
        )
        times: dict[str, float] = {}
        if not args.skip_cold:
            times["mine cold"], cold = mine(pairs, corpus, folder / "cold", folder / "store", folder / "p", k)
            print(f"cold run embedded {embedded(cold)} texts")
        times["mine warm"], version = mine(pairs, corpus, folder / "out", STORE, folder / "p", k)
        print(f"warm run embedded {embedded(version)} texts")
        for strategy in STRATEGIES:
            times[f"refilter {strategy} (CLI)"], _ = run_cli(
                "refilter", version, "--strategy", strategy, home=folder / "p"
            )
        for strategy in STRATEGIES:
            times[f"refilter {strategy} (library)"] = library_refilter(version, strategy)
        print_report(times)


def print_report(times: dict[str, float]) -> None:
    print("| run | seconds | / mine cold | / mine warm |")
    print("|---|---:|---:|---:|")
    for label, seconds in times.items():
        cold = f"{seconds / times['mine cold']:.1%}" if "mine cold" in times else "n/a"
        warm = f"{seconds / times['mine warm']:.1%}"
        print(f"| {label} | {seconds:.2f} | {cold} | {warm} |")
    refilters = [s for label, s in times.items() if label.startswith("refilter") and "CLI" in label]
    if "mine cold" in times:
        worst = max(refilters) / times["mine cold"]
        print(f"slowest refilter (CLI) / mine cold = {worst:.1%} (target < 5%): {'PASS' if worst < 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
