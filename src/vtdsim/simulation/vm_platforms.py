"""The vIOMMU platforms of the timed simulator (``emulated``, ``shadow``, ``nested``): a guest
queue-tail write is a VM exit whose price is the exit round trip plus the VMM's work the
virtualization layer counted inside it (viommu-and-costs.md section 9): QEMU's per-descriptor
processing, the shadow page walk's guest-PTE reads, VFIO MAP/UNMAP calls, iommufd
cache-invalidate calls forwarded to the host, and the host driver's own queue-tail writes and
descriptors on the physical unit.

The machine is ``machine.build``'s (one VMM model: ``virtualization.vmm.Vmm``); this module
only prices what it counts.  ``bind(machine)`` hands the built ``Machine`` over, whose
``counts()`` (plus the guest unit's ``desc:*``) are the cumulative counters an exit's work is
the difference of.

Not modelled: the host's invalidation hardware as its own timed process (the host driver's
descriptors are priced inside the exit, the host CPU waiting for them as QEMU's thread does),
vCPU preemption, halt-polling, posted-interrupt delivery of the guest's completion.
"""

from __future__ import annotations

from collections.abc import Mapping

from vtdsim.simulation.platforms import ExitPlatform, register_platform

# counter (Machine.counts() / the guest unit) -> the constant pricing one event
VMM_WORK = {
    "exit_descriptors": "vmm_descriptor_ns",  # vtd_process_inv_desc per fetched descriptor
    "vmm_walk_reads": "vmm_walk_read_ns",  # vtd_page_walk reading guest PTEs (shadow sync)
    "vmm_vfio_map_dma": "vfio_call_ns",  # VFIO_IOMMU_MAP_DMA: pin + host iommu_map
    "vmm_vfio_unmap_dma": "vfio_call_ns",  # VFIO_IOMMU_UNMAP_DMA: host iommu_unmap + unpin
    "vmm_iommufd_cache_invalidate": "iommufd_call_ns",  # IOMMU_HWPT_INVALIDATE (nested)
    "host_iqt_writes": "mmio_write_ns",  # the host driver's own qi_submit_sync tail writes
    "host_descriptors": "qi_descriptor_ns",  # ... and each descriptor the host unit performs
}


class VmmPlatform(ExitPlatform):
    """QEMU's intel-iommu behind KVM: one exit per guest IQT write (``--exits trap``), or a
    VMM core polling the emulated queue (``--exits sidecore``)."""

    work_ns = VMM_WORK

    def __init__(self, constants, exits: str = "trap", name: str = "emulated"):
        super().__init__(constants, exits)
        self.name = self.machine = name
        self.built = None

    def bind(self, built) -> None:
        """The built ``simulation.machine.Machine`` whose counts price the exits."""
        self.built = built

    def counters(self, timed) -> Mapping[str, int]:
        counts = self.built.counts()
        stats = timed.stats
        out = {key: stats[key] for key in self.iqt_keys if key.startswith("desc:")}
        out.update({key: counts[key] for key in self.prices})
        return out


def _factory(name: str):
    def make(constants, exits: str = "trap") -> VmmPlatform:
        return VmmPlatform(constants, exits, name)
    return make


for _name in ("emulated", "shadow", "nested"):
    register_platform(_name, _factory(_name))
