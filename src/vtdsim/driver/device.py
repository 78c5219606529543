"""Per-device driver state, Linux ``struct device_domain_info`` (drivers/iommu/intel/iommu.h;
set up by ``intel_iommu_probe_device``); the same in both profiles.

A ``DeviceInfo`` names one PCI function behind one remapping unit: its source-id, the PCIe
capabilities it offers (ATS with its invalidation queue depth, PASID, PRI) and which of them the
driver has enabled, the domain attached to its RID and to each PASID, and its PASID table.

Not modelled: DMA aliases (``pci_for_each_dma_alias``: one alias per device, its own RID),
physical functions other than the device itself (PFSID is the device's own SID), the QAT
``dtlb_extra_inval`` quirk is a plain flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vtdsim.hardware.request import format_sid

if TYPE_CHECKING:
    from vtdsim.driver.domain import DmarDomain

# PASID used for requests without a PASID prefix (IOMMU_NO_PASID / PASID_RID2PASID): Linux always
# programs RID_PASID = 0 (reference vtd-hardware.md 9.1).
IOMMU_NO_PASID = 0


@dataclass(eq=False)
class PasidTable:
    """``struct pasid_table``: the directory page and the PASID-table pages hung from it.

    One directory page (512 entries, PDTS=2: 32768 PASIDs) - Linux sizes it from the device's
    max PASID and may use several contiguous pages; we cap it at one (not modelled)."""

    directory: int
    max_pasid: int
    tables: dict[int, int] = field(default_factory=dict)  # directory index -> table page

    @property
    def pdts(self) -> int:
        """``context_get_sm_pds``: directory entries = 2^(PDTS+7)."""
        entries = max(1, self.max_pasid >> 6)
        return max(0, entries.bit_length() - 1 - 7)


@dataclass(eq=False)
class DeviceInfo:
    """``struct device_domain_info``.  ``iommu`` is the ``IntelIommu`` the device sits behind."""

    sid: int
    iommu: Any
    ats_supported: bool = False
    ats_qdep: int = 0
    pasid_supported: bool = False
    pri_supported: bool = False
    untrusted: bool = False  # an external-facing port: always a DMA domain (iommu.c)
    present: bool = True  # pci_device_is_present(): a surprise-removed device gets no ATS inv
    dtlb_extra_inval: bool = False  # QAT erratum: every device-TLB invalidation sent twice
    ats_enabled: bool = False
    pri_enabled: bool = False
    pasid_enabled: bool = False
    domain: DmarDomain | None = None
    pasid_table: PasidTable | None = None
    pasid_domains: dict[int, DmarDomain] = field(default_factory=dict)  # PASID != 0 attaches

    @property
    def bus(self) -> int:
        return self.sid >> 8

    @property
    def devfn(self) -> int:
        return self.sid & 0xFF

    @property
    def name(self) -> str:
        return format_sid(self.sid)

    @property
    def pfsid(self) -> int:
        """PFSID is only encoded with ECAP.DIT (``qi_flush_dev_iotlb``); else it must be 0."""
        return self.sid if self.iommu.caps.dit else 0

    def __repr__(self) -> str:
        return f"DeviceInfo({self.name} on {getattr(self.iommu, 'name', '?')})"
