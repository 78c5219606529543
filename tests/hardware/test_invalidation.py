"""Each invalidation's effect on a real unit's caches and on the device-TLBs behind it."""

from __future__ import annotations

import pytest

from vtdsim.devices.device_tlb import DeviceTlbEntry
from vtdsim.devices.endpoint import Endpoint
from vtdsim.hardware import invalidation as inv
from vtdsim.hardware.caches import ContextCacheEntry, IotlbEntry, PasidCacheEntry, PscEntry
from vtdsim.hardware.descriptors import devtlb_addr, devtlb_range
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit

SID = 0x0100  # 01:00.0, the ATS device of the recorded traces
WHOLE = 1 << 64


@pytest.fixture
def unit():
    return RemappingUnit(get_preset("server-sm"), PhysicalMemory())


def _leaf(did, iova, pasid=0, stage="ss"):
    return IotlbEntry(did=did, pasid=pasid, iova_base=iova, level=1, hpa=0x9000_0000 + iova,
                      read=True, write=True, exe=False, snp=False, stage=stage)


def _table(did, iova, level=1, pasid=0, stage="ss"):
    return PscEntry(did=did, pasid=pasid, stage=stage, level=level,
                    iova_prefix=iova >> (12 + 9 * level), table_addr=0x5000, read=True,
                    write=True, exe=False)


def _fill_translations(unit, did=5, iova=0x4000, pasid=0, stage="ss"):
    unit.iotlb.fill_entry(_leaf(did, iova, pasid, stage))
    unit.pscache.fill_entry(_table(did, iova, pasid=pasid, stage=stage))


# -- S-bit range encoding (reference 11.3, recorded examples of 11.4) ---------------------------
@pytest.mark.parametrize(
    "qw1, base, size",
    [
        (0xFFFF_8000, 0xFFFF_8000, 4096),  # S=0: one page
        (0xFFFB_4001, 0xFFFB_4000, 8192),
        (0xFFE7_F001, 0xFFE0_0000, 1 << 20),
        (0x7FFF_FFFF_FFFF_F001, 0, WHOLE),
    ],
)
def test_devtlb_range_decodes_recorded_descriptors(qw1, base, size):
    assert devtlb_range(qw1 & ~0xFFF, qw1 & 1) == (base, size)


@pytest.mark.parametrize("pages", [1, 2, 4, 256, 1 << 20])
def test_devtlb_encoding_round_trips(pages):
    addr = 0x1_2340_0000
    field, s = devtlb_addr(addr, pages)
    base, size = devtlb_range(field, s)
    assert size == pages * 4096 and base <= addr < base + size


# -- context-cache -----------------------------------------------------------------------------
def test_context_invalidations_hit_only_the_context_cache(unit):
    unit.context_cache.fill(8, ContextCacheEntry(sid=8, present=True, raw=0, did=5))
    unit.context_cache.fill(16, ContextCacheEntry(sid=16, present=True, raw=0, did=6))
    _fill_translations(unit)
    inv.context_cache_device(unit, 5, 8, 0)
    assert unit.context_cache.keys() == [16]
    inv.context_cache_domain(unit, 6)
    assert len(unit.context_cache) == 0
    unit.context_cache.fill(8, ContextCacheEntry(sid=8, present=True, raw=0, did=5))
    inv.context_cache_global(unit)
    assert len(unit.context_cache) == 0
    assert len(unit.iotlb) == 1 and len(unit.pscache) == 1  # spec 6.5.3: IOTLB needs its own
    assert unit.stats["inv_context_cache_device"] == 1
    assert unit.stats["inv_dropped_context_cache"] == 3


# -- IOTLB -------------------------------------------------------------------------------------
def test_iotlb_global_and_domain_hit_iotlb_and_paging_structures(unit):
    _fill_translations(unit, did=5)
    _fill_translations(unit, did=6)
    inv.iotlb_domain(unit, 5)
    assert [k[0] for k in unit.iotlb] == [6]
    assert [k[0] for k in unit.pscache] == [6]
    inv.iotlb_global(unit)
    assert len(unit.iotlb) == 0 and len(unit.pscache) == 0


def test_iotlb_psi_ih_keeps_paging_structure_entries(unit):
    _fill_translations(unit, did=5, iova=0x4000)
    inv.iotlb_page(unit, 5, 0x4000, 0, ih=1)
    assert len(unit.iotlb) == 0 and len(unit.pscache) == 1
    _fill_translations(unit, did=5, iova=0x4000)
    inv.iotlb_page(unit, 5, 0x4000, 0, ih=0)
    assert len(unit.iotlb) == 0 and len(unit.pscache) == 0


def test_iotlb_psi_leaves_other_ranges_and_domains(unit):
    _fill_translations(unit, did=5, iova=0x4000)
    _fill_translations(unit, did=5, iova=0x4000_0000)
    _fill_translations(unit, did=6, iova=0x4000)
    inv.iotlb_page(unit, 5, 0x4000, 0, ih=0)
    assert unit.iotlb.keys() == [(5, 0, 1, 0x40000), (6, 0, 1, 4)]
    assert len(unit.pscache) == 2


def test_type2_does_not_reach_first_stage_type6_does(unit):
    _fill_translations(unit, did=5, iova=0x4000, pasid=3, stage="fs")
    inv.iotlb_domain(unit, 5)
    inv.iotlb_page(unit, 5, 0x4000, 0, ih=0)
    assert len(unit.iotlb) == 1 and len(unit.pscache) == 1
    inv.piotlb_page(unit, 5, 3, 0x4000, 0, ih=1)
    assert len(unit.iotlb) == 0 and len(unit.pscache) == 1  # IH=1 keeps the table entry
    inv.piotlb_pasid(unit, 5, 3)
    assert len(unit.pscache) == 0


def test_piotlb_scope_is_did_and_pasid(unit):
    _fill_translations(unit, did=5, pasid=3, stage="fs")
    _fill_translations(unit, did=5, pasid=4, stage="fs")
    _fill_translations(unit, did=6, pasid=3, stage="fs")
    inv.piotlb_pasid(unit, 5, 3)
    assert sorted(k[:2] for k in unit.iotlb) == [(5, 4), (6, 3)]
    assert sorted(k[:2] for k in unit.pscache) == [(5, 4), (6, 3)]


# -- PASID-cache -------------------------------------------------------------------------------
def _pasid_entry(sid, pasid, did):
    return PasidCacheEntry(sid=sid, pasid=pasid, did=did, present=True, pgtt=1, raw=0)


def test_pasid_cache_invalidations(unit):
    for sid, pasid, did in [(8, 1, 5), (8, 2, 5), (16, 1, 6)]:
        unit.pasid_cache.fill((sid, pasid), _pasid_entry(sid, pasid, did))
    _fill_translations(unit, did=5, pasid=1, stage="fs")
    inv.pasid_cache_pasid(unit, 5, 1)
    assert unit.pasid_cache.keys() == [(8, 2), (16, 1)]
    inv.pasid_cache_domain(unit, 6)
    assert unit.pasid_cache.keys() == [(8, 2)]
    inv.pasid_cache_global(unit)
    assert len(unit.pasid_cache) == 0
    assert len(unit.iotlb) == 1  # the IOTLB needs its own invalidation (reference 15)


# -- write buffer --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda u: inv.context_cache_global(u),
        lambda u: inv.iotlb_page(u, 1, 0, 0, 0),
        lambda u: inv.pasid_cache_pasid(u, 1, 1),
        lambda u: inv.piotlb_pasid(u, 1, 1),
        lambda u: inv.device_tlb(u, SID, None, 0, 0, False),
        lambda u: inv.iec(u, 0, 0, 0),
    ],
)
def test_every_invalidation_flushes_the_write_buffer(unit, call):
    unit.memory.write_buffer = True  # as on a CAP.RWBF unit (spec 6.8)
    unit.memory.cpu_store(0x10_0000, 1, 8)
    assert unit.memory.posted_lines()
    call(unit)
    assert unit.memory.posted_lines() == []


def test_iec_is_counted(unit):
    inv.iec(unit, 0, 0, 0)
    inv.iec(unit, 1, 1, 0)
    assert unit.stats["inv_iec_global"] == 1 and unit.stats["inv_iec_index"] == 1


# -- device-TLB -------------------------------------------------------------------------------
def _atc(pasid, base, size=4096):
    return DeviceTlbEntry(pasid=pasid, base=base, size=size, hpa=0x7000_0000 + base, read=True,
                          write=True)


@pytest.fixture
def ats_device(unit):
    ep = Endpoint(SID, ats=True, pasid_capable=True)
    ep.connect(unit)
    for base in (0xFFFB_3000, 0xFFFB_4000, 0xFFFB_5000, 0xFFFB_6000):
        ep.device_tlb.fill_entry(_atc(None, base))
    ep.device_tlb.fill_entry(_atc(7, 0xFFFB_4000))
    return ep


def _bases(ep):
    return [(e.pasid, e.base) for _k, e in ep.device_tlb.items()]


def test_device_tlb_s_bit_range_reaches_the_endpoint(unit, ats_device):
    assert inv.device_tlb(unit, SID, None, 0xFFFB_4000, 1, False)  # 8 KiB at 0xfffb4000
    assert _bases(ats_device) == [(None, 0xFFFB_3000), (None, 0xFFFB_6000), (7, 0xFFFB_4000)]
    assert unit.stats["inv_device_tlb"] == 1


def test_device_tlb_single_page_and_whole_space(unit, ats_device):
    inv.device_tlb(unit, SID, None, 0xFFFB_6000, 0, False)
    assert (None, 0xFFFB_6000) not in _bases(ats_device) and len(ats_device.device_tlb) == 4
    inv.device_tlb(unit, SID, None, 0x7FFF_FFFF_FFFF_F000, 1, False)
    assert _bases(ats_device) == [(7, 0xFFFB_4000)]


def test_pasid_device_tlb_and_global_flag(unit, ats_device):
    inv.device_tlb(unit, SID, 9, 0x7FFF_FFFF_FFFF_F000, 1, False)
    assert len(ats_device.device_tlb) == 5  # other PASID untouched
    inv.device_tlb(unit, SID, 7, 0x7FFF_FFFF_FFFF_F000, 1, False)
    assert (7, 0xFFFB_4000) not in _bases(ats_device)
    ats_device.device_tlb.fill_entry(_atc(7, 0xFFFB_4000))
    inv.device_tlb(unit, SID, 9, 0x7FFF_FFFF_FFFF_F000, 1, True)  # G: every PASID
    assert _bases(ats_device) == []
    assert unit.stats["inv_p_device_tlb"] == 3


def test_device_tlb_silent_endpoint_reports_timeout(unit, ats_device):
    ats_device.respond_to_invalidations = False
    assert not inv.device_tlb(unit, SID, None, 0xFFFB_4000, 1, False)
    assert len(ats_device.device_tlb) == 5
    assert unit.stats["inv_device_tlb_timeout"] == 1


def test_device_tlb_without_endpoint_completes(unit):
    assert inv.device_tlb(unit, 0x0200, None, 0, 0, False)
    assert unit.stats["inv_device_tlb_no_endpoint"] == 1


def test_unit_caches_do_not_reach_the_device_tlb(unit, ats_device):
    inv.iotlb_global(unit)
    inv.context_cache_global(unit)
    inv.pasid_cache_global(unit)
    assert len(ats_device.device_tlb) == 5
