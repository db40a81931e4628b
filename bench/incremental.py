"""Incremental re-mining on NFCorpus: a cold run, then the same dataset with 5% new pairs.

Pairs: NFCorpus train under the hidden-positives protocol (one given positive per query with
at least two relevant documents, ``bench.common``); the first run mines the first N pairs,
the second the same N plus round(0.05·N) new ones appended. Corpus: all NFCorpus documents.
Both runs are the real CLI (``negminer mine``) in fresh processes with a private embedding
store, so the first is cold (every text embedded) and both pay process start, model load and
Prefect's temporary server; the PREFECT_HOME database is created before timing, as a nightly
deployment's server would already have it.

Run: ``python -m bench.incremental`` (about 5 minutes on 2 CPU cores). Prints both wall
times, what each embedded, and the ratio (target ≤ 0.15).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import hidden_positive_inputs, load_retrieval_set

TARGET = 0.15


def prepare(folder: Path, *, share: float) -> tuple[int, int]:
    """Write first.parquet (N pairs), second.parquet (N + share·N pairs) and corpus.parquet."""
    pairs, corpus, _ = hidden_positive_inputs(load_retrieval_set("nfcorpus", "train"))
    first = round(pairs.num_rows / (1 + share))
    pq.write_table(pairs.slice(0, first), folder / "first.parquet")
    pq.write_table(pairs, folder / "second.parquet")
    pq.write_table(corpus, folder / "corpus.parquet")
    return first, pairs.num_rows - first


def mine(folder: Path, pairs: str, env: dict[str, str]) -> tuple[float, Path]:
    command = [
        sys.executable,
        "-m",
        "negminer",
        "mine",
        str(folder / pairs),
        "--corpus",
        str(folder / "corpus.parquet"),
        "--out",
        str(folder / "datasets"),
        "--name",
        "nfcorpus",
        "--store",
        str(folder / "store"),
        "--num-negatives",
        "5",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"negminer mine failed:\n{result.stderr[-3000:]}")
    return seconds, Path(result.stdout.strip().splitlines()[-1])


def warm_prefect_home(env: dict[str, str]) -> None:
    """Create the PREFECT_HOME database with an empty flow run (not timed)."""
    code = "from prefect import flow\n@flow(name='warm-up')\ndef warm_up():\n    pass\nwarm_up()\n"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"Prefect warm-up failed:\n{result.stderr[-3000:]}")


def summary(version: Path) -> dict:
    manifest = json.loads((version / "manifest.json").read_text())
    embedding = manifest["counts"]["embedding"]
    return {
        "version": version.name,
        "pairs": manifest["counts"]["pairs"],
        "embedded": {stem: c["embedded"] for stem, c in embedding.items()},
        "index": {k: manifest["index"].get(k) for k in ("factory", "rows", "extended_from")},
        "changes": {k: v for k, v in (manifest.get("changes") or {}).items() if k != "score_quantiles_drift"},
    }


def run_pair(share: float) -> dict:
    """Both runs in a private folder; the figures, read before the folder is removed."""
    with tempfile.TemporaryDirectory(prefix="negminer-incremental-") as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "PREFECT_HOME": str(folder / "prefect-home"),
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        }
        env.pop("PREFECT_API_URL", None)
        first_pairs, new_pairs = prepare(folder, share=share)
        warm_prefect_home(env)
        cold, first = mine(folder, "first.parquet", env)
        print(f"first run: {first_pairs} pairs, {cold:.1f} s", flush=True)
        warm, second = mine(folder, "second.parquet", env)
        print(f"second run: +{new_pairs} pairs, {warm:.1f} s", flush=True)
        return {
            "dataset": "nfcorpus train (hidden-positives pairs) + full corpus",
            "first_pairs": first_pairs,
            "new_pairs": new_pairs,
            "first_run_s": round(cold, 1),
            "second_run_s": round(warm, 1),
            "ratio": round(warm / cold, 3),
            "target": TARGET,
            "first": summary(first),
            "second": summary(second),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=float, default=0.05, help="new pairs as a share of the first run's")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = run_pair(args.share)
    print(json.dumps(figures, indent=2))
    ratio = figures["ratio"]
    print(f"second/first wall time: {ratio:.3f} ({'within' if ratio <= TARGET else 'ABOVE'} the {TARGET} target)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
