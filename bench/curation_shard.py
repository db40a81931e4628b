"""Time curation shards of a kept work folder: what a change to curation's per-shard cost buys.

A run of ``bench.pipeline_scale`` killed (or kept) after its curation plan leaves a work folder
with the search's candidates and ``curation-fit.pkl``. This judges shards of it in this process
with the default curation settings and prints their wall time, peak RSS and counts. With
several ``--threads`` values the same shards are judged once per value, that many at a time
(as ``curate.shard_threads`` runs them), and the last line compares the wall times. With
``--out PREFIX`` the first shard's curated and flagged tables are written
(``PREFIX.curated.parquet``, ``PREFIX.flagged.parquet``) so two versions of the code can be
compared for identical output.

Run: python -m bench.curation_shard WORK_DIR [--shard 5] [--out /tmp/before]
     python -m bench.curation_shard WORK_DIR --shard 5 6 7 8 --threads 1 2
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from negminer.config import CurateConfig
from negminer.curation.sharded import curate_shard, shard_ranges
from negminer.stages.curate import _SHARED, FIT_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="a run's work folder (ROOT/NAME/.work/KEY) after its curation plan")
    parser.add_argument("--shard", type=int, nargs="+", default=[5], help="which shards of the plan's ranges")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="shards judged at once (each value a pass)")
    parser.add_argument("--out", help="write PREFIX.curated.parquet and PREFIX.flagged.parquet of the first shard")
    args = parser.parse_args(argv)
    config = CurateConfig()
    candidates = str(next(args.work_dir.glob("candidates-*.parquet")))
    n_anchors = pq.ParquetFile(args.work_dir / "anchors.parquet").metadata.num_rows
    ranges = shard_ranges(candidates, n_anchors=n_anchors, config=config)

    def judge(number: int):
        start = time.perf_counter()
        with _SHARED.use(args.work_dir, str(args.work_dir / FIT_FILE)) as (fitted, pool):  # as the flow's shards
            result = curate_shard(fitted, candidates, ranges[number], pool, config=config)
        print(f"  shard {number} rows {ranges[number]}: {time.perf_counter() - start:.1f} s", flush=True)
        return result

    walls = {}
    for threads in args.threads:
        print(f"{len(args.shard)} shard(s), {threads} at a time:", flush=True)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(judge, args.shard))
        walls[threads] = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"  wall {walls[threads]:.1f} s, peak RSS so far {peak:.2f} GB; counts of the first: {results[0].counts}")
    if args.out:
        pq.write_table(results[0].curated, f"{args.out}.curated.parquet")
        pq.write_table(results[0].flagged, f"{args.out}.flagged.parquet")
    if len(walls) > 1:
        base = args.threads[0]
        print("wall time: " + ", ".join(f"{t} at a time {w:.1f} s ({walls[base] / w:.2f}x)" for t, w in walls.items()))


if __name__ == "__main__":
    main()
