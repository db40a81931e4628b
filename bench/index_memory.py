"""Peak memory of building one IVF index shard: lists reserved at their final size vs a plain ``add``.

FAISS's inverted lists grow by doubling as vectors are added; :func:`negminer.mining.index.add_rows`
reserves each list first. Each way builds the same index (same bytes: tests/mining/test_index.py)
over the same synthetic clustered vectors in a fresh Python process, and this prints each
process's peak RSS (VmHWM) and the index's size side by side.

Run: python -m bench.index_memory [--docs 500000] [--dim 384]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import numpy as np

from negminer.config import IndexConfig
from negminer.mining.vectors import release


def _vm_hwm() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for first in range(0, n, 100_000):
        stop = min(first + 100_000, n)
        part = centers[rng.integers(0, 1000, stop - first)] + 0.5 * rng.standard_normal((stop - first, dim), np.float32)
        out[first:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def build(way: str, path: str) -> None:
    """Build over the vectors file `path` in this process; print one line: way, seconds, index bytes, peak RSS."""
    import faiss

    from negminer.mining import index as index_module

    if way == "plain":

        def plain_add(index, vectors, first, stop):
            for low in range(first, stop, index_module.BLOCK_ROWS):
                index.add(index_module.read_rows(vectors, low, min(low + index_module.BLOCK_ROWS, stop)))

        index_module.add_rows = plain_add
    vectors = np.load(path, mmap_mode="r")
    docs, dim = vectors.shape
    factory = index_module.choose_factory(docs, dim, kind="auto", exact_max_docs=IndexConfig().exact_max_docs)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(index_module._training_sample(vectors, index, 12))
    release(vectors)
    trained = _vm_hwm()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS: the peak below is the add's
    start = time.perf_counter()
    index_module.add_rows(index, vectors, 0, docs)
    seconds = time.perf_counter() - start
    size = len(faiss.serialize_index(index))
    print(f"{way}\t{factory}\t{seconds:.1f}\t{size}\t{_vm_hwm()}\t{trained}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--way", choices=["plain", "reserved"], help=argparse.SUPPRESS)  # a child's build
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.way:
        build(args.way, args.vectors)
        return
    print(f"IVF index of {args.docs:,} clustered {args.dim}-d vectors, each way in a fresh process")
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        path = f"{scratch}/docs.npy"
        np.save(path, _clustered(args.docs, args.dim))
        for way in ("plain", "reserved"):
            command = [sys.executable, "-m", "bench.index_memory", "--vectors", path, "--way", way]
            rows[way] = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().split("\t")
    vectors_gb = args.docs * args.dim * 4 / 1e9
    print(f"the vectors alone: {vectors_gb:.2f} GB (memory-mapped, as the index stage reads docs.npy)\n")
    print("| add | factory | add s | index GB | peak RSS while adding GB | peak RSS while training GB |")
    print("|---|---|---:|---:|---:|---:|")
    for way, (_, factory, seconds, size, peak, trained) in rows.items():
        gb = [f"{int(n) / 1e9:.2f}" for n in (size, peak, trained)]
        print(f"| {way} | {factory} | {float(seconds):.1f} | {' | '.join(gb)} |")
    plain, reserved = (int(rows[w][4]) for w in ("plain", "reserved"))
    print(f"\npeak RSS reserved / plain: {reserved / plain:.2f} ({(plain - reserved) / 1e9:.2f} GB less)")


if __name__ == "__main__":
    main()
