import gc
import json
import os
import platform
import subprocess
import sys
import weakref

import pytest

from negminer.mining.allocator import _glibc, freeze_long_lived, releases_memory

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

MB = 1 << 20


# The malloc settings are process-wide, and a library loaded by an earlier test in the same
# process may have changed them (one CI run under load saw no faults at all outside the block):
# the fault counts are measured in a fresh interpreter.
_FAULTS = """
import json, resource
import numpy as np
from negminer.mining.allocator import tensor_memory_kept

MB = 1 << 20

def allocate_touch_free(size):
    block = np.empty(size, np.uint8)
    block[::4096] = 1  # touch every page
    del block

def faults(rounds=12, size=48 * MB):
    # One round first, not counted: whatever the heap held before, the counted rounds find the
    # block's memory either kept (reused, no faults) or handed back (faulted in every round).
    allocate_touch_free(size)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(rounds):
        allocate_touch_free(size)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
"""


def _faults_in_a_fresh_process(body: str) -> dict[str, int]:
    """Run `body` after :data:`_FAULTS` in a new interpreter; it prints a JSON object of fault counts."""
    done = subprocess.run([sys.executable, "-c", _FAULTS + body], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_big_blocks_are_reused_inside_and_handed_back_after():
    counts = _faults_in_a_fresh_process(
        """
outside = faults()
with tensor_memory_kept():
    inside = faults()
print(json.dumps({"outside": outside, "inside": inside, "after": faults()}))
"""
    )
    huge_pages_per_round = 48 * MB // (2 * MB)
    assert counts["outside"] >= 12 * huge_pages_per_round, counts  # every round faults its block in again
    assert counts["inside"] < counts["outside"] / 4, counts  # the freed block is reused by the next round
    assert counts["after"] > 2 * counts["inside"], counts  # restored: freed blocks go back to the kernel again


def test_an_inner_block_ending_does_not_restore_the_settings():
    counts = _faults_in_a_fresh_process(
        """
with tensor_memory_kept():
    with tensor_memory_kept():
        pass
    still_kept = faults()
print(json.dumps({"still_kept": still_kept, "restored": faults()}))
"""
    )
    assert counts["still_kept"] < counts["restored"] / 4, counts


def _anon_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024


@pytest.mark.skipif(_glibc() is None, reason="malloc_trim is glibc's")
def test_a_stage_gives_back_the_heap_it_freed() -> None:
    """Heap blocks freed between live ones stay resident (measured: +200 MB) until the trim."""

    @releases_memory
    def stage() -> list[bytearray]:
        blocks, keep = [], []
        for i in range(6000):  # 40 KB each (240 MB), under the mmap threshold: on the heap
            blocks.append(bytearray(os.urandom(16) * 2500))
            if i % 100 == 99:
                keep.append(bytearray(1000))  # live blocks between the freed ones: no trim at the top
        del blocks
        return keep

    before = _anon_mb()
    kept = stage()
    assert _anon_mb() - before < 60, "the 240 MB freed inside the stage went back to the system"
    assert kept


class _Node:
    pass


def test_after_a_freeze_a_collection_skips_what_lived_and_still_frees_new_cycles() -> None:
    freeze_long_lived()
    assert gc.get_freeze_count() > 1000  # the interpreter's and the imports' objects
    before = gc.get_freeze_count()
    node = _Node()
    node.itself = node
    gone = weakref.ref(node)
    del node
    gc.collect()
    # collected, and nothing newly frozen (frozen objects other threads release can lower the count)
    assert gone() is None and gc.get_freeze_count() <= before
