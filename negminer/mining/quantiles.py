"""Exact quantiles of a float32 column streamed in batches, in bounded memory.

Contract: :class:`StreamedQuantiles` gives, for the probabilities it was made with, the
values ``numpy.quantile(all_values, p)`` (method ``linear``) would give for the
concatenation of every batch, without holding the values: two passes over the same batches,
the first counting each value's top 16 bits (65,536 bins), the second counting the low 16
bits inside only the bins that hold a needed order statistic. A float32 is determined by its
32 bits, so the order statistics, and the interpolation between them, are exact. Memory:
two 65,536-bin counters per needed order statistic (at most two per probability).

Example:
    >>> q = StreamedQuantiles((0.5,))
    >>> for batch in batches: q.first(batch)  # doctest: +SKIP
    >>> for batch in batches: q.second(batch)  # doctest: +SKIP
    >>> q.values()  # doctest: +SKIP
    [0.4731]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BINS = 1 << 16
_SIGN = np.uint32(0x80000000)


def sortable_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the float32 order of `values` (n,)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _from_keys(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, np.uint32)
    bits = np.where(keys & _SIGN, keys & ~_SIGN, ~keys)
    return bits.astype(np.uint32).view(np.float32)


class StreamedQuantiles:
    """Exact linear-interpolation quantiles over two passes of the same float32 batches."""

    def __init__(self, probabilities: Sequence[float]) -> None:
        self.probabilities = tuple(float(p) for p in probabilities)
        self.count = 0
        self._coarse = np.zeros(_BINS, np.int64)
        self._fine: dict[int, np.ndarray] | None = None

    def first(self, values: np.ndarray) -> None:
        """Pass 1: count the top 16 bits of each value of one batch."""
        keys = sortable_keys(values)
        self._coarse += np.bincount(keys >> np.uint32(16), minlength=_BINS)
        self.count += len(keys)

    def _ranks(self) -> list[tuple[int, int, float]]:
        """(lower rank, upper rank, fraction) per probability, as numpy's linear method."""
        out = []
        for p in self.probabilities:
            index = (self.count - 1) * p
            low = int(np.floor(index))
            out.append((low, min(low + 1, self.count - 1), index - low))
        return out

    def _bin_of(self, rank: int) -> tuple[int, int]:
        """(coarse bin, rank within the bin) of the `rank`-th smallest value."""
        cumulative = np.cumsum(self._coarse)
        b = int(np.searchsorted(cumulative, rank, side="right"))
        return b, rank - int(cumulative[b] - self._coarse[b])

    def second(self, values: np.ndarray) -> None:
        """Pass 2 (the same batches again): count the low 16 bits inside the needed bins."""
        if self._fine is None:
            needed = {self._bin_of(r)[0] for low, high, _ in self._ranks() for r in (low, high)}
            self._fine = {b: np.zeros(_BINS, np.int64) for b in needed}
        keys = sortable_keys(values)
        top = keys >> np.uint32(16)
        for b, counts in self._fine.items():
            inside = keys[top == b] & np.uint32(0xFFFF)
            counts += np.bincount(inside, minlength=_BINS)

    def _value(self, rank: int) -> np.float32:
        b, within = self._bin_of(rank)
        low16 = int(np.searchsorted(np.cumsum(self._fine[b]), within, side="right"))
        return _from_keys(np.array([(b << 16) | low16], np.uint32))[0]

    def values(self) -> list[float]:
        """``numpy.quantile(values, p)`` for each probability; empty when no value was seen."""
        if self.count == 0:
            return []
        if self._fine is None:
            raise ValueError("StreamedQuantiles.values() needs the second pass over the same batches")
        out = []
        for low, high, fraction in self._ranks():
            pair = np.array([self._value(low), self._value(high)], np.float32)
            out.append(float(np.quantile(pair, fraction)))
        return out
