"""Checks that a code change leaves every dataset file of `negminer mine` byte-identical.

Runs the real CLI (``negminer mine``) on the shipped SciFact sample and on NFCorpus's train
split (hidden-positives inputs, one random given positive per query), each with the default
configuration and with ``--strategy naive``, and records the sha256 of every file of every
version it wrote. Run it once on the old code and once on the new, then compare:

    PYTHONPATH=/path/to/old/checkout python -m bench.identical_outputs --record old.json
    python -m bench.identical_outputs --record new.json
    python -m bench.identical_outputs --compare old.json new.json

``--record`` prints which package it imported, so a run that did not pick up the old checkout
shows it. The manifest is compared without ``created_at``, the time it was written. Every
run uses one embedding store (``bench/.cache/identical-store``), so only the
first run embeds; output roots are wiped before each run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import BENCH_CACHE, REPO, hidden_positive_inputs, load_retrieval_set

SAMPLE = REPO / "examples" / "scifact-sample"
WORK = BENCH_CACHE / "identical"
STORE = BENCH_CACHE / "identical-store"
STRATEGIES = {"default": [], "naive": ["--strategy", "naive"]}


def nfcorpus_inputs() -> tuple[Path, Path]:
    """NFCorpus train pairs (random given positive, seed 0) and corpus as Parquet, written once."""
    folder = WORK / "inputs" / "nfcorpus"
    pairs_path, corpus_path = folder / "pairs.parquet", folder / "corpus.parquet"
    if not pairs_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        pairs, corpus, _ = hidden_positive_inputs(load_retrieval_set("nfcorpus", "train"), given="random")
        pq.write_table(corpus, corpus_path)
        pq.write_table(pairs, pairs_path)
    return pairs_path, corpus_path


def sample_inputs() -> tuple[Path, Path]:
    """The shipped sample, copied under the cache: manifests record input paths, so both
    checkouts must read the same paths."""
    folder = WORK / "inputs" / "sample"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pairs.parquet", "corpus.parquet"):
        shutil.copyfile(SAMPLE / name, folder / name)
    return folder / "pairs.parquet", folder / "corpus.parquet"


def cases(datasets: list[str]) -> dict[str, tuple[Path, Path, list[str]]]:
    inputs = {"sample": sample_inputs()}
    if "nfcorpus" in datasets:
        inputs["nfcorpus"] = nfcorpus_inputs()
    return {
        f"{data}-{label}": (*inputs[data], options)
        for data in datasets
        for label, options in STRATEGIES.items()
        if data in inputs
    }


def mine(case: str, pairs: Path, corpus: Path, options: list[str]) -> Path:
    """Run `negminer mine` in a fresh process; the version folder it printed last."""
    out = WORK / "runs" / case
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "-c",
        "from negminer.cli import main; main()",
        "mine",
        str(pairs),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--name",
        case,
        "--store",
        str(STORE),
        *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.exit(f"{case}: negminer mine failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def file_hashes(version: Path) -> dict[str, str]:
    """sha256 of every file; the manifest's without its ``created_at`` (the wall clock at publish,
    which no two runs share), from the bytes of the rest as negminer writes them."""
    hashes = {}
    for path in sorted(version.iterdir()):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            del manifest["created_at"]
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        hashes[path.name] = hashlib.sha256(data).hexdigest()
    return hashes


def manifest_without_time(version: Path) -> dict:
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["created_at"]
    return manifest


def record(output: Path, datasets: list[str]) -> None:
    import negminer

    print(f"negminer imported from {Path(negminer.__file__).parent}")
    results = {}
    for case, (pairs, corpus, options) in cases(datasets).items():
        start = time.perf_counter()
        version = mine(case, pairs, corpus, options)
        results[case] = {"files": file_hashes(version), "manifest": manifest_without_time(version)}
        print(f"{case}: {len(results[case]['files'])} files, {time.perf_counter() - start:.1f} s")
    output.write_text(json.dumps(results, indent=2, sort_keys=True))


def compare(old_path: Path, new_path: Path) -> int:
    old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
    differing = 0
    for case in sorted(old.keys() | new.keys()):
        if case not in old or case not in new:
            print(f"{case}: only in {'new' if case in new else 'old'}")
            differing += 1
            continue
        old_files, new_files = old[case]["files"], new[case]["files"]
        for name in sorted(old_files.keys() | new_files.keys()):
            same = old_files.get(name) == new_files.get(name)
            differing += not same
            print(f"{case:<18} {name:<28} {'identical' if same else 'DIFFERS'}")
        for key in sorted(old[case]["manifest"].keys() | new[case]["manifest"].keys()):
            before, after = old[case]["manifest"].get(key), new[case]["manifest"].get(key)
            if before != after:
                print(f"  manifest {key}: {json.dumps(before, sort_keys=True)[:300]}")
                print(f"  {' ' * len('manifest ' + key)}  now {json.dumps(after, sort_keys=True)[:300]}")
    print(f"{differing} file(s) differ" if differing else "every file is byte-identical")
    return 1 if differing else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="mine every case and write the file hashes here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("OLD", "NEW"))
    parser.add_argument("--datasets", nargs="+", default=["sample", "nfcorpus"], choices=["sample", "nfcorpus"])
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not args.record:
        parser.error("give --record FILE or --compare OLD NEW")
    record(args.record, args.datasets)


if __name__ == "__main__":
    main()
