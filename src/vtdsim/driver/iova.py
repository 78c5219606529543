"""Linux's IOVA allocator, drivers/iommu/iova.c (``alloc_iova``'s top-down size-aligned search
``__alloc_and_insert_iova_range`` with its cached nodes, ``reserve_iova``, ``alloc_iova_fast`` /
``free_iova_fast`` with the per-CPU range caches) and dma-iommu.c ``iommu_dma_alloc_iova``
(power-of-two rounding, "try below 4 GiB first").

Ranges are page frame numbers (4 KiB granule).  An allocation of n pages is aligned to
``roundup_pow_of_two(n)`` and placed as high as possible below the limit; the search starts
below the last allocation (``cached_node`` / ``cached32_node``) and retries once from the limit
before failing.  Freed ranges of up to 32 pages (log2 orders 0..5, IOVA_RANGE_CACHE_MAX_SIZE 6)
go to the freeing CPU's magazines first (6.1: loaded/prev magazines of 128 entries, a depot of
32), which is why a range freed on CPU 1 is not reused by CPU 0 (the recordings' first maps:
0xfffff000, 0xffffe000, 0xffffd000 unmapped on CPU 1, then 0xffffc000 on CPU 0).

Not modelled: the rbtree itself (a sorted list gives the same answers), mainline's depot
reclaim worker and its unbounded depot, ``max32_alloc_size``'s fast failure (an optimisation
with the same outcome), CPU hot-unplug flushing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from vtdsim.errors import BadInput, SpecRuleBroken, hexval

IOVA_RANGE_CACHE_MAX_SIZE = 6  # log of the largest cached range + 1
IOVA_MAG_SIZE = 128  # 6.1 (mainline trimmed it so a magazine fits 1 KiB)
MAX_GLOBAL_MAGS = 32
PAGE_SHIFT = 12
DMA_BIT_MASK_32 = (1 << 32) - 1
# QEMU q35 with 2 GiB of RAM: the host-bridge MMIO windows (_CRS) and the MSI window that
# dma-iommu reserves (iova_reserve_pci_windows, iova_reserve_iommu_regions).  Read from QEMU's
# layout and consistent with the lazy recordings' lowest IOVA 0xbf480000 (unconfirmed).
Q35_2G_RESERVED = ((0x80000, 0xAFFFF), (0xC0000, 0xFEBFF), (0xFEE00, 0xFEEFF))


def _order(pages: int) -> int:
    """``order_base_2``."""
    return (pages - 1).bit_length()


@dataclass
class _CpuRcache:
    loaded: list[int] = field(default_factory=list)
    prev: list[int] = field(default_factory=list)


class IovaDomain:
    """``struct iova_domain`` with its rcaches; pfns, exclusive of ``start_pfn`` below."""

    def __init__(self, start_pfn: int = 1, *, ncpus: int = 2,
                 reserved: tuple[tuple[int, int], ...] = ()):
        if start_pfn < 1:
            raise BadInput("IOVA start_pfn must be at least 1 (IOVA 0 is never handed out)")
        self.start_pfn = start_pfn
        self.dma_32bit_pfn = 1 << (32 - PAGE_SHIFT)
        self._lo: list[int] = []  # sorted pfn_lo of every allocated or reserved range
        self._hi: dict[int, int] = {}  # pfn_lo -> pfn_hi
        self.cached_node: int | None = None  # pfn_lo of the cached range; None = the anchor
        self.cached32_node: int | None = None
        self.rcaches = [[_CpuRcache() for _ in range(ncpus)]
                        for _ in range(IOVA_RANGE_CACHE_MAX_SIZE)]
        self.depots: list[list[list[int]]] = [[] for _ in range(IOVA_RANGE_CACHE_MAX_SIZE)]
        # Searches and frees of the tree itself: each runs under iova_rbtree_lock in Linux
        # (the per-CPU rcache paths do not), which the timed simulator prices and contends.
        self.tree_ops = 0
        for lo, hi in reserved:
            self.reserve_iova(lo, hi)

    # -- the tree ------------------------------------------------------------------------------
    def _insert(self, lo: int, hi: int) -> None:
        bisect.insort(self._lo, lo)
        self._hi[lo] = hi

    def ranges(self) -> list[tuple[int, int]]:
        """Every range in the tree (allocated or reserved), ascending."""
        return [(lo, self._hi[lo]) for lo in self._lo]

    def reserve_iova(self, pfn_lo: int, pfn_hi: int) -> None:
        """``reserve_iova``: never hand out [pfn_lo, pfn_hi] (merging is not needed here)."""
        if pfn_hi < pfn_lo or self._overlaps(pfn_lo, pfn_hi):
            raise BadInput(f"reserve_iova {hexval('lo', pfn_lo)}-{hexval('hi', pfn_hi)} is "
                           "empty or overlaps an existing range")
        self._insert(pfn_lo, pfn_hi)

    def _overlaps(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_right(self._lo, hi)
        return i > 0 and self._hi[self._lo[i - 1]] >= lo

    def _ceiling(self, limit_pfn: int) -> int:
        """``__get_cached_rbnode``: the search starts below the cached node (or the anchor)."""
        node = self.cached32_node if limit_pfn <= self.dma_32bit_pfn else self.cached_node
        return len(self._lo) if node is None else bisect.bisect_left(self._lo, node)

    def _search(self, size: int, high: int, low: int, start: int) -> int | None:
        """Walk ranges downwards from index ``start`` (the one above the gap); the first
        size-aligned slot that fits in a gap wins (``__alloc_and_insert_iova_range``)."""
        align_mask = ~((1 << _order(size)) - 1)
        i = start
        while True:
            if i < len(self._lo):
                high = min(high, self._lo[i])
            new = (high - size) & align_mask
            below = self._hi[self._lo[i - 1]] if i > 0 else None
            if below is None or new > below or new < low:
                return new if high >= size and new >= low else None
            i -= 1

    def alloc_iova(self, size: int, limit_pfn: int) -> int:
        """``alloc_iova(size_aligned=true)``: the highest aligned slot at or below
        ``limit_pfn``; 0 when nothing fits."""
        self.tree_ops += 1
        limit = limit_pfn + 1  # the search's limit is exclusive
        start = self._ceiling(limit)
        retry_pfn = self._lo[start] if start < len(self._lo) else None
        new = self._search(size, limit, self.start_pfn, start)
        if new is None and retry_pfn is not None and self._hi[retry_pfn] < limit:
            # Retry the part above the cached node (iova_find_limit).
            top = bisect.bisect_left(self._lo, limit)
            new = self._search(size, limit, self._hi[retry_pfn] + 1, top)
        if new is None:
            return 0
        self._insert(new, new + size - 1)
        if new + size - 1 < self.dma_32bit_pfn:
            self.cached32_node = new
        else:
            self.cached_node = new
        return new

    def free_iova(self, pfn: int) -> None:
        """``__free_iova`` of the range starting at ``pfn``, with the cached-node update."""
        if pfn not in self._hi:
            raise SpecRuleBroken(f"free of IOVA {hexval('pfn', pfn)} that is not allocated",
                                 "iova.c free_iova")
        self.tree_ops += 1
        hi = self._hi.pop(pfn)
        i = bisect.bisect_left(self._lo, pfn)
        self._lo.pop(i)
        after = self._lo[i] if i < len(self._lo) else None  # rb_next of the freed node
        c32 = self.cached32_node
        # A cached node of None is the anchor (pfn_lo ~0): nothing is at or above it.
        if c32 is not None and (c32 == pfn or (hi < self.dma_32bit_pfn and pfn >= c32)):
            self.cached32_node = after
        if self.cached_node is not None and pfn >= self.cached_node:
            self.cached_node = after

    # -- rcaches ---------------------------------------------------------------------------------
    def alloc_iova_fast(self, size: int, limit_pfn: int, cpu: int = 0,
                        flush_rcache: bool = True) -> int:
        """Cached range first, then the tree; on failure flush every rcache once and retry
        (only when ``flush_rcache``)."""
        pfn = self._rcache_get(size, limit_pfn + 1, cpu)
        if pfn:
            return pfn
        pfn = self.alloc_iova(size, limit_pfn)
        if not pfn and flush_rcache:
            self.free_cpu_cached_iovas()
            pfn = self.alloc_iova(size, limit_pfn)
        return pfn

    def free_iova_fast(self, pfn: int, size: int, cpu: int = 0) -> None:
        """Into this CPU's magazine for the size's order, else back to the tree."""
        if pfn not in self._hi:
            raise SpecRuleBroken(f"free of IOVA {hexval('pfn', pfn)} that is not allocated",
                                 "iova.c free_iova_fast")
        order = _order(size)
        if order >= IOVA_RANGE_CACHE_MAX_SIZE:
            self.free_iova(pfn)
            return
        rc = self.rcaches[order][cpu]
        if len(rc.loaded) >= IOVA_MAG_SIZE:
            if len(rc.prev) < IOVA_MAG_SIZE:
                rc.loaded, rc.prev = rc.prev, rc.loaded
            else:
                full, rc.loaded = rc.loaded, []
                if len(self.depots[order]) < MAX_GLOBAL_MAGS:
                    self.depots[order].append(full)
                else:
                    for cached in full:
                        self.free_iova(cached)
        rc.loaded.append(pfn)

    def _rcache_get(self, size: int, limit: int, cpu: int) -> int:
        """``__iova_rcache_get`` + ``iova_magazine_pop``: the newest cached pfn that ends
        below the limit (LIFO), swapping in prev or a depot magazine when loaded is empty."""
        order = _order(size)
        if order >= IOVA_RANGE_CACHE_MAX_SIZE:
            return 0
        rc = self.rcaches[order][cpu]
        if not rc.loaded:
            if rc.prev:
                rc.loaded, rc.prev = rc.prev, rc.loaded
            elif self.depots[order]:
                rc.loaded = self.depots[order].pop()
        return _magazine_pop(rc.loaded, limit - size)

    def free_cpu_cached_iovas(self) -> None:
        """Every CPU's magazines and the depots go back to the tree."""
        for order in range(IOVA_RANGE_CACHE_MAX_SIZE):
            mags = [m for rc in self.rcaches[order] for m in (rc.loaded, rc.prev)]
            for mag in mags + self.depots[order]:
                for pfn in mag:
                    self.free_iova(pfn)
                mag.clear()
            self.depots[order].clear()


def _magazine_pop(mag: list[int], limit_pfn: int) -> int:
    """The last pfn not above ``limit_pfn``, removed by swapping in the last entry."""
    for i in range(len(mag) - 1, -1, -1):
        if mag[i] <= limit_pfn:
            pfn = mag[i]
            mag[i] = mag[-1]
            mag.pop()
            return pfn
    return 0


def iommu_dma_alloc_iova(iovad: IovaDomain, size: int, dma_limit: int, cpu: int = 0, *,
                         try_32bit: bool = True) -> int:
    """dma-iommu.c: ``size`` bytes -> an IOVA (bytes; 0 on failure).  Fewer than 32 pages are
    rounded up to a power of two so the rcache can take them back; a PCI device first tries
    below 4 GiB (6.1: ``dev_is_pci && !iommu_dma_forcedac``; mainline: while
    ``pci_32bit_workaround`` holds - the caller clears it after a 32-bit failure)."""
    pages = (size + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
    if pages < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1):
        pages = 1 << _order(pages)
    pfn = 0
    if try_32bit and dma_limit > DMA_BIT_MASK_32:
        pfn = iovad.alloc_iova_fast(pages, DMA_BIT_MASK_32 >> PAGE_SHIFT, cpu, False)
    if not pfn:
        pfn = iovad.alloc_iova_fast(pages, dma_limit >> PAGE_SHIFT, cpu, True)
    return pfn << PAGE_SHIFT
