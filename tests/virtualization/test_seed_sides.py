"""The vIOMMU sides of the seed threads, as direct runs on built platforms (the interleaving
checker's litmus versions are future work)."""

from vtdsim.driver import iommu_core
from vtdsim.driver.dma_api import IommuDmaCookie, iommu_dma_map_page, iommu_dma_unmap_page
from vtdsim.driver.iommu_core import IommuIotlbGather
from vtdsim.driver.iova import IovaDomain
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.simulation.machine import build

DEV = "01:00.0"
PHYS, IOVA = 0x4000_0000, 0x10_0000
RW = IOMMU_READ | IOMMU_WRITE
_map_without_sync = getattr(iommu_core, "__iommu_map")  # the PTEs, no iotlb_sync_map


def _machine(platform, profile="linux-6.1", **kw):
    m = build(platform, profile=profile, **kw)
    m.device(DEV, ats=kw.get("device_iotlb", False))
    return m, m.guest.attach([DEV])


def test_seed002_a_map_without_its_cm_flush_is_invisible_to_emulated_devices_only():
    """QEMU caches no negative entry, so an emulated device sees the new PTE at once; the
    shadow never hears of it, so the assigned device faults at the host unit."""
    for platform, reaches in (("emulated", True), ("shadow", False)):
        m, domain = _machine(platform)
        maps = m.backends[DEV].stats["vfio_map_dma"] if platform == "shadow" else 0
        m.guest.run(_map_without_sync(m.guest.driver, domain, IOVA, PHYS, 4096, RW))
        result = m.dma_endpoint(DEV).dma_read(IOVA, 8)
        assert bool(result) is reaches, platform
        if platform == "shadow":
            assert m.backends[DEV].stats["vfio_map_dma"] == maps
            m.guest.run(m.guest.driver.iotlb_sync_map(domain, IOVA, 4096))  # the CM flush
            assert m.dma_endpoint(DEV).dma_read(IOVA, 8)


def test_seed000_the_physical_device_tlb_is_the_hosts_to_flush():
    """Behind a shadowing vIOMMU the assigned device's ATC is invalidated by the host's own
    strict unmap, whatever device-TLB flushes the guest sends (Kevin Tian: no vIOMMU relies
    on the guest's device-TLB behaviour)."""
    m, domain = _machine("shadow", device_iotlb=True)
    cookie = IommuDmaCookie(m.guest.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    iova = m.guest.run(iommu_dma_map_page(cookie, PHYS, 4096))
    device = m.dma_endpoint(DEV)
    assert device.dma_read(iova, 8)  # ATS translation: the ATC holds the shadow mapping
    before = m.host.unit.stats["desc:dev_tlb_inv"]
    m.guest.run(iommu_dma_unmap_page(cookie, iova, 4096))
    assert m.host.unit.stats["desc:dev_tlb_inv"] > before
    assert not device.dma_read(iova, 8)


def test_seed003_first_stage_guest_on_nesting_vmm_lazy_exposure_is_host_iotlb_deep():
    """A first-stage guest on a nesting vIOMMU: an unmap whose flush is deferred (the flush
    queue) leaves the host unit's nested IOTLB entry usable until the forwarded flush."""
    m, domain = _machine("nested", profile="mainline")
    drv = m.guest.driver
    m.guest.run(drv.map(domain, IOVA, PHYS, 4096, RW))
    device = m.dma_endpoint(DEV)
    assert device.dma_read(IOVA, 8)  # the host unit caches the nested translation
    gather = IommuIotlbGather(queued=True)
    m.guest.run(iommu_core.iommu_unmap_fast(drv, domain, IOVA, 4096, gather))
    assert device.dma_read(IOVA, 8)  # stale: the guest has not flushed yet
    forwarded = m.backends[DEV].stats["iommufd_cache_invalidate"]
    m.guest.run(drv.flush_iotlb_all(domain))  # the flush queue's flush
    assert m.backends[DEV].stats["iommufd_cache_invalidate"] > forwarded
    assert not device.dma_read(IOVA, 8)


def test_seed000_nesting_the_forwarded_piotlb_flushes_the_physical_device_tlb():
    """Behind a nesting vIOMMU the guest's own device-TLB descriptor reaches no listener;
    the forwarded PASID-IOTLB invalidation makes the host driver flush the device-TLB too
    (cache_tag_flush_range over the nested domain's tags)."""
    m = build("nested", profile="mainline", device_iotlb=True)
    m.device(DEV, ats=True)
    domain = m.guest.attach([DEV])
    cookie = IommuDmaCookie(m.guest.driver, domain, IovaDomain(ncpus=2), ncpus=2)
    iova = m.guest.run(iommu_dma_map_page(cookie, PHYS, 4096))
    device = m.dma_endpoint(DEV)
    assert device.dma_read(iova, 8) and len(device.device_tlb) == 1
    before = m.host.unit.stats["desc:dev_tlb_inv"]
    m.guest.run(iommu_dma_unmap_page(cookie, iova, 4096))
    assert m.vmm.stats["vmm_notify_deviotlb_unmap"] == 0  # nobody listens to the guest's
    assert m.host.unit.stats["desc:dev_tlb_inv"] == before + 1
    assert len(device.device_tlb) == 0 and not device.dma_read(iova, 8)
