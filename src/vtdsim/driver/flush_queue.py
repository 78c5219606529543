"""The DMA API's flush queue, Linux drivers/iommu/dma-iommu.c (``queue_iova``, ``fq_ring_free``,
``fq_flush_iotlb``, ``fq_flush_timeout``); identical in 6.1 and mainline (per-CPU rings of 256,
10 ms timer), the flush itself being the domain's ``flush_iotlb_all``.

A lazy unmap does not invalidate: it queues the IOVA range and the page-table pages it freed on
this CPU's ring, stamped with the flush-start counter.  An entry may be released (its pages
freed, its IOVA reused) once a flush that *started after it was queued* has *finished*
(``counter < finish_cnt``).  A flush happens when a ring is full, or when the timer fires; the
timer is armed once per batch (``fq_timer_on``), not per entry, so it fires at most 10 ms after
the first entry of a batch.  The timer is its own actor: whoever drives time (the simulator,
trace replay, the checker) calls ``fq_flush_timeout(now_ns)`` when ``timer_expires_ns`` passes.

Not modelled: jiffies rounding and timer slack (6.1 at HZ=250 fired about every 16 ms in the
recordings: pass ``timeout_ns`` to mimic it), the single shared queue of 32768 entries with a 1 s
timeout (``shadow_on_flush``, s390 only), CPU hot-unplug draining.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from vtdsim.driver.steps import Annotate, FreePage, Lock, ReuseIova, Step, Unlock

IOVA_FQ_SIZE = 256  # IOVA_DEFAULT_FQ_SIZE: 255 usable, the ring is full when tail + 1 == head
IOVA_FQ_TIMEOUT_NS = 10_000_000  # IOVA_DEFAULT_FQ_TIMEOUT: 10 ms
PAGE_SHIFT = 12

FlushFn = Callable[[], Generator[Step, Any, Any]]
ReleaseFn = Callable[[int, int, int], None]  # (iova_pfn, pages, cpu): free_iova_fast


@dataclass
class FqEntry:
    """``struct iova_fq_entry``."""

    iova_pfn: int
    pages: int
    freelist: list[int]
    counter: int


@dataclass
class IovaFq:
    """One CPU's ring (``struct iova_fq``)."""

    lock: str
    size: int = IOVA_FQ_SIZE
    entries: dict[int, FqEntry] = field(default_factory=dict)
    head: int = 0
    tail: int = 0

    def full(self) -> bool:
        """``fq_full``: one slot stays empty so head == tail means empty."""
        return (self.tail + 1) % self.size == self.head

    def __len__(self) -> int:
        return (self.tail - self.head) % self.size

    def add(self, entry: FqEntry) -> None:
        """``fq_ring_add``."""
        self.entries[self.tail] = entry
        self.tail = (self.tail + 1) % self.size


class FlushQueue:
    """The flush-queue part of ``struct iommu_dma_cookie``: per-CPU rings, the start/finish
    counters, the timer flag.  ``flush_iotlb_all`` is a generator factory for the domain's
    ``flush_iotlb_all``; ``release`` returns an IOVA range to the IOVA allocator."""

    def __init__(
        self,
        name: str,
        ncpus: int,
        flush_iotlb_all: FlushFn,
        release: ReleaseFn,
        *,
        size: int = IOVA_FQ_SIZE,
        timeout_ns: int = IOVA_FQ_TIMEOUT_NS,
    ):
        self.name = name
        self.flush_iotlb_all = flush_iotlb_all
        self.release = release
        self.timeout_ns = timeout_ns
        self.rings = [IovaFq(f"{name}.fq{cpu}.lock", size) for cpu in range(ncpus)]
        self.flush_start_cnt = 0
        self.flush_finish_cnt = 0
        self.timer_on = False
        self.timer_expires_ns: int | None = None
        self.counters: Counter[str] = Counter()

    # -- releasing entries ---------------------------------------------------------------------
    def fq_ring_free(self, cpu: int) -> Generator[Step, Any, int]:
        """Free every entry a finished flush covers, oldest first (caller holds the ring lock):
        page-table pages go back to the page allocator and the IOVA to the IOVA allocator only
        now - the flush that made them unreachable has completed."""
        fq = self.rings[cpu]
        freed = 0
        while fq.head != fq.tail:
            entry = fq.entries[fq.head]
            if entry.counter >= self.flush_finish_cnt:
                break
            for page in entry.freelist:
                yield FreePage(addr=page, what="page-table page", why="fq_ring_free")
            yield ReuseIova(
                iova=entry.iova_pfn << PAGE_SHIFT, size=entry.pages << PAGE_SHIFT,
                why="fq_ring_free",
            )
            self.release(entry.iova_pfn, entry.pages, cpu)
            del fq.entries[fq.head]
            fq.head = (fq.head + 1) % fq.size
            freed += 1
        self.counters["entries_freed"] += freed
        return freed

    def fq_flush_iotlb(self, why: str) -> Generator[Step, Any, None]:
        """``fq_flush_iotlb``: start counter, the domain-wide flush, finish counter."""
        self.flush_start_cnt += 1
        self.counters["flushes"] += 1
        self.counters[f"flushes_{why}"] += 1
        yield Annotate(event="fq_flush", data=(self.name, why))
        yield from self.flush_iotlb_all()
        self.flush_finish_cnt += 1

    # -- the two actors ------------------------------------------------------------------------
    def queue_iova(
        self, cpu: int, iova_pfn: int, pages: int, freelist: list[int], now_ns: int
    ) -> Generator[Step, Any, None]:
        """``queue_iova``: runs on the unmapping CPU (often in hardirq context)."""
        fq = self.rings[cpu]
        yield Lock(name=fq.lock, why="queue_iova")
        # Entries another CPU's flush already covered go first (fq_ring_free).
        yield from self.fq_ring_free(cpu)
        if fq.full():
            yield from self.fq_flush_iotlb("full")
            yield from self.fq_ring_free(cpu)
        fq.add(FqEntry(iova_pfn, pages, list(freelist), self.flush_start_cnt))
        self.counters["queued"] += 1
        yield Unlock(name=fq.lock, why="queue_iova")
        # Armed once per batch: atomic_xchg(&fq_timer_on, 1) elects one arming CPU.
        if not self.timer_on:
            self.timer_on = True
            self.timer_expires_ns = now_ns + self.timeout_ns
            self.counters["timer_armed"] += 1

    def timer_due(self, now_ns: int) -> bool:
        return self.timer_expires_ns is not None and now_ns >= self.timer_expires_ns

    def fq_flush_timeout(self, now_ns: int) -> Generator[Step, Any, None]:
        """``fq_flush_timeout`` (softirq): clear the flag, flush, free on every CPU's ring."""
        self.timer_on = False
        self.timer_expires_ns = None
        self.counters["timer_fired"] += 1
        yield Annotate(event="fq_timer", data=(self.name, now_ns))
        yield from self.fq_flush_iotlb("timer")
        for cpu, fq in enumerate(self.rings):
            yield Lock(name=fq.lock, why="fq_flush_timeout")
            yield from self.fq_ring_free(cpu)
            yield Unlock(name=fq.lock, why="fq_flush_timeout")

    def pending(self) -> int:
        """Entries still queued on all CPUs."""
        return sum(len(fq) for fq in self.rings)
