"""A device assigned through iommufd with a nested first stage (QEMU ``x-flts=on`` with the
iommufd backend, merged January 2026; reference section 6): the host unit walks the guest's
first-stage table, translating its GPAs through a host second-stage nest parent that maps
guest RAM 1:1 (GPA -> HPA).

QEMU's side (hw/i386/intel_iommu.c of the nesting series: ``vtd_pasid_cache_sync``,
``vtd_flush_host_piotlb_all_locked``): a guest PASID-cache invalidation re-reads the device's
RID_PASID entry - PGTT=FS binds a nested HWPT on the parent with the guest's FS root, PGTT=PT
attaches the parent, an invalid entry detaches (the device is blocked); a guest PASID-IOTLB
invalidation of a bound DID is forwarded as an iommufd cache invalidation, which the host
driver performs on the nested domain (Linux ``intel_nested_cache_invalidate_user`` ->
``cache_tag_flush_range``).  No shadow walk: the guest's map-time flushes are not needed.

Not modelled: PASIDs other than RID_PASID (QEMU supports only PASID 0 for passthrough
devices), SRE/WPE/EAFE flags of the stage-1 data, the SPR read-only-parent erratum.
"""

from __future__ import annotations

from collections import Counter

from vtdsim.driver import cache_tag
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.virtualization.backends import GUEST_RAM, host_name
from vtdsim.virtualization.guest_tables import read_device_tables


class IommufdNested:
    """The iommufd device: a nest-parent HWPT and, once the guest binds, a nested HWPT."""

    def __init__(self, vmm, host, sid: int, kvm=None) -> None:
        self.vmm, self.host, self.sid = vmm, host, sid
        self.name = host_name(sid)
        self.stats: Counter = Counter()
        vmm.backends.append(self)
        drv = host.driver
        self.parent = host.run(drv.domain_alloc_paging(host.iommu, type="unmanaged",
                                                       nest_parent=True))
        host.attach([self.name], domain=self.parent)
        if not host.run(drv.enforce_cache_coherency(self.parent)) and kvm is not None:
            kvm.register_noncoherent_dma()
        # IOMMU_IOAS_MAP of guest RAM into the parent: GPA -> HPA
        host.run(drv.map(self.parent, 0, 0, GUEST_RAM, IOMMU_READ | IOMMU_WRITE))
        self.stats["iommufd_ioas_map"] += 1
        self.nested = None
        self.bound = (None, 0)  # (guest FS root, DID) the nested HWPT was made for
        vmm.bind_hooks.append(self.on_invalidation)

    def on_invalidation(self, dtype: int, f: dict) -> None:
        """The VMM's PASID-IOTLB (type 6) and PASID-cache (type 7) handlers call this."""
        if dtype == 6:
            self.forward(f)
        else:
            self.pasid_cache_sync()

    def pasid_cache_sync(self) -> None:
        """``vtd_pasid_cache_sync`` for this device: bind, replace or detach."""
        tables = read_device_tables(self.vmm.unit, self.sid)
        host, drv = self.host, self.host.driver
        if tables.kind == "fs":
            if self.bound == (tables.root, tables.did):
                return
            self.nested = drv.domain_alloc_nested(self.parent, tables.root, tables.levels)
            host.attach([self.name], domain=self.nested)
            self.bound = (tables.root, tables.did)
            self.stats["iommufd_hwpt_alloc_nested"] += 1
        elif tables.kind == "pt":
            host.attach([self.name], domain=self.parent)
            self.nested, self.bound = None, (None, 0)
        else:
            host.run(drv.device_block_translation(host.devices[self.name]))
            self.nested, self.bound = None, (None, 0)
            self.stats["iommufd_detach"] += 1

    def forward(self, f: dict) -> None:
        """``vtd_flush_host_piotlb_all_locked``: an iommufd cache invalidation (VTD_S1) of
        the nested HWPT, only for its DID and PASID 0."""
        if self.nested is None or f["did"] != self.bound[1] or f["pasid"] != 0:
            return
        self.stats["iommufd_cache_invalidate"] += 1
        self.vmm.stats["vmm_iommufd_cache_invalidate"] += 1  # inside the exit
        if f["g"] == 2:
            start, end = 0, (1 << 64) - 1
        else:
            size = 1 << (12 + f["am"])
            start = f["addr"] & ~(size - 1)
            end = start + size - 1
        self.host.run(_flush_range(self.host.driver, self.nested, start, end, f.get("ih", 0)))


def _flush_range(driver, domain, start: int, end: int, ih: int):
    """``intel_nested_cache_invalidate_user`` -> ``cache_tag_flush_range`` (mainline host)."""
    yield from cache_tag.cache_tag_flush_range(domain, driver.profile, start, end, ih)
