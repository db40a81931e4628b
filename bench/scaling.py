"""Dask and encoding processes on the shipped sample: wall times, and whether the datasets match.

    python bench/scaling.py [--workers 2] [--processes 2] [--repeats 1]

1. `negminer mine` on examples/scifact-sample, cold (fresh output folder and embedding store),
   with the default runner and with `--dask-workers N`: wall time of the whole command
   (Prefect's temporary server and the cluster's start included) and whether every file of
   the two versions is the same bytes.
2. Embedding the sample's 1,000 texts with the packaged model in one process and with
   `processes=N` (sentence-transformers' multi-process pool; pool start timed separately).
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

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "scifact-sample"
NEGMINER = str(Path(sys.executable).with_name("negminer"))


def mine(root: Path, *extra: str) -> tuple[float, Path]:
    """Seconds of one cold `negminer mine` of the sample, and the version it wrote."""
    command = [
        NEGMINER,
        "mine",
        str(SAMPLE / "pairs.parquet"),
        "--corpus",
        str(SAMPLE / "corpus.parquet"),
        "--out",
        str(root),
        "--name",
        "sample",
        "--store",
        str(root / "store"),
        *extra,
    ]
    (root / "prefect").mkdir(parents=True)
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect")}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, Path(done.stdout.strip().splitlines()[-1])


def same_files(a: Path, b: Path) -> bool:
    files = json.loads((a / "manifest.json").read_text())["files"]
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in files)


def encoding(processes: int) -> None:
    from negminer.mining.encoder import encode, load_model, multi_process_pool

    texts = pq.read_table(SAMPLE / "pairs.parquet").column("anchor").to_pylist()
    texts += pq.read_table(SAMPLE / "corpus.parquet").column("text").to_pylist()
    model = load_model(None, device="cpu", max_seq_length=None)
    start = time.perf_counter()
    single = encode(texts, model, batch_size=32, processes=1, precision="float32")
    one = time.perf_counter() - start
    start = time.perf_counter()
    multi_process_pool(model, processes)
    pool_start = time.perf_counter() - start
    start = time.perf_counter()
    pooled = encode(texts, model, batch_size=32, processes=processes, precision="float32")
    many = time.perf_counter() - start
    print(
        f"encode {len(texts)} texts: 1 process {one:.1f} s ({len(texts) / one:.0f}/s); "
        f"{processes} processes {many:.1f} s ({len(texts) / many:.0f}/s) + pool start {pool_start:.1f} s; "
        f"max |diff| {np.abs(pooled - single).max():.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            default_s, default = mine(Path(tmp) / "default")
            dask_s, dask = mine(Path(tmp) / "dask", "--dask-workers", str(args.workers))
            print(
                f"run {repeat + 1}: mine sample cold: default runner {default_s:.1f} s, "
                f"--dask-workers {args.workers} {dask_s:.1f} s; same files: {same_files(default, dask)}"
            )
    encoding(args.processes)


if __name__ == "__main__":
    main()
