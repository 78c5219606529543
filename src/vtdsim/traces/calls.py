"""Reconstruct the driver calls behind a recorded guest trace: which ``iommu_map_sg`` /
``iommu_map`` and ``iommu_unmap_fast`` calls (drivers/iommu/iommu.c, dma-iommu.c) produced the
``iommu:map`` / ``iommu:unmap`` events of a Linux 6.1 or 6.12 ftrace (linux-driver.md 1.2, 3.2).

``__iommu_map`` emits one ``map`` event per physically contiguous chunk, and ``iommu_map_sg``
maps the chunks of one scatter-list back to back from one IOVA, then runs ``iotlb_sync_map``
once over their union.  So a ``map`` event continues the call of its *stream* - one task on one
CPU, or one CPU's interrupt context (an interrupt on that CPU is another stream: ftrace prints
each line's CPU and context flags; with several CPUs their lines interleave) - only when all of
these hold.  Rules that follow from the code (6.1's and 6.12's alike):

* its IOVA starts where the previous chunk ended (one IOVA range per call, chunks back to back);
* its physical address does not continue the previous chunk's (``__iommu_map_sg`` merges
  physically contiguous segments into one ``__iommu_map``, so such a chunk would be part of
  the previous one);
* the call's start stays size-aligned for the grown size (``iommu_dma_alloc_iova`` allocates
  the whole range at once with ``alloc_iova_fast(..., size_aligned=true)``, the size rounded
  up to a power of two).

And measured on the recordings, where the code leaves the choice open (checked against the
caching-mode ones, where every call's PSI shows where it ended):

* the stream logged nothing else since the previous chunk: the map loop logs only its chunks,
  and ``iotlb_sync_map`` follows the last one (under caching mode its ``qi_submit``; 6.12's
  ``cache_tag_flush_range_np``), so a caching-mode call ends at its flush - two scatter-lists
  mapped back to back at contiguous IOVAs stay two calls;
* it follows within ``CONTINUE_GAP_US`` (50 ms, longer than the vCPU stalls the recordings
  show inside one call: a 16-chunk scatter-list of linux612-legacy-cm stalled 3.9 ms after its
  first chunk) - unless the trace marks every map call's end: from its first
  ``cache_tag_flush_range_np`` on (6.12's ``intel_iommu_iotlb_sync_map`` under caching mode,
  once per map call) a call ends only at its stream's next line, so a task preempted between
  two chunks of one call for longer stays one call;
* no unmap touched the pending call's IOVAs (that call has returned: NVMe's next request may get
  the IOVAs just above it, rcache reuse, within the gap);
* IRQs are on: virtio-blk (6.1 ``vring_map_one_sg``) maps each scatter-list entry with its own
  ``dma_map_page`` under the virtqueue lock, IRQs off, and its IOVAs often do continue upwards
  (rcache reuse); ``iommu_map_sg``'s callers in the recordings (blk-mq ``dma_map_sg``,
  ``dma_alloc_coherent``) run with IRQs on.  So a map logged with IRQs off is a call of its own.

``unmap`` events are one per call.

Only map/unmap events shape the calls: ``qi_submit`` events (the answer replay compares with)
are passed through untouched, in trace order; one ends its stream's pending call (the stream
did something else) but never shapes a call, and replay takes from them only where each
stream took the queue (cpus.py).  A map call is
known to be complete only when its stream does something else or the gap has passed, so items
are held in a small look-ahead buffer and a call is placed at its *last* chunk, where Linux
runs its ``iotlb_sync_map``.

Not handled: attach/detach and group events inside the trace (counted as ignored; the boot's,
which 6.12's traces show, are replay.py's ``skip_boot_mappings``), a task migrating CPUs
between two chunks of one call (it would be split), drivers that call ``dma_map_sg`` with IRQs
off (their calls would be split per chunk).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vtdsim.traces import events as ev

# A CPU may stall inside one iommu_map_sg for as long as the host does not run its vCPU (the
# recordings show stalls up to 45 ms); past this a pending call is complete even if its
# stream stays silent, which also bounds the look-ahead buffer.
CONTINUE_GAP_US = 50_000
PAGE_SIZE = 4096


def _size_aligned(iova: int, size: int) -> bool:
    """Could one DMA-API call own ``[iova, iova + size)``?  6.1 ``iommu_dma_alloc_iova``
    allocates a call's whole range at once, size-aligned (``alloc_iova_fast(..., true)``: the
    start aligned to the size rounded up to a power of two, in pages); a call growing past
    a chunk keeps that start, so each prefix must already fit the alignment."""
    pages = -(-size // PAGE_SIZE)
    return iova % (PAGE_SIZE << max(pages - 1, 0).bit_length()) == 0


def stream_key(cpu: int, pid: int, context: str) -> tuple:
    """The sequential unit of execution a trace line belongs to: a task on its CPU, or one
    CPU's softirq, hard-IRQ or NMI context.  An interrupt runs to completion before what it
    interrupted resumes, and hard IRQs (run with IRQs off) or softirqs do not nest on one CPU,
    so one CPU's lines of one interrupt context follow one another whatever task they
    interrupted (the pid ftrace prints there is the interrupted task's)."""
    if context == ev.TASK:
        return cpu, context, pid
    return cpu, context


@ev.record
class SubmitMark:
    """Where a stream took the invalidation queue: a ``qi_submit`` line's header only (its
    descriptor words are the recorded answer and stay with the recorded side)."""

    line: int
    ts_us: int
    stream: tuple


@ev.record
class MapCall:
    """One ``iommu_map_sg`` (or ``iommu_map``) call: ``chunks`` are ``(paddr, size)`` mapped
    back to back from ``iova``; ``line``/``ts_us`` are those of the last chunk; ``stream``
    is ``stream_key`` of its lines."""

    line: int
    ts_us: int
    cpu: int
    context: str
    stream: tuple
    iova: int
    chunks: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.chunks)


@ev.record
class UnmapCall:
    """One unmap call (``__iommu_dma_unmap``), as its ``iommu:unmap`` event shows it."""

    line: int
    ts_us: int
    cpu: int
    context: str
    stream: tuple
    iova: int
    size: int
    unmapped_size: int


Call = MapCall | UnmapCall


@dataclass
class CallStats:
    """How many calls of each kind were reconstructed, and what was not used."""

    map_calls: int = 0
    map_sg_calls: int = 0  # calls of more than one chunk
    map_chunks: int = 0
    unmap_calls: int = 0
    closed_by_gap: int = 0  # map calls closed by CONTINUE_GAP_US rather than by their stream
    by_context: Counter = field(default_factory=Counter)  # ("map"|"unmap", context) -> calls
    ignored: Counter = field(default_factory=Counter)  # event name -> count

    def lines(self) -> list[str]:
        single = self.map_calls - self.map_sg_calls
        out = [f"map calls {self.map_calls} ({single} of one chunk, {self.map_sg_calls} "
               f"scatter-list calls of several; {self.map_chunks} map events)",
               f"unmap calls {self.unmap_calls}"]
        contexts = ", ".join(f"{kind} {ctx} {n}" for (kind, ctx), n in
                             sorted(self.by_context.items()))
        out.append(f"by context: {contexts or 'none'}")
        if self.closed_by_gap:
            out.append(f"map calls closed by the {CONTINUE_GAP_US} us gap rule: "
                       f"{self.closed_by_gap}")
        if self.ignored:
            names = ", ".join(f"{name} {n}" for name, n in sorted(self.ignored.items()))
            out.append(f"events not replayed: {names}")
        return out


class _PendingMap:
    """A map call still collecting chunks; ``slot`` is its place in the look-ahead buffer."""

    __slots__ = ("first", "last", "chunks", "end", "slot")

    def __init__(self, event: ev.Map, slot: int):
        self.first = self.last = event
        self.chunks = [(event.paddr, event.size)]
        self.end = event.end
        self.slot = slot

    def continues(self, event: ev.Map, sync_marked: bool) -> bool:
        last = self.last
        return (event.iova == self.end and not event.irqs_off
                and event.paddr != last.paddr + last.size
                and _size_aligned(self.first.iova, event.end - self.first.iova)
                and (sync_marked or event.ts_us - last.ts_us <= CONTINUE_GAP_US))

    def add(self, event: ev.Map, slot: int) -> None:
        self.last = event
        self.chunks.append((event.paddr, event.size))
        self.end = event.end
        self.slot = slot

    def call(self) -> MapCall:
        last = self.last
        return MapCall(last.line, last.ts_us, last.cpu, last.context,
                       stream_key(last.cpu, last.pid, last.context), self.first.iova,
                       tuple(self.chunks))


def _stream(event: ev.GuestEvent) -> tuple:
    return stream_key(event.cpu, event.pid, event.context)


class _Reconstructor:
    """The look-ahead buffer: slots hold a ready item, a pending map call, or None (a slot
    a call has moved away from).  Slots are numbered; ``base`` is the number of ``buf[0]``."""

    def __init__(self, stats: CallStats):
        self.stats = stats
        self.buf: deque = deque()
        self.base = 0
        self.pending: dict[tuple, _PendingMap] = {}
        self.sync_marked = False  # the trace marks each map call's end (``_synced``)

    def _append(self, item) -> int:
        self.buf.append(item)
        return self.base + len(self.buf) - 1

    def feed(self, event: ev.GuestEvent) -> None:
        self._close_stale(event.ts_us)
        kind = type(event)
        if kind is not ev.Map and self.pending:
            # The map loop logs nothing but its chunks: the stream's next other line comes
            # after the call's iotlb_sync_map (its qi_submit under caching mode; 6.12's
            # cache_tag_flush_range_np).
            self._close(_stream(event))
        if kind is ev.QiSubmit:
            self._append(event)
        elif kind is ev.Map:
            self._map(event)
        elif kind is ev.CacheTagFlush and event.kind == "range_np":
            self._synced(event)
        elif kind is ev.Unmap:
            self._close_unmapped(event)
            self._append(UnmapCall(event.line, event.ts_us, event.cpu, event.context,
                                   stream_key(event.cpu, event.pid, event.context),
                                   event.iova, event.size, event.unmapped_size))
            self.stats.unmap_calls += 1
            self.stats.by_context["unmap", event.context] += 1
        else:
            self.stats.ignored[getattr(event, "name", kind.__name__)] += 1

    def _map(self, event: ev.Map) -> None:
        key = _stream(event)
        self.stats.map_chunks += 1
        pending = self.pending.get(key)
        if pending is not None and pending.continues(event, self.sync_marked):
            # The call moves to its newest chunk: its sync_map runs after the last one.
            self.buf[pending.slot - self.base] = None
            pending.add(event, self._append(pending))
            return
        self._close(key)
        pending = _PendingMap(event, self.base + len(self.buf))
        self.buf.append(pending)
        if event.irqs_off:
            self._finish(pending)  # a dma_map_page under a lock (virtio): a call of its own
        else:
            self.pending[key] = pending

    def _close(self, key: tuple) -> None:
        pending = self.pending.pop(key, None)
        if pending is not None:
            self._finish(pending)

    def _finish(self, pending: _PendingMap) -> None:
        call = pending.call()
        self.buf[pending.slot - self.base] = call
        self.stats.map_calls += 1
        self.stats.map_sg_calls += len(call.chunks) > 1
        self.stats.by_context["map", call.context] += 1

    def _close_unmapped(self, event: ev.Unmap) -> None:
        """A range being unmapped was mapped by a call that has returned: an unmap touching a
        pending call ends it (the next request may reuse the IOVAs just above it)."""
        for key in [key for key, p in self.pending.items()
                    if event.iova < p.end and p.first.iova < event.end]:
            self._close(key)

    def _synced(self, event: ev.CacheTagFlush) -> None:
        """6.12's ``intel_iommu_iotlb_sync_map`` traces ``cache_tag_flush_range_np`` per tag
        when the domain flushes at map time (caching mode): its stream's call has ended.
        From the first such event on, calls end there, not by the gap (a task preempted
        between two chunks of one call stays one call)."""
        self.stats.ignored[type(event).__name__] += 1
        self.sync_marked = True
        self._close(_stream(event))

    def _close_stale(self, now_us: int) -> None:
        if not self.pending or self.sync_marked:
            return
        stale = [key for key, p in self.pending.items() if now_us - p.last.ts_us > CONTINUE_GAP_US]
        for key in stale:
            self.stats.closed_by_gap += 1
            self._close(key)

    def ready(self) -> Iterator:
        """Items at the front of the buffer that can no longer change."""
        buf = self.buf
        while buf and not isinstance(buf[0], _PendingMap):
            item = buf.popleft()
            self.base += 1
            if item is not None:
                yield item

    def finish(self) -> Iterator:
        for key in sorted(self.pending):
            self._close(key)
        yield from self.ready()


def reconstruct_calls(events: Iterable[ev.GuestEvent],
                      stats: CallStats | None = None) -> Iterator[Call | ev.QiSubmit]:
    """``MapCall`` / ``UnmapCall`` items in the order Linux made the calls, with the trace's
    ``QiSubmit`` events passed through in trace order; ``stats`` counts what was built."""
    rec = _Reconstructor(stats if stats is not None else CallStats())
    for event in events:
        rec.feed(event)
        if rec.buf:
            yield from rec.ready()
    yield from rec.finish()
