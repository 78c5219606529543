"""The abstract locations a DMA's verdict reads and the operations that write them, per page,
IOVA page and device, so that DPOR can tell a free of one page from a DMA reaching another
(the VT-d world's reduction for ``lifecycle.PageLedger``; VT-d spec 6.1: what a request reaches
comes from its caches or a walk of memory).

* ``("owner", page)``: the page's owner and grants (allocation, free, a map's begin);
* ``("mapped", domain, iova_page)`` a completed map (a map's end, an unmap's begin);
  ``("mapped", domain)`` a map whose IOVA is known only at its end (``dma_map``);
* ``("member", device)``: attachment, moving, ATS enable (attach/detach/PASID ops, ats_disable);
* ``LAZY``: the flush queue's counters and lazily unmapped pages (fq_timer, dma_unmap's end);
* ``ALLOC``: the allocator's order; a DMA whose page is not known in advance reads it and every
  page's owner (``every_owner``).

Not modelled: a precise target page through a paging-structure-cache entry, a cached context or
PASID entry that differs from memory, or a device-TLB (the DMA then reads ``ALLOC``).
"""

from __future__ import annotations

from vtdsim.checker.lifecycle import MOVING_OPS
from vtdsim.hardware.memory import PAGE_SIZE

ALLOC = ("alloc",)
LAZY = ("lazy",)
_PAGE_MASK = ~(PAGE_SIZE - 1)
# Ops that never allocate a page (checked when a step is applied: actors.Thread): a free in
# a world where only these remain cannot change what a later allocation returns.
NON_ALLOCATING_OPS = frozenset({"unmap", "dma_unmap", "free", "fq_timer", "cpu_write",
                                "cpu_read", "cpu_zero", "clflush", "wbinvd", "flush_iotlb_all",
                                "ats_disable", "enforce_cache_coherency"})
_MEMBER_OPS = MOVING_OPS | {"ats_disable"}


def owner(page: int) -> tuple:
    return ("owner", page & _PAGE_MASK)


def _iova_pages(op) -> list[int]:
    return list(range(op["iova"] & _PAGE_MASK, op["iova"] + op["size"], PAGE_SIZE))


def op_begin(op, system) -> set:
    """What ``Monitor.op_begin`` (ledger, PASID watch) changes that a DMA's verdict reads."""
    kind = op.kind
    if kind == "map":  # boot._map notes the IOVA's page (System.iova_pages) at its begin
        return {owner(system.pages[op["page"]])} | {("mapped", op["domain"], p)
                                                    for p in _iova_pages(op)}
    if kind == "dma_map":
        return {owner(system.pages[op["page"]])}
    if kind in ("unmap", "dma_unmap"):
        return {("mapped", op["domain"], p) for p in _iova_pages(op)}
    if kind in _MEMBER_OPS:
        return {("member", op["device"])}
    return set()


def op_end(op) -> set:
    """What ``Monitor.op_done`` (and the op's own last bookkeeping) changes."""
    kind = op.kind
    if kind == "map":
        return {("mapped", op["domain"], p) for p in _iova_pages(op)}
    if kind == "dma_map":
        return {("mapped", op["domain"])}
    if kind == "dma_unmap":  # ... and reads System.iova_pages to see what it unmapped
        return {LAZY} | {("mapped", op["domain"], p) for p in _iova_pages(op)}
    if kind == "alloc":
        return {ALLOC}
    if kind in _MEMBER_OPS:
        return {("member", op["device"])}
    return set()


def dma_reads(world, device: str, iova: int, pasid: int | None) -> set:
    """What classifies a DMA: its device's attachment, the completed maps of its domain at the
    IOVA, the lazy window, and the owner of each page it can reach (``ALLOC`` when unknown)."""
    system = world.system
    domain = (system.domain_of(device) if pasid is None
              else system.pasid_members.get((device, pasid)))
    found = {("member", device), LAZY, ("mapped", domain, iova & _PAGE_MASK),
             ("mapped", domain)}
    pages = target_pages(world, device, iova, pasid)
    return found | (every_owner(world) if pages is None else {owner(p) for p in pages})


def every_owner(world) -> set:
    """A DMA whose page is not known in advance reads every owner a step can change: the
    allocator's order (an allocation) and the owner of each page that can be freed - every
    page the ledger tracks, the scenario's data pages, every page freed so far."""
    system = world.system
    pages = set(system.ledger.owners) | set(system.pages.values()) | world.recycled
    return {ALLOC} | {owner(p) for p in pages}


def target_pages(world, device: str, iova: int, pasid: int | None) -> set | None:
    """Every page the DMA can reach now: a cached IOTLB entry's or a walk of memory's - or None
    where a cache could lead elsewhere (a paging-structure-cache, context or PASID entry other
    than memory's, a device-TLB)."""
    ep = world.system.endpoint(device)
    unit = ep.unit
    if ep.ats or not unit.translation_enabled:
        return None
    walk = world.walk(device, iova, pasid)
    if _psc_stale(unit, iova, walk) or not _entries_as_in_memory(unit, ep.sid, walk):
        return None
    pages = {_hpa(f.entry, iova) for f in walk.fills
             if f.cache == "iotlb" and getattr(f.entry, "present", True)}
    for _, entry in unit.iotlb.items():
        base = entry.iova_base
        if entry.present and base <= iova < base + (PAGE_SIZE << 9 * (entry.level - 1)):
            pages.add(_hpa(entry, iova))
    return pages


def _hpa(entry, iova: int) -> int:
    return (entry.hpa | (iova & entry.offset_mask)) & _PAGE_MASK


def _psc_stale(unit, iova: int, walk) -> bool:
    """A paging-structure-cache entry covering ``iova`` that is not the one a walk of memory
    gives (a walk through it may then lead elsewhere); equal ones lead where memory does."""
    fresh = {f.key: f.entry for f in walk.fills if f.cache == "pscache"}
    return any(key[4] == iova >> (12 + 9 * key[3]) and fresh.get(key) != entry
               for key, entry in unit.pscache.items())


def _entries_as_in_memory(unit, sid: int, walk) -> bool:
    """The cached context / PASID entries of ``sid`` are the ones a walk of memory reads."""
    fresh = {(f.cache, f.key): f.entry.raw for f in walk.fills
             if f.cache in ("context_cache", "pasid_cache")}
    for cache in (unit.context_cache, unit.pasid_cache):
        for key, entry in cache.items():
            mine = key == sid if cache is unit.context_cache else key[0] == sid
            if mine and fresh.get((cache.name, key)) != getattr(entry, "raw", None):
                return False
    return True
