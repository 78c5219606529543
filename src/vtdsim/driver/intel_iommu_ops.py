"""The intel-iommu driver's ``iommu_ops`` / ``iommu_domain_ops``, Linux
drivers/iommu/intel/iommu.c (``intel_iommu_probe_device``, ``intel_iommu_domain_alloc_paging``,
``intel_iommu_attach_device``, ``intel_iommu_set_dev_pasid``, ``intel_iommu_remove_dev_pasid``,
``intel_iommu_map_pages``, ``intel_iommu_unmap_pages``, ``intel_iommu_iotlb_sync_map``,
``intel_iommu_tlb_sync``, ``intel_flush_iotlb_all``, ``intel_iommu_enforce_cache_coherency``);
6.1 flushes through flush_linux61.py and detaches before attaching, mainline through cache tags
with a blocked state in between; seed 002's and 004's behaviours are profile switches.

Not modelled: IOPF/PRI set-up beyond the PRE bit, SVA, dirty tracking, RMRR-locked devices,
sub-devices (``dev_is_real_dma_subdevice``), the kdump copied-table paths.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from vtdsim.driver import cache_tag as ct
from vtdsim.driver import context as ctx
from vtdsim.driver import flush_linux61 as f61
from vtdsim.driver import iommu_core, pasid
from vtdsim.driver.device import IOMMU_NO_PASID, DeviceInfo
from vtdsim.driver.domain import (
    DmarDomain,
    domain_add_device,
    domain_attach_iommu,
    domain_detach_iommu,
    domain_remove_device,
)
from vtdsim.driver.pgtable import DomainPageTable
from vtdsim.driver.steps import Annotate, FreePage, Lock, Step, Unlock
from vtdsim.errors import SpecRuleBroken

EINVAL = -22
SZ_4K, SZ_2M, SZ_1G = 1 << 12, 1 << 21, 1 << 30
_LEVEL_WIDTH = {3: 39, 4: 48, 5: 57}


def rwbf_required(iommu) -> bool:
    """``rwbf_required``: CAP.RWBF or the chipset quirk (whose list is unconfirmed)."""
    return iommu.caps.rwbf or getattr(iommu, "rwbf_quirk", False)


def domain_need_iotlb_sync_map(domain: DmarDomain, iommu) -> bool:
    """Map must flush when the write buffer needs it, or under CM for SS tables (spec 6.1)."""
    if rwbf_required(iommu):
        return True
    return iommu.caps.caching_mode and not domain.use_first_level


class IntelIommuDriver:
    """The driver instance: its units, the platform and the profile."""

    def __init__(self, platform, profile, iommus):
        self.platform = platform
        self.profile = profile
        self.iommus = list(iommus)
        self._domains_allocated = 0

    def _numbered(self, domain: DmarDomain) -> DmarDomain:
        """Name domains in allocation order, per driver instance: lock names and reports are
        then identical from run to run (a process-wide counter would leak between runs)."""
        self._domains_allocated += 1
        domain.ident = self._domains_allocated
        return domain

    @property
    def mainline(self) -> bool:
        return self.profile.cache_tags

    # -- probe --------------------------------------------------------------------------------
    def probe_device(self, info: DeviceInfo) -> Generator[Step, Any, int]:
        """Scalable mode: the PASID table at probe; mainline also programs the context entry
        here (``sm_context_setup == "probe"``)."""
        if not info.iommu.sm_enabled:
            return 0
        yield from pasid.intel_pasid_alloc_table(info)
        if self.profile.sm_context_setup == "probe":
            yield from ctx.device_pasid_table_setup(info)
        return 0

    # -- domain allocation ---------------------------------------------------------------------
    def domain_alloc_paging(self, iommu, type: str = "dma", stage: str | None = None, *,
                            nest_parent: bool = False) -> Generator[Step, Any, DmarDomain]:
        """A paging domain for devices behind ``iommu``: first stage by default where the unit
        prefers it (a nest parent is always SS); the depth is the widest the unit supports up
        to 57 bits; the static iotlb_sync_map flag is fixed now (seed 002)."""
        stage = stage or ("fs" if iommu_core.first_level_by_default(iommu.caps)
                          and not nest_parent else "ss")
        levels = self._levels(iommu, stage)
        pgtable = DomainPageTable(stage, levels, coherent=self._walk_coherent(iommu),
                                  force_snoop=False, large_pages=self._large_pages(iommu, stage))
        yield from pgtable.alloc_root()
        domain = self._numbered(DmarDomain(type, stage, pgtable, nest_parent=nest_parent))
        domain.pgsize_bitmap = SZ_4K | self._large_pages(iommu, stage)
        if self.profile.iotlb_sync_map == "static":
            domain.iotlb_sync_map = domain_need_iotlb_sync_map(domain, iommu)
        return domain

    def domain_alloc_identity(self) -> DmarDomain:
        return self._numbered(DmarDomain("identity", "pt"))

    def domain_alloc_nested(self, parent: DmarDomain, fs_pgd: int, fs_levels: int = 4):
        """``intel_iommu_domain_alloc_nested``: needs a nest-parent SS domain."""
        if not parent.nest_parent or parent.stage != "ss":
            raise SpecRuleBroken(f"{parent!r} is not a second-stage nest parent")
        nested = DmarDomain("nested", "nested", None, s2_domain=parent, fs_pgd=fs_pgd,
                            fs_levels=fs_levels)
        return self._numbered(nested)

    @staticmethod
    def _levels(iommu, stage: str) -> int:
        if stage == "fs":
            return 5 if iommu.caps.fs5lp and iommu.caps.mgaw >= 57 else 4
        fits = [lv for lv in iommu.caps.supported_levels if _LEVEL_WIDTH[lv] <= iommu.caps.mgaw]
        return max(fits or iommu.caps.supported_levels)

    @staticmethod
    def _walk_coherent(iommu) -> bool:
        """Legacy walks snoop with ECAP.C; scalable-mode walks with SMPWC (PWSNP set)."""
        return iommu.caps.smpwc if iommu.sm_enabled else iommu.caps.coherent

    @staticmethod
    def _large_pages(iommu, stage: str) -> int:
        caps = iommu.caps
        if stage == "fs":
            return SZ_2M | (SZ_1G if caps.fs1gp else 0)
        return (SZ_2M if caps.sllps_2m else 0) | (SZ_1G if caps.sllps_1g else 0)

    # -- attach --------------------------------------------------------------------------------
    def paging_domain_compatible(self, domain: DmarDomain, iommu) -> int:
        """A force-snooping domain needs ECAP.SC (seed 004); a static iotlb_sync_map domain
        cannot go to a unit needing map flushes it does not do (seed 002: -EINVAL)."""
        if domain.force_snooping and not iommu.caps.sc:
            return EINVAL
        if (self.profile.iotlb_sync_map == "static" and domain.stage != "pt"
                and not domain.iotlb_sync_map and domain_need_iotlb_sync_map(domain, iommu)):
            return EINVAL
        return 0

    def attach_dev(self, domain: DmarDomain, info: DeviceInfo) -> Generator[Step, Any, int]:
        """``intel_iommu_attach_device`` for the device's RID: ``attach_dev_prepare``, then
        the rest of ``dmar_domain_attach_device``."""
        ret = yield from self.attach_dev_prepare(domain, info)
        if ret:
            return ret
        return (yield from self.dmar_domain_attach_device(domain, info))

    def attach_dev_prepare(self, domain: DmarDomain, info: DeviceInfo):
        """The attach up to the point where the hardware could see the new domain: the old
        translation blocked, the compatibility check, the DID and the device list (the
        checker can run this part as set-up and race only the rest)."""
        yield Annotate(event="attach_device_to_domain", data=(info.name, domain.ident))
        if info.domain is not None:
            if self.mainline:
                yield from self.device_block_translation(info)
            else:
                yield from self.dmar_remove_one_dev_info(info)
        ret = self.paging_domain_compatible(domain, info.iommu)
        if ret:
            return ret
        yield from domain_attach_iommu(domain, info.iommu)
        info.domain = domain
        yield from domain_add_device(domain, info)
        return 0

    def dmar_domain_attach_device(self, domain: DmarDomain, info: DeviceInfo):
        """After ``attach_dev_prepare``: cache tags and the context / RID_PASID entry."""
        iommu, prof = info.iommu, self.profile
        early_tags = self.mainline and prof.cache_tag_assign_before_context
        if early_tags:
            # Jason's order (seed 002): start invalidating for the new tags before the
            # hardware can walk the new tables; ATS first, since DEVTLB tags need it.
            self.iommu_enable_pci_caps(info)
            yield from ct.cache_tag_assign_domain(domain, info, IOMMU_NO_PASID)
        if prof.rwbf_flush_before_context and rwbf_required(iommu):
            # Seed 002: PTEs a concurrent map wrote must be out of the write buffer before
            # the context makes the unit walk them.
            yield from iommu.iommu_flush_write_buffer()
        ret = yield from self._program_rid(domain, info)
        if ret:
            return ret
        if not early_tags:
            self.iommu_enable_pci_caps(info)
            if self.mainline:
                yield from ct.cache_tag_assign_domain(domain, info, IOMMU_NO_PASID)
        if prof.iotlb_sync_map == "dynamic":
            # 6.12 dmar_domain_attach_device (12724ce3fe1a, July 2025, in 6.12 stable): the
            # flag is OR-ed in last, after the context is live - the window Jason objected
            # to (a concurrent map skips its flush).
            domain.iotlb_sync_map |= domain_need_iotlb_sync_map(domain, iommu)
        return 0

    def _program_rid(self, domain: DmarDomain, info: DeviceInfo):
        """Legacy: the context entry.  Scalable: the RID_PASID entry, and in 6.1 (context set
        up at attach) the context entry after it, as the recordings order them."""
        iommu = info.iommu
        if not iommu.sm_enabled:
            return (yield from ctx.domain_context_mapping_one(domain, iommu, info))
        ret = yield from self._setup_pasid_entry(domain, info, IOMMU_NO_PASID)
        if ret:
            return ret
        if self.profile.sm_context_setup == "attach":
            return (yield from ctx.domain_context_mapping_one(domain, iommu, info))
        return 0

    def _setup_pasid_entry(self, domain: DmarDomain, info: DeviceInfo, pasid_: int):
        iommu = info.iommu
        if domain.stage == "pt":
            return (yield from pasid.intel_pasid_setup_pass_through(iommu, info, pasid_))
        if domain.stage == "fs":
            return (yield from pasid.intel_pasid_setup_first_level(iommu, domain, info, pasid_))
        if domain.stage == "nested":
            return (yield from pasid.intel_pasid_setup_nested(iommu, domain, info, pasid_))
        return (yield from pasid.intel_pasid_setup_second_level(iommu, domain, info, pasid_))

    @staticmethod
    def iommu_enable_pci_caps(info: DeviceInfo) -> None:
        """Enable ATS (needs ECAP.DT), PASID and PRI on the device (PCI config writes, not
        steps: no VT-d state changes)."""
        caps = info.iommu.caps
        info.ats_enabled = info.ats_supported and caps.dt
        info.pasid_enabled = info.pasid_supported and caps.pasid
        info.pri_enabled = info.pri_supported and caps.prs and info.ats_enabled

    @staticmethod
    def iommu_disable_pci_caps(info: DeviceInfo) -> None:
        info.ats_enabled = info.pri_enabled = info.pasid_enabled = False

    def device_block_translation(self, info: DeviceInfo):
        """Mainline: drop the old tags *first*, tear the translation down, disable ATS,
        detach the old domain (RID attach is never hitless)."""
        domain, iommu = info.domain, info.iommu
        yield from ct.cache_tag_unassign_domain(domain, info, IOMMU_NO_PASID)
        if iommu.sm_enabled:
            yield from pasid.intel_pasid_tear_down_entry(iommu, info, IOMMU_NO_PASID,
                                                         self.profile)
        else:
            yield from ctx.domain_context_clear_one(info, self.profile)
        self.iommu_disable_pci_caps(info)
        yield from domain_remove_device(domain, info)
        yield from domain_detach_iommu(domain, iommu)
        info.domain = None

    def dmar_remove_one_dev_info(self, info: DeviceInfo):
        """6.1: PASID 0 teardown (scalable), ATS off, context cleared and flushed, detach
        (linux-driver.md 3.7; read from source, not in the recordings: unconfirmed)."""
        domain, iommu = info.domain, info.iommu
        if iommu.sm_enabled:
            yield from pasid.intel_pasid_tear_down_entry(iommu, info, IOMMU_NO_PASID,
                                                         self.profile)
        self.iommu_disable_pci_caps(info)
        yield from ctx.domain_context_clear_one(info, self.profile)
        yield from domain_remove_device(domain, info)
        yield from domain_detach_iommu(domain, iommu)
        info.domain = None

    # -- PASID attach --------------------------------------------------------------------------
    def set_dev_pasid(self, domain: DmarDomain, info: DeviceInfo, pasid_: int,
                      old: DmarDomain | None = None) -> Generator[Step, Any, int]:
        """``intel_iommu_set_dev_pasid``: new DID and tags first, then the entry (torn down
        first when replacing), then the old tags and DID go (spec-safe hand-over)."""
        iommu = info.iommu
        if not iommu.sm_enabled or not info.pasid_enabled:
            return EINVAL
        ret = self.paging_domain_compatible(domain, iommu) if domain.stage != "nested" else 0
        if ret:
            return ret
        yield from domain_attach_iommu(domain, iommu)
        if self.mainline:
            yield from ct.cache_tag_assign_domain(domain, info, pasid_)
        domain.dev_pasids.append((info, pasid_))
        if old is not None:
            yield from pasid.intel_pasid_tear_down_entry(iommu, info, pasid_, self.profile)
        ret = yield from self._setup_pasid_entry(domain, info, pasid_)
        if ret:
            yield from self._domain_remove_dev_pasid(domain, info, pasid_)
            return ret
        if old is not None:
            yield from self._domain_remove_dev_pasid(old, info, pasid_)
        info.pasid_domains[pasid_] = domain
        return 0

    def remove_dev_pasid(self, info: DeviceInfo, pasid_: int):
        """``intel_iommu_remove_dev_pasid``: tear the entry down, then drop tags and DID."""
        if pasid_ not in info.pasid_domains:
            # iommu_detach_device_pasid() only reaches the driver for an attached PASID.
            raise SpecRuleBroken(f"remove_dev_pasid of pasid={pasid_:#x}, not attached to "
                                 f"sid={info.sid:#x}", "iommu_detach_device_pasid")
        domain = info.pasid_domains.pop(pasid_)
        yield from pasid.intel_pasid_tear_down_entry(info.iommu, info, pasid_, self.profile)
        yield from self._domain_remove_dev_pasid(domain, info, pasid_)

    def _domain_remove_dev_pasid(self, domain: DmarDomain, info: DeviceInfo, pasid_: int):
        if self.mainline:
            yield from ct.cache_tag_unassign_domain(domain, info, pasid_)
        domain.dev_pasids.remove((info, pasid_))
        yield from domain_detach_iommu(domain, info.iommu)

    # -- map / unmap ---------------------------------------------------------------------------
    def map_pages(self, domain: DmarDomain, iova: int, paddr: int, pgsize: int, pgcount: int,
                  prot: int) -> Generator[Step, Any, int]:
        """The page table's map generator itself (it returns the size): one frame fewer for
        each of its steps."""
        # __domain_mapping sets has_mappings before it writes a PTE (e645c20e8e9c): the
        # caller's ``yield from`` calls this right before the generator's first step.
        domain.has_mappings = True
        return domain.pgtable.map(iova, paddr, pgsize * pgcount, prot)

    def unmap_pages(self, domain: DmarDomain, iova: int, pgsize: int, pgcount: int, gather):
        """The range goes into the gather unless the caller queues it (flush queue)."""
        res = yield from domain.pgtable.unmap(iova, pgsize * pgcount)
        gather.freelist.extend(res.freelist)
        if not gather.queued and res.size:
            yield from iommu_core.iommu_iotlb_gather_add_page(self, domain, gather, iova,
                                                              res.size)
        return res.size

    def iotlb_sync_map(self, domain: DmarDomain, iova: int, size: int):
        """6.1: notify every unit (``__mapping_notify_one``); mainline: flush only when the
        domain's iotlb_sync_map flag says so (seed 002).  Either generator itself (each
        returns 0), not one delegating to it: one frame fewer for each step of every map."""
        if self.profile.iotlb_sync_map == "notify":
            return f61.intel_iommu_iotlb_sync_map_linux61(domain, self.profile, iova, size)
        return self._iotlb_sync_map_flag(domain, iova, size)

    def _iotlb_sync_map_flag(self, domain: DmarDomain, iova: int, size: int):
        if domain.iotlb_sync_map:
            yield from ct.cache_tag_flush_range_np(domain, self.profile, iova, iova + size - 1)
        return 0

    def iotlb_sync(self, domain: DmarDomain, gather):
        """``intel_iommu_tlb_sync``: flush, then free the page-table pages.  With none to
        free (nearly every unmap) the flush's generator itself, not one delegating to it:
        one frame fewer for each step of every strict unmap's flush."""
        if self.mainline:
            flush = ct.cache_tag_flush_range(domain, self.profile, gather.start, gather.end,
                                             int(not gather.freelist))
        else:
            flush = f61.intel_iommu_tlb_sync_linux61(domain, self.profile, gather)
        return self._free_after(flush, gather) if gather.freelist else flush

    @staticmethod
    def _free_after(flush, gather):
        """The rest of ``intel_iommu_tlb_sync``: the freed page-table pages go back only once
        the flush is done (``iommu_put_pages_list``)."""
        yield from flush
        for page in gather.freelist:
            yield FreePage(addr=page, what="page-table page", why="intel_iommu_tlb_sync")
        gather.freelist = []

    def flush_iotlb_all(self, domain: DmarDomain):
        if self.mainline:
            yield from ct.cache_tag_flush_all(domain, self.profile)
        else:
            yield from f61.intel_flush_iotlb_all(domain, self.profile)

    # -- convenience entry points (iommu.c) ----------------------------------------------------
    def map(self, domain, iova, paddr, size, prot):
        return iommu_core.iommu_map(self, domain, iova, paddr, size, prot)

    def map_sg(self, domain, iova, sg, prot):
        return iommu_core.iommu_map_sg(self, domain, iova, sg, prot)

    def unmap(self, domain, iova, size):
        return iommu_core.iommu_unmap(self, domain, iova, size)

    # -- coherency (seed 004) ------------------------------------------------------------------
    def attached_iommus(self, domain: DmarDomain) -> list:
        return [d.iommu for d in domain.iommus()]

    def enforce_cache_coherency(self, domain: DmarDomain) -> Generator[Step, Any, bool]:
        """Block no-snoop for the whole domain, permanently: SS domains put SNP in every later
        leaf PTE, FS domains set PGSNP in each attached RID's PASID entry (and in later
        attaches).  Refused unless every attached unit has ECAP.SC.  With the profile switch
        off the op does not exist (VFIO then tells KVM to make WBINVD work)."""
        if not self.profile.enforce_cache_coherency:
            return False
        yield Lock(name=domain.lock, why="intel_iommu_enforce_cache_coherency")
        ok = True
        if self._refuses_mapped(domain):
            ok = False
        elif not domain.force_snooping:
            ok = all(iommu.caps.sc for iommu in self.attached_iommus(domain))
            if ok:
                yield from self._domain_set_force_snooping(domain)
                domain.force_snooping = True
        yield Unlock(name=domain.lock, why="intel_iommu_enforce_cache_coherency")
        return ok

    def _refuses_mapped(self, domain: DmarDomain) -> bool:
        """Mainline refuses a second-stage domain with mappings, whose PTEs would keep SNP=0
        (e645c20e8e9c, v6.7; kept by 0fa6f0893466's ``intel_iommu_enforce_cache_coherency_ss``,
        which checks ``has_mappings`` on every call, even on a force-snooped domain)."""
        return (self.profile.enforce_coherency_empty_only and not domain.use_first_level
                and domain.has_mappings)

    def _domain_set_force_snooping(self, domain: DmarDomain):
        if not domain.use_first_level:
            # Existing PTEs keep SNP=0 where the profile lets a mapped domain through (6.1).
            domain.pgtable.force_snoop = True
            return
        for info in list(domain.devices):
            if info.iommu.sm_enabled:
                yield from pasid.intel_pasid_setup_page_snoop_control(info.iommu, info,
                                                                      IOMMU_NO_PASID)
