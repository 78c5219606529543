"""The litmus operations' schema: one small declared model per ``op`` (its fields, types,
ranges, defaults and which fields name declared things); ``boot.OP_FACTORIES`` maps the same
names to the driver generators they run.  Adding an op is one class here plus its factory.

Not provided: ops that take another op's result (scenarios name the IOVA they expect).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from vtdsim.checker.schema_types import (
    U64,
    Cpu,
    DeviceRef,
    DmaSize,
    DomainRef,
    Iova,
    MapSize,
    Offset,
    OptionalDomainRef,
    PageIova,
    PageRef,
    Pasid,
    Strict,
)
from vtdsim.driver import steps as _steps

# What ``skip`` may name: the driver's step kinds, and "qi_wait" (qi_submit_sync returns
# without waiting for its wait descriptor) - checker.actors.skipped.
SKIPPABLE = tuple(sorted(c.__name__ for c in _steps.Step.__subclasses__())) + ("qi_wait",)
Prot = Literal["r", "w", "rw"]


class OpBase(Strict):
    """Fields every op takes; ``skip`` drops those step kinds (a mutation).  ``dma_api``:
    the op goes through the DMA API (dma-iommu.c), which only a default DMA domain has (its
    IOVA cookie and flush queue): never an ``unmanaged`` one."""

    dma_api: ClassVar[bool] = False
    skip: list[Literal[SKIPPABLE]] = []  # type: ignore[valid-type]


class Map(OpBase):
    op: Literal["map"]
    domain: DomainRef
    iova: PageIova
    page: PageRef
    size: MapSize = 4096
    prot: Prot = "rw"
    sync: bool = True  # False: without iotlb_sync_map (a mutation)


class Unmap(OpBase):
    op: Literal["unmap"]
    domain: DomainRef
    iova: PageIova
    size: MapSize = 4096
    sync: bool = True  # False: iommu_unmap_fast without iotlb_sync


class _DmaApi(OpBase):
    """iommu_dma_map_page / iommu_dma_unmap_page on a CPU (its IOVA rcache, dma-iommu.c)."""

    dma_api: ClassVar[bool] = True
    domain: DomainRef
    size: DmaSize = 4096
    cpu: Cpu = 0


class DmaMap(_DmaApi):
    op: Literal["dma_map"]
    page: PageRef
    prot: Prot = "rw"


class DmaUnmap(_DmaApi):
    op: Literal["dma_unmap"]
    iova: Iova


class _OnDomain(OpBase):
    """An op on a whole domain (no field but the domain)."""

    domain: DomainRef


class FlushIotlbAll(_OnDomain):
    op: Literal["flush_iotlb_all"]


class FqTimer(_OnDomain):
    dma_api: ClassVar[bool] = True
    op: Literal["fq_timer"]


class Free(OpBase):
    op: Literal["free"]
    page: PageRef


class Attach(OpBase):
    op: Literal["attach"]
    domain: DomainRef
    device: DeviceRef
    part: Literal["all", "prepare", "program"] = "all"


class SetDevPasid(OpBase):
    op: Literal["set_dev_pasid"]
    domain: DomainRef
    device: DeviceRef
    pasid: Pasid
    old: OptionalDomainRef = ""


class RemoveDevPasid(OpBase):
    op: Literal["remove_dev_pasid"]
    device: DeviceRef
    pasid: Pasid


class EnforceCacheCoherency(_OnDomain):
    op: Literal["enforce_cache_coherency"]


class ContextFlipPri(OpBase):
    op: Literal["context_flip_pri"]
    device: DeviceRef
    enable: bool = True


class _AtQword(OpBase):
    """A CPU access to one qword of a data page."""

    page: PageRef
    offset: Offset = 0


class CpuWrite(_AtQword):
    op: Literal["cpu_write"]
    value: U64 = 0


class CpuRead(_AtQword):
    op: Literal["cpu_read"]


class Clflush(_AtQword):
    op: Literal["clflush"]


class CpuZero(_AtQword):
    """memset(0) of ``size`` bytes from ``offset`` (a buffer or table page being zeroed)."""

    op: Literal["cpu_zero"]
    size: Annotated[int, Field(ge=8, le=4096, multiple_of=8)] = 4096

    @model_validator(mode="after")
    def _inside_the_page(self):
        if self.offset + self.size > 4096:
            raise ValueError(f"offset {self.offset:#x} + size {self.size:#x} runs past the page")
        return self


class Wbinvd(OpBase):
    op: Literal["wbinvd"]


class Alloc(OpBase):
    """The page allocator's next page becomes this data page (a page handed to a new owner:
    it may be one a thread freed, as alloc_pages' per-CPU lists hand back)."""

    op: Literal["alloc"]
    page: PageRef


class _OnDevice(OpBase):
    """An op on one device (no field but the device)."""

    device: DeviceRef


class Detach(_OnDevice):
    op: Literal["detach"]


class AttachBlocking(_OnDevice):
    op: Literal["attach_blocking"]  # mainline's detach is the blocking domain's attach


class Release(_OnDevice):
    op: Literal["release"]  # intel_iommu_release_device: scalable-mode context teardown


class AtsDisable(_OnDevice):
    op: Literal["ats_disable"]  # iommu_disable_pci_caps / pci_disable_ats


def _declared(base: type[OpBase]) -> list[type[OpBase]]:
    """Every op model below ``base`` (a class declaring ``op``), in declaration order."""
    found = []
    for sub in base.__subclasses__():
        if "op" in sub.model_fields:
            found.append(sub)
        found += _declared(sub)
    return found


OP_MODELS: dict[str, type[OpBase]] = {
    m.model_fields["op"].annotation.__args__[0]: m for m in _declared(OpBase)
}
# Every op model above, told apart by ``op`` (a new subclass joins by being declared).
AnyOp = Annotated[Union[tuple(OP_MODELS.values())], Field(discriminator="op")]  # noqa: UP007
