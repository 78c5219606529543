"""A receive queue's page pool with DMA mapping done by the pool (Linux 6.12
net/core/page_pool.c, ``PP_FLAG_DMA_MAP``): a page is mapped once when it enters the pool
from the page allocator and unmapped only when it leaves it, so a recycled page costs the
IOMMU nothing.

Allocation (``page_pool_alloc_pages``): the lockless alloc cache (``PP_ALLOC_CACHE_SIZE``
128) first; empty, it is refilled with up to ``PP_ALLOC_CACHE_REFILL`` (64) pages from the
ptr_ring (``page_pool_refill_alloc_cache``); both empty, the slow path takes 64 fresh pages
from the page allocator and maps each one (``__page_pool_alloc_pages_slow`` ->
``page_pool_dma_map``).  Return (``page_pool_put_unrefed_page`` once a page's last reference
is dropped): into the alloc cache when the caller is the pool's own NAPI context
(``allow_direct`` / ``page_pool_napi_local``) and the cache has room, else into the ptr_ring
of ``pool_size`` entries (``page_pool_recycle_in_ring``), else - ring full - the page leaves
the pool: unmapped (``__page_pool_release_page_dma``) and freed (``page_pool_return_page``).

Not modelled: NUMA-node checks on refill (one node), ``pfmemalloc`` pages, the page
fragment API's bias beyond one reference per user (``Page.refs``: the driver takes its
frames' references when it posts the page, each dropped once), the ring's
producer lock contention (one flow per pool).
"""

from __future__ import annotations

from collections import deque

from vtdsim.errors import BadInput

PAGE = 4096
ALLOC_CACHE_SIZE = 128  # PP_ALLOC_CACHE_SIZE (include/net/page_pool/types.h)
ALLOC_CACHE_REFILL = 64  # PP_ALLOC_CACHE_REFILL: refill batch and slow-path bulk
RING_MAX = 16384  # page_pool_init caps ptr_ring size at min(pool_size, 16384)


class Page:
    """One pool page: its physical and DMA address and the references held on it (the
    driver's while posted to the ring, one per packet built on it - taken by the driver up
    front, as mlx5's bias); whoever drops the last returns it to the pool (``PagePool.put``).
    nic_pool counts the packets' only: the driver's is never the last there.
    """

    __slots__ = ("phys", "dma", "refs", "frames")

    def __init__(self, phys: int, dma: int):
        self.phys, self.dma, self.refs = phys, dma, 0
        self.frames = None  # what a driver lays out on the page, built once (nic_pool)


class PagePool:
    """One RX queue's pool: ``world`` maps and unmaps through the timed DMA API on ``cpu``;
    fresh pages come from ``phys_pages`` (physical addresses, reused LIFO like the
    allocator's per-CPU lists)."""

    def __init__(self, world, cpu: int, pool_size: int, phys_pages: list[int]):
        if pool_size < 1:
            raise BadInput("--pool-size must be at least 1")
        self.world, self.cpu = world, cpu
        self.ring_size = min(pool_size, RING_MAX)
        self.cache: list[Page] = []
        self.ring: deque[Page] = deque()
        self.free_phys = phys_pages
        self.alloc_ns = world.constants.ns("page_alloc_cycles")
        self.stats = {"alloc_fast": 0, "alloc_refill": 0, "alloc_slow": 0, "recycle_cached": 0,
                      "recycle_ring": 0, "recycle_ring_full": 0, "mapped": 0, "unmapped": 0}

    def alloc(self):
        """A page for the RX ring (generator: the slow path maps pages)."""
        page = self.take()
        if page is not None:
            return page
        yield from self._alloc_slow()
        return self.cache.pop()

    def take(self) -> Page | None:
        """``alloc`` without its slow path: a page from the alloc cache, refilled from the
        ring first if empty; None when both are empty (then ``alloc``).  Not a generator,
        so the common case costs a call, not a generator per page."""
        if self.cache:
            self.stats["alloc_fast"] += 1
            return self.cache.pop()
        if self.ring:
            self.stats["alloc_refill"] += 1
            take = min(ALLOC_CACHE_REFILL, len(self.ring))
            self.cache.extend(self.ring.popleft() for _ in range(take))
            return self.cache.pop()
        return None

    def take_many(self, n: int) -> list[Page]:
        """Up to ``n`` pages, each what ``take`` would return in turn (the same pages, in the
        same order, with the same counts), stopping where ``take`` would return None: the
        alloc cache's pages popped a slice at a time (a refill posts a WQE's worth at once)."""
        cache, out = self.cache, []
        while len(out) < n:
            if not cache and not self.ring:
                break
            if not cache:
                out.append(self.take())  # refilled from the ring: one ``alloc_refill``
                continue
            k = min(n - len(out), len(cache))
            chunk = cache[-k:]
            del cache[-k:]
            chunk.reverse()  # ``pop`` takes from the end: the last page first
            out += chunk
            self.stats["alloc_fast"] += k
        return out

    def _alloc_slow(self):
        if len(self.free_phys) < ALLOC_CACHE_REFILL:
            raise BadInput("the page pool ran out of data pages: a smaller --ring or --pool-size")
        self.stats["alloc_slow"] += 1
        yield self.world.env.timeout(self.alloc_ns * ALLOC_CACHE_REFILL)
        for _ in range(ALLOC_CACHE_REFILL):
            phys = self.free_phys.pop()
            dma = yield from self.world.map_page(self.cpu, phys, PAGE)
            self.stats["mapped"] += 1
            self.cache.append(Page(phys, dma))

    def put(self, page: Page, direct: bool):
        """The page's last reference was dropped (generator: a full ring unmaps it).
        ``direct``: the caller runs in the pool's NAPI context on its CPU."""
        if not self.recycle(page, direct):
            yield from self.release(page)

    def recycle(self, page: Page, direct: bool) -> bool:
        """``put`` without its slow path: into the alloc cache or the ring; False if the
        ring is full (then ``release``).  Not a generator, like ``take``."""
        if direct and len(self.cache) < ALLOC_CACHE_SIZE:
            self.stats["recycle_cached"] += 1
            self.cache.append(page)
            return True
        if len(self.ring) < self.ring_size:
            self.stats["recycle_ring"] += 1
            self.ring.append(page)
            return True
        return False

    def room(self, direct: bool) -> int:
        """How many pages ``recycle`` takes back from now on before one finds the ring full."""
        cached = ALLOC_CACHE_SIZE - len(self.cache) if direct else 0
        return max(cached, 0) + self.ring_size - len(self.ring)

    def recycle_all(self, pages: list[Page], direct: bool) -> None:
        """``recycle`` of each of ``pages`` in turn, when ``room`` holds them all: the alloc
        cache's share appended at once, the rest to the ring - the same order and counts."""
        cached = max(0, min(len(pages), ALLOC_CACHE_SIZE - len(self.cache))) if direct else 0
        if cached:
            self.cache += pages[:cached]
            self.stats["recycle_cached"] += cached
        if cached < len(pages):
            self.ring.extend(pages[cached:])
            self.stats["recycle_ring"] += len(pages) - cached

    def release(self, page: Page):
        """The ring is full: the page leaves the pool, unmapped and freed (generator)."""
        self.stats["recycle_ring_full"] += 1
        yield from self.world.unmap_page(self.cpu, page.dma, PAGE)
        self.stats["unmapped"] += 1
        yield self.world.env.timeout(self.alloc_ns)
        self.free_phys.append(page.phys)
