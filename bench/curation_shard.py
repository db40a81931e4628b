"""Time one curation shard of a kept work folder: what a change to curation's per-shard cost buys.

A run of ``bench.pipeline_scale`` killed (or kept) after its curation plan leaves a work folder
with the search's candidates and ``curation-fit.pkl``. This runs one shard of it in this
process with the default curation settings, prints its wall time, peak RSS and counts, and with
``--out PREFIX`` writes the shard's curated and flagged tables (``PREFIX.curated.parquet``,
``PREFIX.flagged.parquet``) so two versions of the code can be compared for identical output.

Run: python -m bench.curation_shard WORK_DIR [--shard 5] [--out /tmp/before]
"""

from __future__ import annotations

import argparse
import pickle
import resource
import time
from pathlib import Path

import pyarrow.parquet as pq

from negminer.config import CurateConfig
from negminer.curation.sharded import curate_shard, shard_ranges
from negminer.stages.curate import FIT_FILE, _pool_inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="a run's work folder (ROOT/NAME/.work/KEY) after its curation plan")
    parser.add_argument("--shard", type=int, default=5, help="which shard of the plan's ranges")
    parser.add_argument("--out", help="write PREFIX.curated.parquet and PREFIX.flagged.parquet")
    args = parser.parse_args(argv)
    config = CurateConfig()
    candidates = str(next(args.work_dir.glob("candidates-*.parquet")))
    with open(args.work_dir / FIT_FILE, "rb") as handle:
        fitted = pickle.load(handle)  # written by that run's curation plan
    n_anchors = pq.ParquetFile(args.work_dir / "anchors.parquet").metadata.num_rows
    shard = shard_ranges(candidates, n_anchors=n_anchors, config=config)[args.shard]
    start = time.perf_counter()
    result = curate_shard(fitted, candidates, shard, _pool_inputs(args.work_dir), config=config)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"shard {args.shard} rows {shard}: {seconds:.1f} s, peak RSS {peak:.2f} GB")
    print(f"counts: {result.counts}")
    if args.out:
        pq.write_table(result.curated, f"{args.out}.curated.parquet")
        pq.write_table(result.flagged, f"{args.out}.flagged.parquet")


if __name__ == "__main__":
    main()
