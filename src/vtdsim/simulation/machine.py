"""The machine builder: bare metal, or a guest on a VMM on a host - each side a ``System``
(unit, Linux driver model, executor), so the same driver model runs as guest and as host.

Platforms (``PLATFORMS``):

* ``bare``: the driver on a hardware unit (a preset);
* ``emulated``: a guest on QEMU's emulated unit; its devices are QEMU's, every DMA translated
  by the emulated unit (``vhost``: through vhost's IOTLB);
* ``shadow``: the same guest with the device assigned through VFIO: the guest's second stage
  shadowed into the host unit, which the host's driver (mainline, strict: VFIO's domains are
  UNMANAGED) drives;
* ``nested``: a first-stage guest (x-flts) with the device assigned through iommufd: the host
  unit walks the guest's first-stage table nested over a host second-stage parent.

Memory: one ``PhysicalMemory``; guest RAM is GPA [0, 2 GiB) at HPA = GPA (KVM's memory slot
as one identity range), the host driver's pages live above it.  The guest's WBINVD works only
if KVM has non-coherent DMA registered (``virtualization.kvm``).

Not modelled: several VMs, guest RAM at an offset from host RAM (an identity slot cannot tell
a GPA used as an HPA from the right one), vCPU scheduling.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vtdsim.driver.profiles import Profile
from vtdsim.errors import BadInput
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CacheConfig
from vtdsim.hardware.request import parse_sid
from vtdsim.simulation.system import System
from vtdsim.virtualization import qemu
from vtdsim.virtualization.backends import GUEST_RAM, EmulatedAtc, VfioShadow, Vhost
from vtdsim.virtualization.kvm import Kvm
from vtdsim.virtualization.nesting import IommufdNested
from vtdsim.virtualization.vmm import Vmm

PLATFORMS = ("bare", "emulated", "shadow", "nested")
HOST_PAGES = (GUEST_RAM, GUEST_RAM + (1 << 30))  # the host driver's page-table pages
GUEST_PAGES = (1 << 24, 1 << 30)  # the guest driver's page-table pages
GUEST_DATA = (1 << 30, GUEST_RAM)  # guest RAM left for a workload's data buffers
HOST_UNIT = "server-sm"  # a host part with SC and NEST
# What carries a device's DMA unless asked otherwise: QEMU's own emulation, VFIO's shadow, or
# iommufd's nested first stage.
DEFAULT_BACKEND = {"bare": "emulated", "emulated": "emulated", "shadow": "vfio",
                   "nested": "iommufd"}
ASSIGNED = ("vfio", "iommufd")  # backends whose DMA the host unit translates


@dataclass
class Machine:
    """A built platform: the guest (or bare-metal) ``System``, and on a VM the VMM, KVM and
    the host ``System``; ``backends`` maps a device name to what carries its DMA."""

    platform: str
    guest: System
    vmm: Vmm | None = None
    kvm: Kvm | None = None
    host: System | None = None
    backends: dict[str, Any] = field(default_factory=dict)

    def device(self, name: str, *, ats: bool = False, kind: str | None = None,
               ats_qdep: int = 32, pasid: bool = False):
        """Probe ``name`` (BB:DD.F) in the guest and wire it as the platform does (``kind``:
        "emulated", "vhost", "vfio", "iommufd"; default by platform); ``ats``, ``ats_qdep``
        and ``pasid``: the function's capabilities (``System.probe``)."""
        kind = kind or DEFAULT_BACKEND[self.platform]
        sid = parse_sid(name)
        if self.vmm is not None:
            self.vmm.address_space(sid)  # vtd_find_add_as: QEMU's address space per device
        info = self.guest.probe(name, ats=ats, ats_qdep=ats_qdep, pasid=pasid)
        if kind == "vhost":
            self.backends[name] = Vhost(self.vmm, sid, ats=ats)
        elif kind == "emulated" and ats and self.vmm is not None:
            self.backends[name] = EmulatedAtc(self.vmm, self.guest.endpoint(name))
        elif kind in ("vfio", "iommufd"):
            if self.host is None:
                raise BadInput(f"a {kind} device needs a host: platform {self.platform}")
            self.host.probe(name, ats=ats, ats_qdep=ats_qdep, pasid=pasid)
            cls = VfioShadow if kind == "vfio" else IommufdNested
            self.backends[name] = cls(self.vmm, self.host, sid, self.kvm)
        if self.vmm is not None:
            # QEMU realizes the device before the guest runs, so the guest's DMAR enable
            # (vtd_handle_gcmd_te -> vtd_switch_address_space_all) found its address space:
            # with DMAR on it is in the IOMMU region even before the guest programs a context
            # entry (vtd_switch_address_space: not pass-through) - no 1:1 map of guest RAM.
            self.vmm.switch(self.vmm.address_space(sid))
        return info

    def dma_endpoint(self, name: str):
        """The endpoint whose DMA is the device's: the host's for an assigned device."""
        if self.assigned(name):
            return self.host.endpoint(name)
        return self.guest.endpoint(name)

    def assigned(self, name: str) -> bool:
        """Is the device assigned (VFIO or iommufd): its DMA the host unit's to translate?"""
        return self.host is not None and isinstance(self.backends.get(name),
                                                    (VfioShadow, IommufdNested))

    def host_domain(self, name: str):
        """The host domain translating the guest's IOVAs of an assigned device: VFIO's
        UNMANAGED shadow, or iommufd's nested HWPT once bound (None otherwise: the nest
        parent translates GPAs, not IOVAs)."""
        backend = self.backends.get(name)
        if isinstance(backend, VfioShadow):
            return backend.domain
        return getattr(backend, "nested", None)

    def dma_unit(self, name: str):
        """The unit translating the device's DMA: the host's for an assigned device, else the
        guest's (the emulated unit QEMU translates with, or bare metal's own)."""
        return self.dma_endpoint(name).unit

    def counts(self) -> Counter:
        """What the platform cost so far: exits, descriptors, VMM walk reads, VFIO calls,
        host invalidations."""
        out: Counter = Counter()
        out["guest_iqt_writes"] = self.guest.unit.stats["iqt_writes"]
        out["descriptors"] = sum(v for k, v in self.guest.unit.stats.items()
                                 if k.startswith("desc:"))
        if self.vmm is not None:
            for key in ("exits", "exit_descriptors", "vmm_walk_reads", "vmm_walks"):
                out[key] = self.vmm.stats[key]
            # the work the VMM did inside exits: VFIO calls, forwarded iommufd invalidations
            out.update({k: v for k, v in self.vmm.stats.items()
                        if k.startswith(("vmm_vfio_", "vmm_iommufd_"))})
            # QEMU translating emulated devices' DMA itself (vtd_iommu_translate)
            out["vmm_iotlb_hit"] = self.vmm.unit.iotlb.stats.hit
            out["vmm_iotlb_miss"] = self.vmm.unit.stats["iotlb_miss"]
        for backend in self.backends.values():
            out.update(getattr(backend, "stats", Counter()))
        if self.host is not None:
            hstats = self.host.unit.stats
            out["host_iqt_writes"] = hstats["iqt_writes"]
            out["host_invalidations"] = sum(v for k, v in hstats.items()
                                            if k.startswith("desc:") and k != "desc:inv_wait")
            out["host_descriptors"] = out["host_invalidations"] + hstats["desc:inv_wait"]
            # the host driver's stores: PTE installs are cmpxchgs (pfn_to_dma_pte,
            # __domain_mapping); plain writes are PTE clears and queue slots
            steps = self.host.executor.steps
            out["host_pte_cmpxchg"] = steps["CpuCmpxchg"]
            out["host_cpu_writes"] = steps["CpuWrite"]
        return out


def build(platform: str, *, profile: str | Profile = "linux-6.1", vmm: str = "qemu-7.2",
          unit: str = "qemu72-legacy-cm", host_profile: str | Profile = "mainline",
          host_unit: str = HOST_UNIT, record: bool = False,
          device_iotlb: bool = False, ncpus: int = 2,
          cache_config: CacheConfig | None = None, qi_mode: str = "sync") -> Machine:
    """Boot ``platform``: the guest's driver ``profile`` on ``unit`` (bare) or on the VMM
    ``vmm`` (caching mode on: device assignment needs it; first stage for ``nested``), the
    host's ``host_profile`` on ``host_unit`` for assigned devices.  ``ncpus``: the (guest's)
    CPUs; ``cache_config``: the physical unit's caches (bare metal's, or the host's);
    ``qi_mode``: bare metal's queue (the timed engine steps it: "async")."""
    if platform not in PLATFORMS:
        raise BadInput(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    if platform == "bare":
        return Machine(platform, System.boot(unit, profile, ncpus=ncpus, qi_mode=qi_mode,
                                             cache_config=cache_config))
    version = qemu.get_version(vmm)
    nested = platform == "nested"
    if nested and not get_preset(host_unit).nest:
        # iommufd's nest parent needs a host unit that walks a first stage over a second
        # (ECAP.NEST, spec 3.8); Linux refuses IOMMU_HWPT_ALLOC_NEST_PARENT without it
        raise BadInput(f"--platform nested: host unit {host_unit} has no nested translation "
                       f"(ECAP.NEST); use one that has (e.g. {HOST_UNIT})")
    if nested and version.pasid_cache != qemu.PROCESS:
        version = qemu.QEMU_NESTING
    the_vmm, host = vm_half(platform, version, vm_properties(platform, device_iotlb),
                            record=record, host_unit=host_unit, host_profile=host_profile,
                            cache_config=cache_config)
    guest = System.boot(profile=profile, vmm=the_vmm, page_range=GUEST_PAGES,
                        ncpus=ncpus)
    return Machine(platform, guest, the_vmm, Kvm(guest.platform), host)


def vm_half(platform: str, version: qemu.QemuVersion, props: qemu.QemuProperties, *,
            name: str = "dmar0", record: bool = False, host_unit: str = HOST_UNIT,
            host_profile: str | Profile = "mainline", cache_config: CacheConfig | None = None
            ) -> tuple[Vmm, System | None]:
    """A VM platform's machine below the guest: the VMM's emulated unit ``name`` in one
    physical memory with, for ``shadow``/``nested``, the host's driver booted on its own unit
    (the guest's driver boots on top: ``build``, or a recording's own boot in replay)."""
    memory = PhysicalMemory()
    the_vmm = Vmm(version, props, memory, name=name, record=record)
    host = None
    if platform in ("shadow", "nested"):
        host = System.boot(host_unit, host_profile, memory=memory, page_range=HOST_PAGES,
                           name="host-dmar0", cache_config=cache_config)
    return the_vmm, host


def vm_properties(platform: str, device_iotlb: bool = False) -> qemu.QemuProperties:
    """The ``-device intel-iommu`` properties a VM platform runs with: caching mode on (VFIO
    refuses assignment without it, ``vtd_iommu_notify_flag_changed``); scalable mode with
    x-flts for ``nested`` (the guest's first stage is what the host unit nests)."""
    nested = platform == "nested"
    return qemu.QemuProperties(caching_mode=True, scalable_mode=nested, flts=nested,
                               device_iotlb=device_iotlb)
