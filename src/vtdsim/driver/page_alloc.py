"""The guest's physical page allocator as the driver sees it (Linux ``alloc_pgtable_page`` /
``iommu_alloc_page`` and ``free_page`` on top of the buddy allocator's per-CPU lists).

Pages come from a fixed window ``[base, limit)``; a freed page is handed out again first (LIFO,
like a per-CPU free list), so reuse after a premature free happens as soon as it can - which is
what makes use-after-free bugs visible.  ``allocated`` and ``freed`` are sets for properties
(``dma_after_free``: a DMA reaching a page in ``freed``).

Not modelled: NUMA nodes, page orders above 0 (every allocation is one 4 KiB page), GFP flags
(pages are not zeroed here: the driver zeroes them with ``CpuZero``, as __GFP_ZERO does).
"""

from __future__ import annotations

from vtdsim.errors import BadInput, SpecRuleBroken, hexval
from vtdsim.hardware.memory import PAGE_SIZE


class PageAllocator:
    """Deterministic allocator of 4 KiB pages in ``[base, limit)``."""

    def __init__(self, base: int, limit: int):
        if base % PAGE_SIZE or limit % PAGE_SIZE or limit <= base:
            raise BadInput(f"page window {hexval('base', base)}..{hexval('limit', limit)} "
                           "must be page aligned and non-empty")
        self.base = base
        self.limit = limit
        self._next = base  # never-used pages start here
        self._free: list[int] = []  # LIFO of freed pages
        self.allocated: set[int] = set()
        self.freed: set[int] = set()

    def alloc(self) -> int:
        """A page address: the most recently freed page, else the next never-used one."""
        if self._free:
            addr = self._free.pop()
            self.freed.discard(addr)
        elif self._next < self.limit:
            addr = self._next
            self._next += PAGE_SIZE
        else:
            raise BadInput(f"page window exhausted at {hexval('limit', self.limit)}: "
                           "give the platform a larger page_limit")
        self.allocated.add(addr)
        return addr

    def peek(self) -> int | None:
        """The page ``alloc`` would hand out now (None: the window is exhausted)."""
        if self._free:
            return self._free[-1]
        return self._next if self._next < self.limit else None

    def free(self, addr: int) -> None:
        """Return a page; freeing a page that is not allocated is a driver bug (double free)."""
        if addr not in self.allocated:
            raise SpecRuleBroken(f"free of page {hexval('addr', addr)} that is not allocated",
                                 "double free (mm/page_alloc.c)")
        self.allocated.remove(addr)
        self.freed.add(addr)
        self._free.append(addr)

    def __contains__(self, addr: int) -> bool:
        return addr in self.allocated
