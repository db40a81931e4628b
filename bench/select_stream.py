"""Selection in batches vs in one batch on a real candidate table: time, and the same bytes.

Takes a dataset version's ``candidates.parquet`` (with its anchors, docs and pairs) and, for
each strategy, derives the version's tables with ``derive_files`` twice: in one batch (the
whole candidate table in memory at once, as select and refilter held it before streaming)
and in batches of ``--batch-rows`` rows (whole anchors, written as they come). Prints the
median of `--repeat` runs of each, and whether the two wrote identical files (they must: the
output does not depend on the batch size).

Run: python -m bench.select_stream VERSION_DIR [--batch-rows N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from negminer.config import MineConfig
from negminer.mining.streaming import derive_files
from negminer.storage.versions import read_manifest

STRATEGIES = ("simans", "naive", "positive-aware", "calibrated", "semi-hard")


def _derive(version: Path, out: Path, tables: dict, config: MineConfig, batch_rows: int) -> dict[str, Path]:
    paths = {stem: out / f"{stem}.parquet" for stem in ("candidates", "triplets", "scored")}
    derived = derive_files(
        version / "candidates.parquet",
        paths,
        anchors=tables["anchors"],
        docs=tables["docs"],
        pairs=tables["pairs"],
        config=config,
        batch_rows=batch_rows,
    )
    return derived.paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("version", type=Path)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    manifest = read_manifest(args.version)
    depth = manifest["config"]["mine"]["search_depth"]
    tables = {stem: pq.read_table(args.version / f"{stem}.parquet") for stem in ("anchors", "docs", "pairs")}
    rows = pq.read_metadata(args.version / "candidates.parquet").num_rows
    batch_rows = {"one batch": max(rows, 1), "batched": args.batch_rows}
    print(
        f"{args.version}: {rows:,} candidate rows, {tables['anchors'].num_rows:,} anchors, "
        f"batch_rows {args.batch_rows:,}"
    )
    print("| strategy | one batch s | batched s | identical files |\n|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            config = MineConfig(strategy=strategy, num_negatives=5, search_depth=depth)
            times: dict[str, list[float]] = {arm: [] for arm in batch_rows}
            written: dict[str, dict[str, Path]] = {}
            for i in range(args.repeat):
                for arm, size in batch_rows.items():
                    start = time.perf_counter()
                    written[arm] = _derive(args.version, Path(tmp) / f"{strategy}-{arm}-{i}", tables, config, size)
                    times[arm].append(time.perf_counter() - start)
            one, batched = written["one batch"], written["batched"]
            same = one.keys() == batched.keys() and all(one[s].read_bytes() == batched[s].read_bytes() for s in one)
            print(
                f"| {strategy} | {statistics.median(times['one batch']):.3f} | "
                f"{statistics.median(times['batched']):.3f} | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
