"""Keep glibc from handing a forward pass's tensors back to the kernel between batches.

A transformer's forward pass on the CPU allocates the same large tensors batch after batch
(all-MiniLM-L6-v2 at 32 texts x 256 tokens: 50 MB for each feed-forward activation). glibc
serves an allocation over its mmap threshold (at most 32 MB) with mmap and unmaps it on free,
trims the top of its heap above the trim threshold, and deletes a thread's heap as soon as it
is empty; so every batch faults its tensors' pages in again and the kernel zeroes them. On
NFCorpus that is about 2 million page faults and a tenth of the encode's CPU time spent in the
kernel (docs/benchmarks.md). PyTorch's CPU tuning guide recommends preloading jemalloc or
tcmalloc for this; a running process cannot swap its allocator, so while the forward passes run
:func:`tensor_memory_kept` sets glibc's own knobs instead (``mallopt``), and afterwards restores
them and gives the kept memory back (``malloc_trim``). :func:`releases_memory` wraps each
pipeline stage to give back what the stage freed (:func:`trim_heap`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, wraps
from typing import Any, TypeVar

Stage = TypeVar("Stage", bound=Callable[..., Any])

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4

_KEEP = {
    M_MMAP_MAX: 0,  # large chunks come from the heap, where a freed one is reused by the next batch
    M_TRIM_THRESHOLD: 1 << 30,  # the heap's free top is kept (up to 1 GiB)
    M_TOP_PAD: 64 << 20,  # a thread's heap (64 MiB at most) is not deleted when it empties
}
# Setting any parameter turns off glibc's dynamic thresholds, so afterwards the thresholds are
# set where the dynamic ones settle once a 32 MiB chunk has been freed, and the rest to defaults.
_AFTER = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_TOP_PAD: 128 << 10}

_lock = threading.Lock()
_users = 0


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> None:
    for parameter, value in values.items():
        libc.mallopt(parameter, value)


@contextmanager
def tensor_memory_kept() -> Iterator[None]:
    """Keep freed memory in glibc's heap for reuse inside the block; release it at the end.

    Nothing happens off glibc. The settings are process-wide: nested or concurrent blocks keep
    them until the last one ends.

    Example:
        >>> with tensor_memory_kept():
        ...     vectors = model.encode(texts)  # doctest: +SKIP
    """
    global _users
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _users == 0:
            _set(libc, _KEEP)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _set(libc, _AFTER)
                libc.malloc_trim(0)


def trim_heap() -> None:
    """Collect garbage, then give free heap pages back to the system (nothing off glibc).

    glibc keeps freed blocks for reuse: a deleted 1M-document IVF index (1.5 GB, thousands of
    list allocations) left 1.2 GB of the process resident until ``malloc_trim``. Stages run
    one after another in one process, so without a trim one stage's peak carries into the next.
    """
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def freeze_long_lived() -> None:
    """Move every object alive now out of the garbage collector's reach (:func:`gc.freeze`).

    Call it where what is alive lives as long as the process: after the imports, after the
    model is loaded. A full collection then scans only what came after, so each stage's
    :func:`trim_heap` costs milliseconds instead of the ~0.3 s it takes to walk the half a
    million objects torch, transformers and Prefect leave. Frozen objects are still freed when
    their last reference goes; only a reference cycle among them would never be collected.
    """
    gc.collect()
    gc.freeze()


def releases_memory(stage: Stage) -> Stage:
    """`stage`, trimming the heap (:func:`trim_heap`) when it returns or raises."""

    @wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return stage(*args, **kwargs)
        finally:
            trim_heap()

    return run  # type: ignore[return-value]
