"""Endpoint DMA through a real remapping unit: untranslated requests, the ATS flow, stale
device-TLB entries until a device-TLB invalidation, snooping, and the endpoint's checks."""

from __future__ import annotations

import pytest

from builders import Tables
from vtdsim.devices.endpoint import AtsDenied, Endpoint
from vtdsim.errors import ModelError, SpecRuleBroken
from vtdsim.hardware import invalidation as inv
from vtdsim.hardware.descriptors import devtlb_addr
from vtdsim.hardware.faults import Fault, FaultReason
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.hardware.root_table import TT_SS_ATS

SID, DID = 0x0100, 5
IOVA, PAGE, PAGE2 = 0xFFFF_E000, 0x20_0000, 0x30_0000
RTADDR, GCMD = 0x20, 0x18


class Platform:
    """A legacy-mode unit (server-sm caps: DT and SC) with one 4-level domain."""

    def __init__(self, tt: int = TT_SS_ATS):
        self.memory = PhysicalMemory()
        self.unit = RemappingUnit(get_preset("server-sm"), self.memory)
        self.tables = Tables(self.memory)
        self.ss = self.tables.ss_table(4)
        self.tables.set_context(SID, tt=tt, ssptptr=self.ss.root, aw=2, did=DID)
        self.ss.map(IOVA, PAGE)
        self.ss.map(IOVA + 0x1000, PAGE2)
        self.unit.mmio_write(RTADDR, 8, self.tables.rta)
        self.unit.mmio_write(GCMD, 4, 1 << 30)  # SRTP
        self.unit.mmio_write(GCMD, 4, 1 << 31)  # TE
        self.memory.dma_write(PAGE, b"first page")

    def endpoint(self, **kw) -> Endpoint:
        ep = Endpoint(SID, **kw)
        ep.connect(self.unit)
        return ep

    def unmap(self, iova: int) -> None:
        """Clear the leaf and invalidate the IOTLB - but not the device-TLB."""
        self.ss.set(iova, 0)
        inv.iotlb_page(self.unit, DID, iova, 0, ih=1)


def test_untranslated_dma_reaches_the_mapped_page():
    p = Platform(tt=0)
    ep = p.endpoint()
    result = ep.dma_read(IOVA + 0, 10)
    assert result and result.data == b"first page" and result.hpa == PAGE
    assert ep.dma_write(IOVA + 0x10, b"xy").pages == (PAGE + 0x10,)
    assert p.memory.dma_read(PAGE + 0x10, 2) == b"xy"
    assert len(ep.device_tlb) == 0 and ep.stats["untranslated_requests"] == 2


def test_dma_crossing_a_page_is_one_request_per_page():
    p = Platform(tt=0)
    result = p.endpoint().dma_write(IOVA + 0xFFE, b"abcd")
    assert result.pages == (PAGE + 0xFFE, PAGE2)
    assert p.memory.dma_read(PAGE2, 2) == b"cd"


def test_untranslated_fault_is_returned_and_falsy():
    p = Platform(tt=0)
    result = p.endpoint().dma_read(0x1000, 4)
    assert not result and isinstance(result.fault, Fault) and result.data is None
    assert result.fault.reason == FaultReason.READ  # not-present SS entry on a read (7.1.3)
    assert result.hpa is None


def test_ats_miss_translates_fills_and_then_hits():
    p = Platform()
    ep = p.endpoint(ats=True)
    first = ep.dma_read(IOVA, 10)
    assert first.data == b"first page" and first.hpa == PAGE
    assert ep.stats["translation_requests"] == 1 and ep.stats["translated_requests"] == 1
    [(_key, entry)] = ep.device_tlb.items()
    assert (entry.base, entry.size, entry.hpa, entry.read, entry.write) == (
        IOVA, 0x1000, PAGE, True, True)
    again = ep.dma_read(IOVA + 4, 2)
    assert again.hpa == PAGE + 4 and ep.stats["translation_requests"] == 1


def test_stale_device_tlb_until_device_tlb_invalidation():
    p = Platform()
    ep = p.endpoint(ats=True)
    ep.dma_read(IOVA, 1)
    p.unmap(IOVA)
    stale = ep.dma_read(IOVA, 4)  # the ATC still translates: the unit is not consulted
    assert stale and stale.hpa == PAGE
    addr, s = devtlb_addr(IOVA, 1)
    assert inv.device_tlb(p.unit, SID, None, addr, s, False)
    denied = ep.dma_read(IOVA, 4)  # the new completion grants nothing
    assert not denied and isinstance(denied.fault, AtsDenied)
    assert "ATS denied read" in denied.fault.describe()


def test_ats_write_to_read_only_page_is_denied_without_touching_memory():
    p = Platform()
    p.ss.map(IOVA, PAGE, w=0)
    ep = p.endpoint(ats=True)
    result = ep.dma_write(IOVA, b"zz")
    assert not result and isinstance(result.fault, AtsDenied)
    assert p.memory.dma_read(PAGE, 2) == b"fi"
    assert ep.dma_read(IOVA, 2).data == b"fi"  # reading is granted and cached


def test_ats_on_a_context_without_ats_faults():
    p = Platform(tt=0)
    result = p.endpoint(ats=True).dma_read(IOVA, 4)
    assert not result and result.fault.reason == FaultReason.CONTEXT_ENTRY_TT


def test_prefetch_fills_the_device_tlb():
    p = Platform()
    ep = p.endpoint(ats=True)
    entry = ep.ats_prefetch(IOVA + 0x1000)
    assert entry.hpa == PAGE2 and len(ep.device_tlb) == 1
    with pytest.raises(SpecRuleBroken):
        p.endpoint(ats=False).ats_prefetch(IOVA)


def test_no_snoop_reads_dram_unless_snoop_is_forced():
    p = Platform(tt=0)
    ep = p.endpoint()
    p.memory.cpu_write(PAGE, b"CPU!")  # dirty in the CPU cache, DRAM still "firs"
    assert ep.dma_read(IOVA, 4, no_snoop=True).data == b"firs"
    assert ep.dma_read(IOVA, 4).data == b"CPU!"
    p.ss.map(IOVA, PAGE, snp=1)
    inv.iotlb_page(p.unit, DID, IOVA, 0, ih=1)
    assert ep.dma_read(IOVA, 4, no_snoop=True).data == b"CPU!"  # SNP forces the snoop


def test_silent_endpoint_keeps_entries_and_reports_no_completion():
    p = Platform()
    ep = p.endpoint(ats=True, respond_to_invalidations=False)
    ep.dma_read(IOVA, 1)
    assert not ep.ats_invalidate(None, 0, 1 << 64)
    assert len(ep.device_tlb) == 1 and ep.stats["ats_invalidations_ignored"] == 1


def test_pasid_needs_the_capability_and_connection_is_required():
    p = Platform()
    with pytest.raises(SpecRuleBroken, match="PASID"):
        p.endpoint().dma_read(IOVA, 1, pasid=1)
    with pytest.raises(ModelError, match="not connected"):
        Endpoint(SID).dma_read(IOVA, 1)
