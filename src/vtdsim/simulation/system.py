"""A booted machine for direct simulation: one remapping unit, the Linux driver model on top of
it, a direct executor, and PCIe endpoints - the set-up every simulation, benchmark, demo, trace
replay and driver test shares.

``System.boot`` runs the driver's ``init_hw`` (QI enable, root table, global invalidations,
translation enable unless asked to wait, as ``intel_iommu_init`` does after attaching the
default domains) exactly as Linux does, on a named preset or on recorded ``Capabilities``;
``probe`` creates a device (``DeviceInfo`` for the driver, an ``Endpoint`` on the bus) and
``attach`` gives it a paging domain.  The driver's ``qi_submit`` annotations are collected in
``submitted`` as (IQT-write index, label, unit name, qw0..qw3); ``take_submissions`` hands
them over grouped by IQT write and forgets them, so a long run keeps no history.  ``events``
counts every annotation by its event (map, unmap, qi_submit ...).

Not modelled: several units (one DRHD covers every device), hot-plug, the BIOS's RMRRs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from vtdsim.devices.endpoint import Endpoint
from vtdsim.driver.device import DeviceInfo
from vtdsim.driver.domain import DmarDomain
from vtdsim.driver.executor import DirectExecutor
from vtdsim.driver.intel_iommu import IntelIommu
from vtdsim.driver.intel_iommu_ops import IntelIommuDriver
from vtdsim.driver.platform import DEFAULT_PAGE_BASE, DEFAULT_PAGE_LIMIT, Platform
from vtdsim.driver.profiles import Profile, get_profile
from vtdsim.driver.steps import Annotate
from vtdsim.errors import BadInput, SpecRuleBroken
from vtdsim.hardware.capabilities import Capabilities
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import CacheConfig, RemappingUnit
from vtdsim.hardware.request import format_sid, parse_sid


@dataclass
class System:
    platform: Platform
    executor: DirectExecutor
    iommu: IntelIommu
    driver: IntelIommuDriver
    profile: Profile
    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    submitted: list[tuple] = field(default_factory=list)
    events: Counter = field(default_factory=Counter)  # the driver's annotations by event
    _iqt_taken: int = 0  # IQT writes ``take_submissions`` has handed over

    @classmethod
    def boot(
        cls,
        unit: str | Capabilities = "qemu72-legacy-cm",
        profile: str | Profile = "linux-6.1",
        *,
        name: str = "dmar0",
        qi_mode: str = "sync",
        cache_config: CacheConfig | None = None,
        scalable: bool = True,
        ncpus: int = 2,
        enable_translation: bool = True,
        memory: PhysicalMemory | None = None,
        page_range: tuple[int, int] | None = None,
        vmm: Any = None,
    ) -> System:
        """A unit (a preset name, or recorded CAP/ECAP) booted by the driver ``profile``
        (scalable mode when the unit offers it, unless ``scalable=False`` as with
        ``intel_iommu=sm_off``).  ``enable_translation=False`` stops before GCMD.TE: the caller
        attaches domains, then runs ``iommu.iommu_enable_translation()``.  A guest passes the
        VMM (``virtualization.vmm.Vmm``) whose emulated unit it runs on, and the memory it
        shares with the host; ``page_range`` is where the driver allocates its pages."""
        prof = get_profile(profile) if isinstance(profile, str) else profile
        if vmm is not None:
            if cache_config is not None or qi_mode != "sync" or memory is not None:
                raise BadInput("a guest on a VMM takes the VMM's unit, caches, memory and "
                               "synchronous queue: no cache_config, qi_mode or memory")
            hw, memory = vmm.unit, vmm.unit.memory
        else:
            caps = get_preset(unit) if isinstance(unit, str) else unit
            memory = memory or PhysicalMemory()
            hw = RemappingUnit(caps, memory, name=name,
                               cache_config=cache_config or CacheConfig(), qi_mode=qi_mode)
        caps = hw.caps
        base, limit = page_range or (DEFAULT_PAGE_BASE, DEFAULT_PAGE_LIMIT)
        platform = Platform(memory, [hw], ncpus=ncpus, page_base=base, page_limit=limit)
        executor = DirectExecutor(platform)
        iommu = IntelIommu(0, caps, profile=prof, sm_on=scalable)
        system = cls(platform, executor, iommu, IntelIommuDriver(platform, prof, [iommu]), prof)
        executor.listeners.append(system._on_annotate)
        system.run(iommu.init_hw(enable_translation=enable_translation))
        return system

    @property
    def unit(self) -> RemappingUnit:
        return self.platform.units[0]

    def run(self, gen: Generator) -> Any:
        return self.executor.run(gen)

    def _on_annotate(self, step: Annotate) -> None:
        event = step.event
        self.events[event] += 1
        if event == "qi_submit":
            # The IQT write that carries it comes after the annotation: count it already.
            self.submitted.append((self.platform.units[0].stats["iqt_writes"] + 1, *step.data))

    def descriptors_pending(self) -> bool:
        """Has ``qi_submit`` put a descriptor in the queue since the last
        ``take_submissions``?  (An IQT write without one - the queue's set-up - waits for the
        next take that has one.)"""
        return bool(self.submitted)

    def take_submissions(self) -> list[list[tuple]]:
        """Every IQT write since the last call, in order, each as the list of descriptors
        ``(label, qw0, qw1, qw2, qw3)`` that ``qi_submit`` put behind it (an IQT write
        without any - a queue enable, a guest writing IQT by hand - gives an empty list)."""
        writes = self.unit.stats["iqt_writes"]
        out: list[list[tuple]] = [[] for _ in range(writes - self._iqt_taken)]
        first = self._iqt_taken + 1
        for item in self.submitted:  # (at, label, unit name, qw0..qw3)
            out[item[0] - first].append((item[1], *item[3:]))
        self.submitted.clear()
        self._iqt_taken = writes
        return out

    # -- devices and domains ----------------------------------------------------------------------
    def probe(self, name: str, *, ats: bool = False, ats_qdep: int = 32,
              pasid: bool = False) -> DeviceInfo:
        """A PCI function appears: the driver probes it, an endpoint joins the bus.  ``ats``
        and ``pasid``: the function's ATS and PASID capabilities (``ats_qdep``: its ATS
        invalidate queue depth; a PASID-capable endpoint may prefix its requests)."""
        sid = parse_sid(name)
        info = DeviceInfo(sid, self.iommu, ats_supported=ats, ats_qdep=ats_qdep if ats else 0,
                          pasid_supported=pasid)
        self.run(self.driver.probe_device(info))
        endpoint = Endpoint(sid, ats=ats, ats_queue_depth=ats_qdep if ats else 0,
                            pasid_capable=pasid,
                            device_tlb_capacity=self.unit.cache_config.device_tlb)
        endpoint.connect(self.unit)
        key = format_sid(sid)
        self.devices[key], self.endpoints[key] = info, endpoint
        return info

    def attach(self, names: list[str], stage: str | None = None,
               domain: DmarDomain | None = None) -> DmarDomain:
        """Attach the named (probed) devices to ``domain`` or a new DMA paging domain."""
        if domain is None:
            domain = self.run(self.driver.domain_alloc_paging(self.iommu, stage=stage))
        for name in names:
            ret = self.run(self.driver.attach_dev(domain, self.devices[_key(name)]))
            if ret:
                raise SpecRuleBroken(f"attach of {name} failed with {ret}",
                                     "intel_iommu_attach_device")
        return domain

    def endpoint(self, name: str) -> Endpoint:
        return self.endpoints[_key(name)]

    # -- what it cost ---------------------------------------------------------------------------
    def costs(self) -> Counter:
        """Counts a cost model needs: descriptors by label, IQT writes (VM exits on a
        vIOMMU), IOTLB hits and misses, page walks, faults, executor steps by kind."""
        stats = self.unit.stats
        out: Counter = Counter({k: v for k, v in stats.items() if k.startswith("desc:")})
        for key in ("iqt_writes", "iotlb_miss", "walks", "walk_reads", "faults"):
            out[key] = stats[key]
        out["iotlb_hit"] = self.unit.iotlb.stats.hit
        out.update({f"step:{k}": v for k, v in self.executor.steps.items()})
        return out


def _key(name: str) -> str:
    return format_sid(parse_sid(name))
