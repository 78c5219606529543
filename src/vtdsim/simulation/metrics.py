"""What a timed run measured: a bounded latency histogram and the counters a result reports,
taken as differences from the model's own counters (unit stats, caches, platform exits) over
the measured interval.

Not modelled: exact percentiles (the histogram keeps 64 buckets per power of two, ~1.1%
resolution, so memory stays flat however long the run).
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from functools import reduce
from operator import add

SUB_BITS = 6  # 64 buckets per power of two

# ``start`` plus ``values`` added left to right, each sum rounded as ``+=`` rounds it.
# CPython 3.11's sum() does exactly that for floats (bltinmodule.c builtin_sum_impl: one C
# double, ``f_result += item``), without a Python call per value as reduce(add) makes; from
# 3.12 sum() compensates (Neumaier), so reduce(add) there.
if sys.version_info < (3, 12):
    ordered_sum = sum
else:  # pragma: no cover - the pinned interpreter is 3.11
    def ordered_sum(values, start):
        return reduce(add, values, start)


def _bucket_of(ns: float) -> int:
    """The bucket of a latency: its integer ns (0 below 1), exact below 64, else the top
    SUB_BITS bits below the leading one and the octave; buckets rise with the value."""
    value = int(ns) if ns > 0 else 0  # max(0, int(ns))
    low = 1 << SUB_BITS
    if value < low:
        return value
    shift = value.bit_length() - SUB_BITS - 1
    return (shift + 1) << SUB_BITS | (value >> shift) - low


def _bucket_value(bucket: int) -> int:
    """The smallest value of ``bucket`` (exact below 64 ns; ``Histogram.fold`` buckets)."""
    if bucket < 1 << SUB_BITS:
        return bucket
    shift = (bucket >> SUB_BITS) - 1
    return ((bucket & ((1 << SUB_BITS) - 1)) + (1 << SUB_BITS)) << shift


class Histogram:
    """Latencies in integer ns, bucketed; ``percentile`` returns a bucket's lower bound.

    ``add`` is the bound ``append`` of a list of pending values (one C call per value, a
    hot-path cost): they are folded into the buckets, count and total - in the order they
    came, so the float total is the same sum - by ``fold``, which every read does first and
    the run calls now and then (``run.Stop``) so memory stays flat."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self._n = 0
        self._total = 0.0
        self._pending: list[float] = []
        self.add = self._pending.append

    def __getstate__(self) -> dict:
        self.fold()
        state = self.__dict__.copy()
        del state["add"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.add = self._pending.append

    def fold(self) -> None:
        """The pending values into count, total and buckets.  The total is summed in the
        order they came (``ordered_sum`` adds left to right, as ``+=`` one by one did); the
        buckets are counted on the sorted values a bucket at a time - a bucket holds every
        value below the next bucket's lower bound, found by bisection - so the work per
        value is C's (a run's latencies fall in a few dozen buckets)."""
        pending = self._pending
        if not pending:
            return
        self._total = ordered_sum(pending, self._total)
        self._n += len(pending)
        values, counts = sorted(pending), self.counts
        i, n = 0, len(values)
        while i < n:
            bucket = _bucket_of(values[i])
            end = bisect_left(values, _bucket_value(bucket + 1), i)
            counts[bucket] += end - i
            i = end
        pending.clear()

    @property
    def n(self) -> int:
        self.fold()
        return self._n

    @property
    def total(self) -> float:
        self.fold()
        return self._total

    def percentile(self, p: float) -> int:
        n = self.n
        if not n:
            return 0
        rank, seen = p / 100 * n, 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return _bucket_value(bucket)
        return _bucket_value(max(self.counts))

    @property
    def mean(self) -> float:
        n = self.n
        return self._total / n if n else 0.0


@dataclass
class OpTimes:
    """Mean duration of one kind of driver call (CPU time, waits and lock spinning
    included)."""

    n: int = 0
    total: float = 0.0

    def add(self, ns: float) -> None:
        self.n += 1
        self.total += ns

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


def model_counters(machine) -> Counter:
    """The model's cumulative counters a result is the difference of: the driver's queue
    (``machine.unit``) and the translations of the devices' DMA (``machine.dma_unit``: the
    host's unit under a guest whose device is assigned)."""
    unit, dma = machine.unit, machine.dma_unit
    out = Counter({k: v for k, v in unit.stats.items() if k.startswith("desc:")})
    out["iqt_writes"] = unit.stats["iqt_writes"]
    for key in ("iotlb_miss", "walks", "walk_reads", "faults"):
        out[key] = dma.stats[key]
    out["iotlb_hit"] = dma.iotlb.stats.hit
    for level, misses in enumerate(dma.pscache.level_misses):
        if level:
            out[f"pscache_miss_l{level}"] = misses
    out["exits"] = machine.platform.exits
    out["vmm_ns"] = machine.platform.vmm_ns
    return out


@dataclass
class Measure:
    """Everything a workload records while it runs."""

    ios: int = 0
    bytes: int = 0
    translations: int = 0  # 4 KiB pages the devices' DMAs touched: one translation each
    dropped: int = 0
    cpu_busy_ns: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    penalty: Histogram = field(default_factory=Histogram)
    map: OpTimes = field(default_factory=OpTimes)
    unmap: OpTimes = field(default_factory=OpTimes)

    def fold(self) -> None:
        """Fold the histograms' pending values (``Histogram.add``)."""
        self.latency.fold()
        self.penalty.fold()
