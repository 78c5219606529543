"""Linux 6.1's IOTLB and device-TLB flushing, drivers/iommu/intel/iommu.c
(``iommu_flush_iotlb_psi``, ``__mapping_notify_one``, ``intel_flush_iotlb_all``,
``iommu_flush_dev_iotlb``, ``intel_iommu_tlb_sync``): one descriptor per ``qi_submit_sync``;
seed 000's caching-mode gate on the device-TLB flush is the profile switch
``devtlb_flush_checks_caching_mode`` (True in 6.1, False after the April 2024 patch).

Not modelled: register-based invalidation (every unit modelled has QI), the kdump
copied-context paths.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from vtdsim.driver import qi
from vtdsim.driver.device import IOMMU_NO_PASID, DeviceInfo
from vtdsim.driver.domain import DmarDomain
from vtdsim.driver.psi import psi_mask_linux61, psi_needs_dsi
from vtdsim.driver.steps import Step, lock_steps

MAX_AGAW_PFN_WIDTH = 52
PAGE_SHIFT = 12


def __iommu_flush_dev_iotlb(info: DeviceInfo, addr: int, mask: int):
    """One device: type 3 at (addr, mask) in its own submission (plus the QAT repeat)."""
    if not info.ats_enabled:
        return
    desc = qi.desc_flush_dev_iotlb(info.sid, info.pfsid, info.ats_qdep, addr, mask)
    for _ in range(2 if info.dtlb_extra_inval else 1):
        yield from qi.qi_submit_sync(info.iommu, [desc])


def iommu_flush_dev_iotlb(domain: DmarDomain, addr: int, mask: int):
    """Every ATS device of the domain, whichever unit it sits behind, under ``domain->lock``."""
    if not domain.has_iotlb_device():
        return
    lock, unlock = lock_steps(domain.lock, "iommu_flush_dev_iotlb")
    yield lock
    for info in list(domain.devices):
        yield from __iommu_flush_dev_iotlb(info, addr, mask)
    yield unlock


def _iotlb_ih(profile, ih: int) -> int:
    """6.1's queued ``qi_flush_iotlb`` drops IH (a local ``ih = 0``): ``ih_on_wire``."""
    return ih if profile.ih_on_wire else 0


def iommu_flush_iotlb_psi(
    iommu, domain: DmarDomain, profile, pfn: int, pages: int, ih: int, map_: bool
) -> Generator[Step, Any, None]:
    """``iommu_flush_iotlb_psi``: a PSI (mask from ``psi_mask_linux61``) or, without PSI or
    above MAMV, a DSI; then the device-TLB - unless this is a map notification, and in 6.1
    also unless the unit is in caching mode (seed 000)."""
    did = domain.domain_id_iommu(iommu)
    addr_pfn, mask = psi_mask_linux61(pfn, pages)
    addr = addr_pfn << PAGE_SHIFT
    if domain.use_first_level:
        # 6.1 qi_flush_piotlb: pow2 round-up, align down, IH kept (unconfirmed for Debian 6.1;
        # never reached on QEMU 7.2, which has no first stage).
        desc = qi.desc_flush_piotlb(did, IOMMU_NO_PASID, pfn << PAGE_SHIFT, pages, ih)
    elif psi_needs_dsi(iommu.caps, mask):
        desc = qi.desc_flush_iotlb(iommu, did, 0, 0, qi.DMA_TLB_DSI_FLUSH)
    else:
        desc = qi.desc_flush_iotlb(
            iommu, did, addr, mask, qi.DMA_TLB_PSI_FLUSH, ih=_iotlb_ih(profile, ih))
    yield from qi.qi_submit_sync(iommu, [desc])
    # 6.1: "!cap_caching_mode || !map"; after the April 2024 patch: "!map" (a map under
    # CM=0 never gets here: mapping_notify_one only flushes under CM).
    cm_allows = profile.devtlb_flush_checks_caching_mode and not iommu.caps.caching_mode
    if not map_ or cm_allows:
        yield from iommu_flush_dev_iotlb(domain, addr, mask)


def mapping_notify_one(iommu, domain: DmarDomain, profile, pfn: int, pages: int):
    """``__mapping_notify_one``: a non-present -> present change needs a flush only under CM
    for second-stage tables (spec 6.1); otherwise the write buffer (spec 6.8)."""
    if iommu.caps.caching_mode and not domain.use_first_level:
        yield from iommu_flush_iotlb_psi(iommu, domain, profile, pfn, pages, 0, True)
    else:
        yield from iommu.iommu_flush_write_buffer()


def aligned_nrpages(addr: int, size: int) -> int:
    """Pages [addr, addr + size) touches."""
    offset = addr & ((1 << PAGE_SHIFT) - 1)
    return (offset + size + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT


def intel_iommu_iotlb_sync_map_linux61(domain: DmarDomain, profile, iova: int, size: int):
    """6.1 ``intel_iommu_iotlb_sync_map``: notify every unit the domain is attached to; 0."""
    pages = aligned_nrpages(iova, size)
    for dinfo in domain.iommus():
        yield from mapping_notify_one(dinfo.iommu, domain, profile, iova >> PAGE_SHIFT, pages)
    return 0


def intel_iommu_tlb_sync_linux61(domain: DmarDomain, profile, gather):
    """6.1 ``intel_iommu_tlb_sync``: a PSI per unit (IH = no table page freed), then the
    freed page-table pages go back (the caller frees ``gather.freelist``)."""
    pages = aligned_nrpages(gather.start, gather.end - gather.start)
    ih = int(not gather.freelist)
    for dinfo in domain.iommus():
        yield from iommu_flush_iotlb_psi(
            dinfo.iommu, domain, profile, gather.start >> PAGE_SHIFT, pages, ih, False)


def intel_flush_iotlb_all(domain: DmarDomain, profile):
    """``intel_flush_iotlb_all`` (flush queue, detach): per unit a DSI (SS) or a PASID-selective
    type 6 (FS), then a whole-space device-TLB flush - skipped under CM in 6.1 (seed 000)."""
    for dinfo in domain.iommus():
        iommu, did = dinfo.iommu, dinfo.did
        if domain.use_first_level:
            desc = qi.desc_flush_piotlb(did, IOMMU_NO_PASID, 0, -1, 0)
        else:
            desc = qi.desc_flush_iotlb(iommu, did, 0, 0, qi.DMA_TLB_DSI_FLUSH)
        yield from qi.qi_submit_sync(iommu, [desc])
        if not (profile.devtlb_flush_checks_caching_mode and iommu.caps.caching_mode):
            yield from iommu_flush_dev_iotlb(domain, 0, MAX_AGAW_PFN_WIDTH)
