"""DMA-remapping domains, Linux ``struct dmar_domain`` with ``domain_attach_iommu`` /
``domain_detach_iommu`` (drivers/iommu/intel/iommu.c); 6.1 tracks (IOMMU -> DID) plus a device
list, mainline adds cache tags (cache_tag.py), a qi_batch and the static iotlb_sync_map flag.

Not modelled: the domain's ``max_addr``/``agaw`` shrinking for units with fewer levels (every
unit of one domain must support its depth), SVA domains (no mm), dirty tracking.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from vtdsim.driver.device import DeviceInfo
from vtdsim.driver.steps import Lock, Step, Unlock
from vtdsim.errors import SpecRuleBroken, hexval

# Linux domain types (include/linux/iommu.h IOMMU_DOMAIN_*), lower-case.
DOMAIN_TYPES = ("blocked", "identity", "unmanaged", "dma", "dma_fq", "nested", "sva")
STAGES = ("ss", "fs", "nested", "pt")
FLPT_DEFAULT_DID = 1  # DID for pass-through / identity / SVA entries (iommu.h)



@dataclass(eq=False)
class IommuDomainInfo:
    """``struct iommu_domain_info``: the DID a domain uses on one unit and how many devices of
    the domain sit behind that unit."""

    iommu: Any
    did: int
    refcnt: int = 1


@dataclass(eq=False)
class DmarDomain:
    """``struct dmar_domain``.  ``stage`` is "ss" (second stage / legacy), "fs" (first stage),
    "nested" (FS tables owned by user space, nested on ``s2_domain``) or "pt" (identity)."""

    type: str
    stage: str
    pgtable: Any = None  # DomainPageTable for "ss"/"fs"; None for identity and nested
    iotlb_sync_map: bool = False
    force_snooping: bool = False
    nest_parent: bool = False
    s2_domain: DmarDomain | None = None  # nested: the parent second-stage domain
    fs_pgd: int = 0  # nested: the user's FS root (guest-physical)
    fs_levels: int = 4
    iommu_array: dict[int, IommuDomainInfo] = field(default_factory=dict)
    devices: list[DeviceInfo] = field(default_factory=list)
    dev_pasids: list[tuple[DeviceInfo, int]] = field(default_factory=list)
    cache_tags: list = field(default_factory=list)  # mainline, cache_tag.CacheTag in list order
    has_mappings: bool = False
    pgsize_bitmap: int = 4096  # page sizes iommu_map may use (4K, + 2M/1G if supported)
    ident: int = 0  # numbered by the driver that allocates it (deterministic per run)

    def __post_init__(self) -> None:
        if self.type not in DOMAIN_TYPES or self.stage not in STAGES:
            raise SpecRuleBroken(f"unknown domain type={self.type!r} stage={self.stage!r}")

    # -- names ---------------------------------------------------------------------------------
    @property
    def lock(self) -> str:
        """``domain->lock``: protects the device list (and 6.1's iommu_flush_dev_iotlb walk)."""
        return f"domain{self.ident}.lock"

    @property
    def cache_lock(self) -> str:
        """``domain->cache_lock``: protects the cache-tag list and the qi_batch (cache.c)."""
        return f"domain{self.ident}.cache_lock"

    @property
    def use_first_level(self) -> bool:
        """``domain_use_first_level``: FS and nested domains flush with PASID-based IOTLB."""
        return self.stage in ("fs", "nested")

    def __repr__(self) -> str:
        return f"DmarDomain#{self.ident}({self.type}, {self.stage})"

    # -- per-unit DIDs -------------------------------------------------------------------------
    def iommus(self) -> list[IommuDomainInfo]:
        """The units this domain is attached to, in xarray (unit index) order."""
        array = self.iommu_array
        if len(array) < 2:  # every flush asks: most domains sit behind one unit
            return list(array.values())
        return [array[i] for i in sorted(array)]

    def domain_id_iommu(self, iommu) -> int:
        """``domain_id_iommu``: the DID on ``iommu``; identity domains always use DID 1."""
        if self.stage == "pt":
            return FLPT_DEFAULT_DID
        info = self.iommu_array.get(iommu.index)
        if info is None:
            raise SpecRuleBroken(f"{self!r} is not attached to {iommu.name}")
        return info.did

    def has_iotlb_device(self) -> bool:
        """6.1 ``domain->has_iotlb_device``: some device of the domain has ATS enabled."""
        return any(info.ats_enabled for info in self.devices)


def domain_attach_iommu(domain: DmarDomain, iommu) -> Generator[Step, Any, int]:
    """``domain_attach_iommu``: take a reference on the domain's DID for ``iommu``, allocating
    one (6.1 bitmap / mainline IDA, from DID 2) on first use; under ``iommu->lock``."""
    if domain.stage == "pt":
        return FLPT_DEFAULT_DID
    yield Lock(name=iommu.lock, why="domain_attach_iommu")
    info = domain.iommu_array.get(iommu.index)
    if info is not None:
        info.refcnt += 1
    else:
        did = iommu.domain_ids.alloc()
        if did < 2:
            raise SpecRuleBroken(f"{hexval('did', did)} reserved (0: CM tag, 1: FLPT_DEFAULT)")
        info = domain.iommu_array[iommu.index] = IommuDomainInfo(iommu, did)
    yield Unlock(name=iommu.lock, why="domain_attach_iommu")
    return info.did


def domain_detach_iommu(domain: DmarDomain, iommu) -> Generator[Step, Any, None]:
    """``domain_detach_iommu``: drop the reference; the DID returns to the allocator at 0."""
    if domain.stage == "pt":
        return
    yield Lock(name=iommu.lock, why="domain_detach_iommu")
    info = domain.iommu_array[iommu.index]
    info.refcnt -= 1
    if info.refcnt == 0:
        iommu.domain_ids.free(info.did)
        del domain.iommu_array[iommu.index]
    yield Unlock(name=iommu.lock, why="domain_detach_iommu")


def domain_add_device(domain: DmarDomain, info: DeviceInfo) -> Generator[Step, Any, None]:
    """``list_add(&info->link, &domain->devices)`` under ``domain->lock``: list_add puts the
    newest device first, which is the order 6.1's device-TLB flush walks."""
    yield Lock(name=domain.lock, why="dmar_domain_attach_device")
    domain.devices.insert(0, info)
    yield Unlock(name=domain.lock, why="dmar_domain_attach_device")


def domain_remove_device(domain: DmarDomain, info: DeviceInfo) -> Generator[Step, Any, None]:
    yield Lock(name=domain.lock, why="device_block_translation")
    domain.devices.remove(info)
    yield Unlock(name=domain.lock, why="device_block_translation")
