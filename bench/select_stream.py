"""Streamed vs in-memory selection on a real candidate table: time, and the same bytes.

Takes a dataset version's ``candidates.parquet`` (with its anchors, docs and pairs) and, for
each strategy, derives the version's tables twice: in memory (``derive_dataset`` + writing
each table, what select and refilter did before) and streamed (``derive_files``, batches of
whole anchors written as they come). Prints the median of `--repeat` runs of each, and
whether the two wrote identical files (the in-memory tables written with contiguous columns:
``write_table`` closes data pages at chunk boundaries, so its bytes otherwise depend on how
the table happened to be chunked in memory; the streamed writer is independent of that).

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
from negminer.mining.derive import derive_dataset
from negminer.mining.streaming import BATCH_ROWS, derive_files
from negminer.storage.atomic import write_parquet_atomic
from negminer.storage.versions import read_manifest

STRATEGIES = ("simans", "naive", "positive-aware", "calibrated", "semi-hard")


def _in_memory(version: Path, out: Path, tables: dict, config: MineConfig) -> dict[str, Path]:
    candidates = pq.read_table(version / "candidates.parquet")
    derived = derive_dataset(
        candidates, anchors=tables["anchors"], docs=tables["docs"], pairs=tables["pairs"], config=config
    )
    # combine_chunks: write_table's page layout follows the chunks of the table in memory
    tables = {stem: table.combine_chunks() for stem, table in derived.tables.items()}
    return {stem: write_parquet_atomic(out / f"{stem}.parquet", table) for stem, table in tables.items()}


def _streamed(version: Path, out: Path, tables: dict, config: MineConfig, batch_rows: int) -> dict[str, Path]:
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
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    manifest = read_manifest(args.version)
    depth = manifest["config"]["mine"]["search_depth"]
    tables = {stem: pq.read_table(args.version / f"{stem}.parquet") for stem in ("anchors", "docs", "pairs")}
    rows = pq.read_metadata(args.version / "candidates.parquet").num_rows
    print(
        f"{args.version}: {rows:,} candidate rows, {tables['anchors'].num_rows:,} anchors, "
        f"batch_rows {args.batch_rows:,}"
    )
    print("| strategy | in memory s | streamed s | identical files |\n|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            config = MineConfig(strategy=strategy, num_negatives=5, search_depth=depth)
            times: dict[str, list[float]] = {"memory": [], "streamed": []}
            for i in range(args.repeat):
                out = {arm: Path(tmp) / f"{strategy}-{arm}-{i}" for arm in times}
                start = time.perf_counter()
                memory = _in_memory(args.version, out["memory"], tables, config)
                times["memory"].append(time.perf_counter() - start)
                start = time.perf_counter()
                streamed = _streamed(args.version, out["streamed"], tables, config, args.batch_rows)
                times["streamed"].append(time.perf_counter() - start)
            same = memory.keys() == streamed.keys() and all(
                memory[s].read_bytes() == streamed[s].read_bytes() for s in memory
            )
            print(
                f"| {strategy} | {statistics.median(times['memory']):.3f} | "
                f"{statistics.median(times['streamed']):.3f} | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
