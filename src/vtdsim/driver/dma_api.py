"""The DMA API on an IOMMU domain, Linux drivers/iommu/dma-iommu.c (``iommu_dma_map_page``,
``iommu_dma_unmap_page``, ``iommu_dma_map_sg``, ``iommu_dma_unmap_sg``, ``__iommu_dma_map``,
``__iommu_dma_unmap``, ``iommu_dma_alloc_iova``, ``iommu_dma_free_iova``); the same in both
profiles: strict domains flush in ``iommu_iotlb_sync`` before the IOVA is freed, lazy
(DMA_FQ) domains queue the IOVA and freed table pages on the flush queue, identity domains
return the physical address.

Not modelled: bounce buffering of untrusted devices (swiotlb), the CPU cache maintenance of
non-coherent devices, ``dma_map_resource``, scatterlist segment-boundary and max-segment
splitting (segments are assumed to fit), DMA masks other than the device's ``dma_mask``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from functools import lru_cache, partial
from typing import Any

from vtdsim.driver import iommu_core
from vtdsim.driver.domain import DmarDomain
from vtdsim.driver.flush_queue import FlushQueue
from vtdsim.driver.iommu_core import IommuIotlbGather
from vtdsim.driver.iova import iommu_dma_alloc_iova
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.driver.steps import Annotate, ReuseIova, Step
from vtdsim.errors import SpecRuleBroken, hexval

PAGE_SHIFT = 12
IOVA_GRANULE = 1 << PAGE_SHIFT


def iova_offset(addr: int) -> int:
    return addr & (IOVA_GRANULE - 1)


def iova_align(size: int) -> int:
    return (size + IOVA_GRANULE - 1) & ~(IOVA_GRANULE - 1)


class IommuDmaCookie:
    """``struct iommu_dma_cookie`` for one default domain: its IOVA allocator and, for a
    DMA_FQ domain, the flush queue (whose flush is the driver's ``flush_iotlb_all``)."""

    def __init__(self, driver, domain: DmarDomain, iovad, *, ncpus: int = 1,
                 dma_mask: int = (1 << 64) - 1, fq_timeout_ns: int | None = None):
        self.driver = driver
        self.domain = domain
        self.iovad = iovad
        self.dma_mask = dma_mask
        self.fq: FlushQueue | None = None
        if domain.type == "dma_fq":
            prof = driver.profile
            self.fq = FlushQueue(
                # Bound methods and a partial, not lambdas: a booted system must pickle (the
                # checker copies its template world that way).
                f"domain{domain.ident}", ncpus, partial(driver.flush_iotlb_all, domain),
                iovad.free_iova_fast,
                size=prof.fq_size, timeout_ns=prof.fq_timeout_ns if fq_timeout_ns is None
                else fq_timeout_ns)

    @property
    def identity(self) -> bool:
        return self.domain.type == "identity"

    def iommu_dma_alloc_iova(self, size: int, cpu: int) -> int:
        iova = iommu_dma_alloc_iova(self.iovad, size, self.dma_mask, cpu)
        if not iova:
            raise SpecRuleBroken(f"IOVA space exhausted for {hexval('size', size)}")
        return iova

    def iommu_dma_free_iova(self, iova: int, size: int, gather: IommuIotlbGather, cpu: int,
                            now_ns: int) -> Generator[Step, Any, None]:
        """Lazy: queue the range and the freed table pages; strict: the sync already ran, the
        range goes straight back."""
        pfn, pages = iova >> PAGE_SHIFT, size >> PAGE_SHIFT
        if gather.queued:
            yield from self.fq.queue_iova(cpu, pfn, pages, gather.freelist, now_ns)
            gather.freelist = []
            return
        yield _reuse_iova(iova, size)
        self.iovad.free_iova_fast(pfn, pages, cpu=cpu)


# -- map / unmap core ----------------------------------------------------------------------------
def __iommu_dma_map(cookie: IommuDmaCookie, phys: int, size: int, prot: int, cpu: int):
    off = iova_offset(phys)
    size = iova_align(size + off)
    iova = cookie.iommu_dma_alloc_iova(size, cpu)
    yield from cookie.driver.map(cookie.domain, iova, phys - off, size, prot)
    return iova + off


def __iommu_dma_unmap(cookie: IommuDmaCookie, dma_addr: int, size: int, cpu: int, now_ns: int):
    """Clear the PTEs; strict: sync (flush) now, before the IOVA is reused; lazy: the flush
    queue releases both later."""
    off = iova_offset(dma_addr)
    dma_addr -= off
    size = iova_align(size + off)
    gather = IommuIotlbGather(queued=cookie.fq is not None)
    unmapped = yield from iommu_core.iommu_unmap_fast(cookie.driver, cookie.domain, dma_addr,
                                                      size, gather)
    if unmapped != size:
        raise SpecRuleBroken(f"unmapped {hexval('size', unmapped)} of {hexval('size', size)}")
    if not gather.queued:
        yield from iommu_core.iommu_iotlb_sync(cookie.driver, cookie.domain, gather)
    yield from cookie.iommu_dma_free_iova(dma_addr, size, gather, cpu, now_ns)
    yield _unmap_done(dma_addr, size)


# The steps of an unmap's end, built once per range (steps are immutable values): the rcache
# hands the same IOVAs out again and again.
@lru_cache(maxsize=4096)
def _reuse_iova(iova: int, size: int) -> ReuseIova:
    return ReuseIova(iova=iova, size=size, why="iommu_dma_free_iova")


@lru_cache(maxsize=4096)
def _unmap_done(dma_addr: int, size: int) -> Annotate:
    return Annotate(event="dma_unmap_done", data=(dma_addr, size))


# The two page calls below hand back the generator of the call they make rather than being
# generators that delegate to it: every step of a map or unmap passes through each level of a
# ``yield from`` chain, and these levels would only pass it on.  Callers see one generator all
# the same.
def _returns(value: Any = None) -> Generator[Step, Any, Any]:
    """An operation with no step (dma-direct: an identity domain's calls)."""
    return value
    yield


def iommu_dma_map_page(cookie: IommuDmaCookie, phys: int, size: int,
                       prot: int = IOMMU_READ | IOMMU_WRITE, cpu: int = 0):
    """Map one buffer; returns its DMA address (the physical one for identity domains)."""
    if cookie.identity:
        return _returns(phys)
    return __iommu_dma_map(cookie, phys, size, prot, cpu)


def iommu_dma_unmap_page(cookie: IommuDmaCookie, dma_addr: int, size: int, cpu: int = 0,
                         now_ns: int = 0):
    """The unmap's generator itself, not one delegating to it: each step of an unmap passes
    through every generator frame on its way out (replay's hot path)."""
    if cookie.identity:
        return _returns()
    return __iommu_dma_unmap(cookie, dma_addr, size, cpu, now_ns)


def iommu_dma_map_sg(cookie: IommuDmaCookie, sg: Sequence[tuple[int, int]],
                     prot: int = IOMMU_READ | IOMMU_WRITE, cpu: int = 0):
    """One IOVA range for the whole list, each segment padded to the granule; one
    ``iommu_map_sg`` call (so one map flush under CM).  Returns the DMA address of each
    segment."""
    if cookie.identity:
        return [phys for phys, _ in sg]
    padded, addrs_off, total = [], [], 0
    for phys, length in sg:
        off = iova_offset(phys)
        s_len = iova_align(length + off)
        padded.append((phys - off, s_len))
        addrs_off.append((total, off))
        total += s_len
    iova = cookie.iommu_dma_alloc_iova(total, cpu)
    yield from cookie.driver.map_sg(cookie.domain, iova, padded, prot)
    return [iova + pos + off for pos, off in addrs_off]


def iommu_dma_unmap_sg(cookie: IommuDmaCookie, dma_addrs: Sequence[int],
                       lengths: Sequence[int], cpu: int = 0, now_ns: int = 0):
    """Unmap from the first segment's address to the end of the last one, in one call."""
    if cookie.identity or not dma_addrs:
        return
    start = dma_addrs[0]
    end = dma_addrs[-1] + lengths[-1]
    yield from __iommu_dma_unmap(cookie, start, end - start, cpu, now_ns)
