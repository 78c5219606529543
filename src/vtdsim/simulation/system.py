"""A booted machine for direct simulation: one remapping unit, the Linux driver model on top of
it, a direct executor, and PCIe endpoints - the set-up every simulation, benchmark and demo
shares.

``System.boot`` runs the driver's ``init_hw`` (QI enable, root table, global invalidations,
translation enable) exactly as Linux does; ``probe`` creates a device (``DeviceInfo`` for the
driver, an ``Endpoint`` on the bus) and ``attach`` gives it a paging domain.  The driver's
``qi_submit`` annotations are collected in ``submitted`` as (IQT-write index, label, qw0..qw3).

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
from vtdsim.driver.platform import Platform
from vtdsim.driver.profiles import Profile, get_profile
from vtdsim.driver.steps import Annotate
from vtdsim.errors import SpecRuleBroken
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

    @classmethod
    def boot(
        cls,
        preset: str = "qemu72-legacy-cm",
        profile: str | Profile = "linux-6.1",
        *,
        qi_mode: str = "sync",
        cache_config: CacheConfig | None = None,
        scalable: bool = True,
        ncpus: int = 2,
    ) -> System:
        """A unit of ``preset`` booted by the driver ``profile`` (scalable mode when the unit
        offers it, unless ``scalable=False`` as with ``intel_iommu=sm_off``)."""
        caps = get_preset(preset)
        prof = get_profile(profile) if isinstance(profile, str) else profile
        memory = PhysicalMemory()
        unit = RemappingUnit(caps, memory, cache_config=cache_config or CacheConfig(),
                             qi_mode=qi_mode)
        platform = Platform(memory, [unit], ncpus=ncpus)
        executor = DirectExecutor(platform)
        iommu = IntelIommu(0, caps, profile=prof, sm_on=scalable)
        system = cls(platform, executor, iommu, IntelIommuDriver(platform, prof, [iommu]), prof)
        executor.listeners.append(system._on_annotate)
        system.run(iommu.init_hw())
        return system

    @property
    def unit(self) -> RemappingUnit:
        return self.platform.units[0]

    def run(self, gen: Generator) -> Any:
        return self.executor.run(gen)

    def _on_annotate(self, step: Annotate) -> None:
        if step.event == "qi_submit":
            self.submitted.append((self.unit.stats["iqt_writes"], *step.data))

    # -- devices and domains ----------------------------------------------------------------------
    def probe(self, name: str, *, ats: bool = False, ats_qdep: int = 32) -> DeviceInfo:
        """A PCI function appears: the driver probes it, an endpoint joins the bus."""
        sid = parse_sid(name)
        info = DeviceInfo(sid, self.iommu, ats_supported=ats, ats_qdep=ats_qdep if ats else 0)
        self.run(self.driver.probe_device(info))
        endpoint = Endpoint(sid, ats=ats, ats_queue_depth=ats_qdep if ats else 0,
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
