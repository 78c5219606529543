"""The devices behind the emulated unit as QEMU wires them (reference section 5): vhost with
its IOTLB, a VFIO device with a shadowed second stage in a host unit, and an iommufd device
whose first stage the host unit walks nested.  (An emulated device needs no listener: QEMU
translates its every DMA through the emulated unit - a guest ``Endpoint`` on ``vmm.unit``.)

Host side: ``host`` is a booted bare-metal machine (``simulation.System``: the host's unit
driven by the host's own Linux driver model) given by the builder; VFIO's type1 container
holds one UNMANAGED domain, always strict (``vfio_iommu_type1``: ``vfio_dma_do_map`` pins
then ``iommu_map``; ``vfio_dma_do_unmap`` ``iommu_unmap``s - the host IOTLB flush - then
unpins).  Guest RAM sits at HPA = GPA (one host range; see ``simulation.system``).

Not modelled: VFIO's batching of contiguous pinned pages into one ``iommu_map`` beyond one
notifier event, locked-memory accounting limits, vhost's IOTLB miss queue latency, iommufd
HWPT allocation failures (a bind failure is only logged by QEMU, so the model raises).
"""

from __future__ import annotations

from collections import Counter

from vtdsim.devices.device_tlb import DeviceTlb, DeviceTlbEntry
from vtdsim.driver.pgtable import IOMMU_READ, IOMMU_WRITE
from vtdsim.hardware.memory import PAGE_SIZE
from vtdsim.virtualization.address_space import DEVIOTLB_UNMAP, MAP, UNMAP, IommuEvent

GUEST_RAM = 1 << 31  # the guest's RAM: GPA [0, 2 GiB), as in the recordings


class VfioShadow:
    """A device assigned through VFIO: QEMU's MAP/UNMAP notifier feeding the host unit."""

    def __init__(self, vmm, host, sid: int, kvm=None) -> None:
        self.vmm, self.host, self.sid = vmm, host, sid
        self.stats: Counter = Counter()
        vmm.backends.append(self)
        self.domain = host.run(host.driver.domain_alloc_paging(host.iommu, type="unmanaged",
                                                               stage="ss"))
        host.attach([host_name(sid)], domain=self.domain)
        coherent = host.run(host.driver.enforce_cache_coherency(self.domain))
        if not coherent and kvm is not None:
            kvm.register_noncoherent_dma()  # kvm_vfio_update_coherency
        self.ram_mapped = False
        self.dma: dict[int, tuple[int, int]] = {}  # VFIO's vfio_dma records: iova -> size, gpa
        self.vas = vmm.register_notifier(sid, frozenset({MAP, UNMAP}), self.notify,
                                         self.region_switched)
        self.region_switched(self.vas.use_iommu)

    def notify(self, event: IommuEvent) -> None:
        """``vfio_iommu_map_notify``.  Only while the device's IOMMU region is in use: in
        pass-through (or with DMAR off) QEMU disables that region and VFIO's listener drops
        its IOMMU notifier (``vfio_listener_region_del``), guest RAM staying mapped 1:1."""
        if not self.vas.use_iommu:
            return
        if event.kind == MAP:
            prot = (IOMMU_READ if event.perm[0] else 0) | (IOMMU_WRITE if event.perm[1] else 0)
            self.map_dma(event.iova, event.size, event.gpa, prot)
        else:
            self.unmap_dma(event.iova, event.size)

    def region_switched(self, use_iommu: bool) -> None:
        """The memory listener sees the device's region change: with the IOMMU region the
        shadow replaces the 1:1 map of guest RAM, without it guest RAM is mapped 1:1."""
        if use_iommu and self.ram_mapped:
            self.unmap_dma(0, GUEST_RAM)
            self.ram_mapped = False
        elif not use_iommu and not self.ram_mapped:
            self.unmap_dma(0, 1 << 48)  # whatever the shadow held
            self.map_dma(0, GUEST_RAM, 0, IOMMU_READ | IOMMU_WRITE)
            self.ram_mapped = True

    def map_dma(self, iova: int, size: int, gpa: int, prot: int) -> None:
        """``VFIO_IOMMU_MAP_DMA``: pin every page, then map IOVA -> HPA in the host unit.  A
        guest address outside its RAM is no memory QEMU can hand VFIO
        (``vfio_iommu_map_notify``: the translation is not RAM, logged and skipped)."""
        if gpa + size > GUEST_RAM or iova + size > 1 << 48:
            self.stats["vfio_map_skipped_not_ram"] += 1
            return
        self.stats["vfio_map_dma"] += 1
        self.vmm.stats["vmm_vfio_map_dma"] += 1  # an ioctl inside the exit: the VMM's work
        # vfio_pin_pages_remote: every page of the range pinned (what is pinned is the
        # vfio_dma records' ranges: ``pinned_pages``)
        self.stats["vfio_pinned_pages"] += size // PAGE_SIZE
        self.host.run(self.host.driver.map(self.domain, iova, gpa, size, prot))
        self.dma[iova] = (size, gpa)

    def unmap_dma(self, iova: int, size: int) -> None:
        """``VFIO_IOMMU_UNMAP_DMA``: unmap (strict: the host's own invalidation), unpin."""
        self.stats["vfio_unmap_dma"] += 1
        self.vmm.stats["vmm_vfio_unmap_dma"] += 1
        for base, (msize, _gpa) in self.mappings_in(iova, size):
            self.host.run(self.host.driver.unmap(self.domain, base, msize))
            self.stats["vfio_unpinned_pages"] += msize // PAGE_SIZE
            del self.dma[base]

    @property
    def pinned_pages(self) -> int:
        """Pages pinned now: those of every vfio_dma record (unpinned with their unmap)."""
        return sum(size // PAGE_SIZE for size, _gpa in self.dma.values())

    def mappings_in(self, iova: int, size: int) -> list[tuple[int, tuple[int, int]]]:
        """Mappings inside [iova, iova + size) (type1 unmaps whole vfio_dma entries)."""
        return sorted((b, m) for b, m in self.dma.items()
                      if b >= iova and b + m[0] <= iova + size)


class EmulatedAtc:
    """An emulated device with an ATC (``ats=on``): QEMU delivers the guest's device-TLB
    invalidations to it as DEVIOTLB_UNMAP (the PCI device's IOTLB notifier); it always
    completes - QEMU has no ITE."""

    def __init__(self, vmm, endpoint) -> None:
        self.endpoint = endpoint
        self.stats: Counter = Counter()
        vmm.backends.append(self)
        vmm.register_notifier(endpoint.sid, frozenset({DEVIOTLB_UNMAP}), self.notify)

    def notify(self, event: IommuEvent) -> None:
        self.stats["emulated_atc_invalidations"] += 1
        self.endpoint.ats_invalidate(None, event.iova, event.size)


def host_name(sid: int) -> str:
    return f"{sid >> 8:02x}:{sid >> 3 & 0x1F:02x}.{sid & 7}"


class Vhost:
    """vhost's IOTLB for a virtio device: translations asked of QEMU on a miss
    (``vhost_device_iotlb_miss`` -> the emulated unit's translate), dropped on UNMAP - or,
    when the guest sees ATS (``ats=on``, device-iotlb=on), only on DEVIOTLB_UNMAP from the
    guest's device-TLB invalidations ("Do not notify regular iotlb to device-iotlb
    notifiers", QEMU 5.2)."""

    def __init__(self, vmm, sid: int, *, ats: bool, capacity: int = 64) -> None:
        self.vmm, self.sid, self.ats = vmm, sid, ats
        self.iotlb = DeviceTlb(capacity, name="vhost_iotlb")
        self.stats: Counter = Counter()
        vmm.backends.append(self)
        kinds = frozenset({DEVIOTLB_UNMAP}) if ats else frozenset({UNMAP})
        vmm.register_notifier(sid, kinds, self.notify)

    def notify(self, event: IommuEvent) -> None:
        self.stats["vhost_invalidations"] += 1
        self.iotlb.invalidate(None, event.iova, event.size)

    def translate(self, iova: int, write: bool):
        """The host address for ``iova`` (a cached translation, else QEMU's), or a Fault."""
        entry = self.iotlb.lookup(None, iova)
        if entry is not None and entry.permits(write):
            return entry.translate(iova)
        self.stats["vhost_iotlb_miss"] += 1
        result = self.vmm.unit.translate(self.sid, iova, write)
        if not result:
            return result
        self.iotlb.fill_entry(DeviceTlbEntry(None, result.iova_base, result.size, result.hpa,
                                             result.read, result.write))
        return result.hpa | (iova & result.offset_mask)
