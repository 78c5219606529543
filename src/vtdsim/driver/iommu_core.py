"""The IOMMU core's map/unmap entry points and default-domain policy, Linux
drivers/iommu/iommu.c (``iommu_map``, ``iommu_map_sg``, ``iommu_unmap``, ``iommu_unmap_fast``,
``iommu_iotlb_gather_add_page``, ``iommu_pgsize``, ``iommu_subsys_init``,
``iommu_set_dma_strict``) with Intel's caching-mode override from ``intel_iommu_init``; the
profiles differ only in the first-stage exception (seed 003 switch
``fq_allowed_under_caching_mode_first_stage``).

``ops`` is the domain's driver (``intel_iommu_ops.IntelIommuDriver``): ``map_pages``,
``unmap_pages``, ``iotlb_sync_map``, ``iotlb_sync``.  One ``iommu:map`` event per
``__iommu_map`` call (a physically contiguous chunk) and one ``iommu:unmap`` event per
``__iommu_unmap`` call are yielded as ``Annotate`` steps named after the trace events.

Not modelled: DMA-bus-address scatterlist segments (P2PDMA), the reserved-region checks,
memory encryption other than as a flag refusing passthrough, the Azalia identity quirk.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from vtdsim.driver.steps import Annotate, Step
from vtdsim.errors import SpecRuleBroken, hexval

ULONG_MAX = (1 << 64) - 1
PAGE_SIZE = 4096


# -- the gather ---------------------------------------------------------------------------------
@dataclass(slots=True)
class IommuIotlbGather:
    """``struct iommu_iotlb_gather``: the inclusive IOVA range unmapped since the last sync,
    the page-table pages freed by it, and whether the caller queues it (flush queue)."""

    start: int = ULONG_MAX
    end: int = 0
    pgsize: int = 0
    freelist: list[int] = field(default_factory=list)
    queued: bool = False

    def init(self) -> None:
        """``iommu_iotlb_gather_init`` (keeps ``queued``, which the caller sets)."""
        self.start, self.end, self.pgsize = ULONG_MAX, 0, 0
        self.freelist = []

    @property
    def empty(self) -> bool:
        return self.start == ULONG_MAX

    def is_disjoint(self, iova: int, size: int) -> bool:
        """``iommu_iotlb_gather_is_disjoint``: the new range neither overlaps nor touches."""
        end = iova + size - 1
        return not self.empty and (end + 1 < self.start or iova > self.end + 1)

    def add_range(self, iova: int, size: int) -> None:
        self.start = min(self.start, iova)
        self.end = max(self.end, iova + size - 1)


def iommu_iotlb_gather_add_page(ops, domain, gather: IommuIotlbGather, iova: int,
                                size: int) -> Iterable[Step]:
    """Sync first if the new page is disjoint or of another granule, then add it; the steps
    of the sync, for the caller's ``yield from``.  Most adds (every strict unmap's first)
    sync nothing: they add at once and hand back no generator at all."""
    if (gather.pgsize and gather.pgsize != size) or gather.is_disjoint(iova, size):
        return _gather_add_syncing(ops, domain, gather, iova, size)
    gather.pgsize = size
    gather.add_range(iova, size)
    return ()


def _gather_add_syncing(ops, domain, gather: IommuIotlbGather, iova: int, size: int):
    """``iommu_iotlb_gather_add_page`` that syncs the gathered range before adding."""
    yield from iommu_iotlb_sync(ops, domain, gather)
    gather.pgsize = size
    gather.add_range(iova, size)


def iommu_iotlb_sync(ops, domain, gather: IommuIotlbGather) -> Generator[Step, Any, None]:
    """``iommu_iotlb_sync``: the driver's ``iotlb_sync``, then reset the gather."""
    if not gather.empty:
        yield from ops.iotlb_sync(domain, gather)
    gather.init()


# -- page-size selection ------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def iommu_pgsize(pgsize_bitmap: int, iova: int, paddr: int, size: int) -> tuple[int, int]:
    """``iommu_pgsize``: the largest supported page size the alignment of ``iova|paddr`` and
    ``size`` allow, and how many of them to map before a larger size becomes possible.
    Memoised (pure arithmetic): every map and unmap calls it, mostly on recycled IOVAs."""
    addr_merge = iova | paddr
    pgsizes = pgsize_bitmap & ((2 << (size.bit_length() - 1)) - 1)
    if addr_merge:
        pgsizes &= (2 << ((addr_merge & -addr_merge).bit_length() - 1)) - 1
    if not pgsizes:
        raise SpecRuleBroken(f"no page size fits {hexval('iova', iova)} {hexval('size', size)}")
    idx = pgsizes.bit_length() - 1
    bigger = pgsize_bitmap & ~((2 << idx) - 1)
    if bigger:
        pgsize_next = bigger & -bigger
        # A bigger page only helps if iova and paddr share their offset within it.
        if not (iova ^ paddr) & (pgsize_next - 1):
            offset = pgsize_next - (addr_merge & (pgsize_next - 1))
            if offset + pgsize_next <= size:
                size = offset
    return 1 << idx, size >> idx


def _check_aligned(iova: int, paddr: int, size: int) -> None:
    if (iova | paddr | size) & (PAGE_SIZE - 1):
        raise SpecRuleBroken(
            f"unaligned {hexval('iova', iova)} {hexval('paddr', paddr)} {hexval('size', size)}",
            "iommu.c __iommu_map: must be aligned to the minimum page size",
        )


# -- map ----------------------------------------------------------------------------------------
def __iommu_map(ops, domain, iova: int, paddr: int, size: int, prot: int, sync: bool = False):
    """One physically contiguous chunk: ``map_pages`` per page-size run, one ``map`` event;
    with ``sync`` (``iommu_map``) then ``iotlb_sync_map`` over the chunk, returning its value."""
    _check_aligned(iova, paddr, size)
    orig = (iova, paddr, size)
    while size:
        pgsize, count = iommu_pgsize(domain.pgsize_bitmap, iova, paddr, size)
        mapped = yield from ops.map_pages(domain, iova, paddr, pgsize, count, prot)
        iova, paddr, size = iova + mapped, paddr + mapped, size - mapped
    yield _map_trace(*orig)
    if sync:
        return (yield from ops.iotlb_sync_map(domain, orig[0], orig[2]))
    return None


@lru_cache(maxsize=4096)
def _map_trace(iova: int, paddr: int, size: int) -> Annotate:
    """The ``iommu:map`` event, built once per chunk (a step is an immutable value): a
    recycled IOVA maps the same buffers again and again."""
    return Annotate(event="map", data=(iova, paddr, size))


def iommu_map(ops, domain, iova: int, paddr: int, size: int, prot: int):
    """``iommu_map``: map, then ``iotlb_sync_map`` over the whole range once - the generator
    of ``__iommu_map`` doing both, not one delegating to it: one frame fewer for each step of
    every map."""
    return __iommu_map(ops, domain, iova, paddr, size, prot, sync=True)


def sg_chunks(sg: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge scatterlist segments ``(phys, length)`` that continue each other physically
    (``__iommu_map_sg``): each merged chunk is one ``__iommu_map`` call."""
    chunks: list[tuple[int, int]] = []
    for phys, length in sg:
        if chunks and chunks[-1][0] + chunks[-1][1] == phys:
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + length)
        else:
            chunks.append((phys, length))
    return chunks


def iommu_map_sg(ops, domain, iova: int, sg: Sequence[tuple[int, int]], prot: int):
    """``iommu_map_sg``: the chunks back to back from ``iova``, then one ``iotlb_sync_map``
    over their union (so under CM one PSI covers the whole call; linux-driver.md 3.2)."""
    mapped = 0
    for phys, length in sg_chunks(sg):
        yield from __iommu_map(ops, domain, iova + mapped, phys, length, prot)
        mapped += length
    yield from ops.iotlb_sync_map(domain, iova, mapped)
    return mapped


# -- unmap --------------------------------------------------------------------------------------
def __iommu_unmap(ops, domain, iova: int, size: int, gather: IommuIotlbGather):
    _check_aligned(iova, 0, size)
    unmapped = 0
    while unmapped < size:
        pgsize, count = iommu_pgsize(domain.pgsize_bitmap, iova, iova, size - unmapped)
        done = yield from ops.unmap_pages(domain, iova, pgsize, count, gather)
        if not done:
            break
        iova += done
        unmapped += done
    yield _unmap_trace(iova - unmapped, size, unmapped)
    return unmapped


@lru_cache(maxsize=4096)
def _unmap_trace(iova: int, size: int, unmapped: int) -> Annotate:
    """The ``iommu:unmap`` event, built once per range (a step is an immutable value): the
    same IOVAs are unmapped again and again once the rcache recycles them."""
    return Annotate(event="unmap", data=(iova, size, unmapped))


def iommu_unmap_fast(ops, domain, iova: int, size: int, gather: IommuIotlbGather):
    """``iommu_unmap_fast``: clear the PTEs, leave the flush to the caller's gather (the
    generator of ``__iommu_unmap`` itself: one ``yield from`` level less per step)."""
    return __iommu_unmap(ops, domain, iova, size, gather)


def iommu_unmap(ops, domain, iova: int, size: int):
    """``iommu_unmap``: unmap and sync (strict) in one call."""
    gather = IommuIotlbGather()
    unmapped = yield from __iommu_unmap(ops, domain, iova, size, gather)
    yield from iommu_iotlb_sync(ops, domain, gather)
    return unmapped


# -- default-domain policy ----------------------------------------------------------------------
KCONFIG_DEFAULTS = ("lazy", "strict", "passthrough")  # CONFIG_IOMMU_DEFAULT_DMA_LAZY ...


@dataclass
class IommuPolicy:
    """``iommu_def_domain_type`` and ``iommu_dma_strict`` plus the boot messages."""

    def_domain_type: str  # "identity" | "dma" | "dma_fq"
    dma_strict: bool
    messages: list[str] = field(default_factory=list)


def iommu_subsys_init(
    kconfig: str = "lazy",
    *,
    cmdline_strict: bool | None = None,
    cmdline_passthrough: bool | None = None,
    mem_encrypt: bool = False,
) -> IommuPolicy:
    """``iommu_subsys_init``: command line over Kconfig (Debian's Kconfig default is lazy)."""
    if kconfig not in KCONFIG_DEFAULTS:
        raise SpecRuleBroken(f"kconfig={kconfig!r}: expected one of {KCONFIG_DEFAULTS}")
    passthrough = kconfig == "passthrough" if cmdline_passthrough is None else cmdline_passthrough
    strict = kconfig == "strict" if cmdline_strict is None else cmdline_strict
    policy = IommuPolicy("identity" if passthrough else "dma", strict)
    if passthrough and mem_encrypt:
        policy.def_domain_type = "dma"  # passthrough refused with memory encryption
        policy.messages.append("Memory encryption detected - Disabling default IOMMU Passthrough")
    if policy.def_domain_type == "dma" and not strict:
        policy.def_domain_type = "dma_fq"
    kind = "Passthrough" if policy.def_domain_type == "identity" else "Translated"
    policy.messages.append(f"iommu: Default domain type: {kind}")
    if policy.def_domain_type != "identity":
        mode = "strict" if strict else "lazy"
        policy.messages.append(f"iommu: DMA domain TLB invalidation policy: {mode} mode")
    return policy


def iommu_set_dma_strict(policy: IommuPolicy) -> None:
    """``iommu_set_dma_strict``: force strict, overriding ``iommu.strict=0``."""
    policy.dma_strict = True
    if policy.def_domain_type == "dma_fq":
        policy.def_domain_type = "dma"


def first_level_by_default(caps) -> bool:
    """``first_level_by_default`` for DMA domains: never in legacy mode; the only stage a
    scalable-mode unit offers; first stage when it offers both."""
    if not caps.smts:
        return False
    if caps.fsts != caps.ssts:
        return caps.fsts
    return True


def intel_iommu_caching_mode_policy(policy: IommuPolicy, units_caps, profile) -> None:
    """``intel_iommu_init``: any unit with CAP.CM forces strict ("IOMMU batching disallowed
    due to virtualization", commit 29b32839725f) - unless the first stage is the default and
    the profile carries commit 257ec2907419 (seed 003; CM does not apply to FS tables, §6.1)."""
    for caps in units_caps:
        if not caps.caching_mode:
            continue
        if profile.fq_allowed_under_caching_mode_first_stage and first_level_by_default(caps):
            continue
        policy.messages.append("DMAR: IOMMU batching disallowed due to virtualization")
        iommu_set_dma_strict(policy)
        return


def iommu_get_def_domain_type(policy: IommuPolicy, info) -> str:
    """The default domain type of one device's group: untrusted devices always get a strict
    DMA domain; identity needs ECAP.PT (Intel ``device_def_domain_type``)."""
    if info.untrusted:
        return "dma"
    if policy.def_domain_type == "identity" and not info.iommu.caps.pt:
        return "dma"  # a driver-requested DMA type is never converted to DMA_FQ
    return policy.def_domain_type
