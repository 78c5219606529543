"""The request flow (spec ch. 3, 6): legacy and scalable mode, every PGTT, ATS, caching mode,
fault reasons and FPD, coherency of walks, and the possible-fills freedom."""

import pytest

from builders import Tables
from vtdsim.hardware import invalidation
from vtdsim.hardware.faults import Fault
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import PGTT_FS, PGTT_NESTED, PGTT_PT, PGTT_SS
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.hardware.request import (
    AT_TRANSLATED,
    AT_TRANSLATION_REQUEST,
    DmaRequest,
    sid_of,
)
from vtdsim.hardware.translation import apply_fill, possible_fills

SID = sid_of(0, 3, 0)
DID = 2


def make_unit(preset="qemu72-legacy", *, sm=False, flush=True, **caps):
    base = get_preset(preset)
    unit = RemappingUnit(base.with_(**caps) if caps else base, PhysicalMemory())
    t = Tables(unit.memory, flush=flush)
    unit.root_table_addr, unit.ttm, unit.translation_enabled = t.rta, int(sm), True
    return unit, t


def legacy(preset="qemu72-legacy", levels=3, tt=0, **caps):
    """A legacy unit with SID -> DID's ``levels``-deep table."""
    unit, t = make_unit(preset, **caps)
    pt = t.ss_table(levels)
    t.set_context(SID, tt=tt, aw=levels - 2, did=DID, ssptptr=pt.root)
    return unit, t, pt


def sm(pgtt=PGTT_SS, preset="server-sm", pasid=0, levels=4, fs_levels=4, ctx=None, **pe):
    """A scalable-mode unit with SID's PASID ``pasid`` set to ``pgtt``."""
    unit, t = make_unit(preset, sm=True)
    t.set_sm_context(SID, **(ctx or {}))
    ss_pt = t.ss_table(levels)
    fs_pt = t.fs_table(fs_levels)
    fields = {"pgtt": pgtt, "did": DID, "aw": levels - 2, "ssptptr": ss_pt.root,
              "fsptptr": fs_pt.root, "fspm": fs_levels - 4, "pwsnp": 1} | pe
    t.set_pasid_entry(SID, pasid, **fields)
    return unit, t, ss_pt, fs_pt


def reason(result) -> int:
    assert isinstance(result, Fault), result
    return int(result.reason)


def recorded(unit) -> list[int]:
    return [int(f.reason) for _, f in unit.faults.pending()]


# -- legacy mode ----------------------------------------------------------------------------------
def test_legacy_walk_then_iotlb_hit_returns_the_cached_object():
    unit, _, pt = legacy()
    pt.map(0x5000, 0xABC000)
    first = unit.translate(SID, 0x5123)
    assert first.hpa | (0x5123 & first.offset_mask) == 0xABC123
    assert (unit.stats["walks"], unit.stats["iotlb_miss"], unit.stats["walk_reads"]) == (1, 1, 7)
    assert unit.translate(SID, 0x5FFF) is first
    assert unit.iotlb.stats.hit == 1  # hits are counted by the IOTLB only (fast path)


@pytest.mark.parametrize("levels", [4, 5])
def test_legacy_deeper_tables(levels):
    unit, _, pt = legacy("server-sm", levels=levels)
    pt.map(1 << 40, 0x7000)
    assert unit.translate(SID, (1 << 40) + 8).hpa == 0x7000


@pytest.mark.parametrize("level", [2, 3])
def test_legacy_large_pages(level):
    unit, _, pt = legacy()
    pt.map(0x4000_0000, 0x8000_0000, level=level)
    entry = unit.translate(SID, 0x4000_1234)
    assert (entry.level, entry.hpa | (0x4000_1234 & entry.offset_mask)) == (level, 0x8000_1234)
    unit2, _, pt2 = legacy(sllps=0)
    pt2.map(0x4000_0000, 0x8000_0000, level=level)
    assert reason(unit2.translate(SID, 0x4000_0000)) == 0xC


def test_legacy_permission_faults_are_recorded():
    unit, _, pt = legacy()
    pt.map(0x1000, 0x9000, w=0)
    assert reason(unit.translate(SID, 0x1000, write=True)) == 0x5
    assert reason(unit.translate(SID, 0x2000)) == 0x6  # not present reads as no R
    assert recorded(unit) == [0x5]  # QEMU-style compression keeps one record per SID
    assert unit.stats["faults"] == 2


def test_legacy_structure_faults():
    unit, _ = make_unit()
    assert reason(unit.translate(SID, 0)) == 0x1
    t_unit, t, pt = legacy()
    t.set_context(SID, p=0, did=DID)
    assert reason(t_unit.translate(SID, 0)) == 0x2
    unit, t, pt = legacy()
    t.write(t.rta, t.read(t.rta) | 0x2)
    assert reason(unit.translate(SID, 0)) == 0xA


@pytest.mark.parametrize(
    "fields, caps, code",
    [
        ({"tt": 3, "aw": 1}, {}, 0x3),
        ({"tt": 0, "aw": 2}, {}, 0x3),  # 4-level table, SAGAW has 39-bit only
        ({"tt": 2, "aw": 1}, {"pt": 0}, 0x3),
        ({"tt": 1, "aw": 1}, {}, 0x3),  # TT=01 without ECAP.DT
        ({"tt": 0, "aw": 1, "did": 1 << 15, "p": 1}, {}, 0),
    ],
)
def test_legacy_context_validity(fields, caps, code):
    unit, t = make_unit(**caps)
    pt = t.ss_table(3)
    pt.map(0, 0x9000)
    t.set_context(SID, ssptptr=pt.root, **fields)
    result = unit.translate(SID, 0)
    assert (reason(result) if not result else 0) == code


def test_context_reserved_bit_fault_0xb():
    unit, t, pt = legacy()
    addr = t.set_context(SID, aw=1, did=DID, ssptptr=pt.root)
    t.write(addr + 8, t.read(addr + 8) | 0x80)  # bit 71
    assert reason(unit.translate(SID, 0)) == 0xB


def test_address_beyond_agaw_and_reserved_pte():
    unit, t, pt = legacy()
    assert reason(unit.translate(SID, 1 << 39)) == 0x4
    leaf = pt.map(0, 0x9000)
    t.write(leaf, t.read(leaf) | (1 << 45))  # above HAW (MGAW 39)
    assert reason(unit.translate(SID, 0)) == 0xC


def test_pass_through_context():
    unit, t = make_unit()
    t.set_context(SID, tt=2, aw=1, did=DID)
    entry = unit.translate(SID, 0x1234_5678)
    assert (entry.hpa, entry.stage) == (0x1234_5000, "pt")
    assert len(unit.iotlb) == 0


def test_translation_disabled_passes_through_uncached():
    unit, _ = make_unit()
    unit.translation_enabled = False
    assert unit.translate(SID, 0x5000).hpa == 0x5000
    assert len(unit.iotlb) == len(unit.context_cache) == 0


def test_fpd_suppresses_qualified_faults_only():
    unit, t, pt = legacy()
    t.set_context(SID, fpd=1, aw=1, did=DID, ssptptr=pt.root)
    assert reason(unit.translate(SID, 0x1000)) == 0x6
    assert recorded(unit) == []
    t.write(t.rta, 0)  # root not present: not qualified, FPD unknown
    assert reason(unit.translate(sid_of(0, 4, 0), 0)) == 0x1
    assert recorded(unit) == [0x1]


def test_snoop_control():
    unit, _, pt = legacy(sc=1)
    pt.map(0, 0x9000, snp=1)
    assert unit.translate(SID, 0).snp is True
    unit, _, pt = legacy()  # no SC: leaf SNP is reserved in legacy mode
    pt.map(0, 0x9000, snp=1)
    assert reason(unit.translate(SID, 0)) == 0xC


def test_output_in_interrupt_range_faults():
    unit, _, pt = legacy()
    pt.map(0x3000, 0xFEE0_0000)
    assert reason(unit.translate(SID, 0x3000)) == 0xE
    assert reason(unit.translate(SID, 0xFEE0_0000)) == 0xE  # request to interrupt addresses


def test_noncoherent_walk_reads_stale_dram():
    unit, t = make_unit(flush=False)  # qemu72: ECAP.C=0, nothing clflushed
    pt = t.ss_table(3)
    t.set_context(SID, aw=1, did=DID, ssptptr=pt.root)
    pt.map(0, 0x9000)
    assert reason(unit.translate(SID, 0)) == 0x1  # DRAM still holds a zero root entry
    unit.memory.wbinvd()
    assert unit.translate(SID, 0).hpa == 0x9000
    coherent, t2 = make_unit(flush=False, c=1)
    pt2 = t2.ss_table(3)
    t2.set_context(SID, aw=1, did=DID, ssptptr=pt2.root)
    pt2.map(0, 0x9000)
    assert coherent.translate(SID, 0).hpa == 0x9000


# -- ATS ------------------------------------------------------------------------------------------
def test_ats_requests_need_tt01():
    unit, _, pt = legacy()
    pt.map(0, 0x9000)
    for at in (AT_TRANSLATION_REQUEST, AT_TRANSLATED):
        assert reason(unit.access(DmaRequest(SID, 0, at=at))) == 0xD


def test_ats_translation_request_and_translated_request():
    unit, _, pt = legacy("qemu72-legacy-ats", tt=1)
    pt.map(0, 0x9000, w=0)
    entry = unit.access(DmaRequest(SID, 0, write=True, at=AT_TRANSLATION_REQUEST))
    assert (entry.hpa, entry.read, entry.write) == (0x9000, True, False)  # no fault: W=0
    absent = unit.access(DmaRequest(SID, 0x5000, at=AT_TRANSLATION_REQUEST))
    assert (absent.read, absent.write) == (False, False) and recorded(unit) == []
    done = unit.access(DmaRequest(SID, 0x9000, write=True, at=AT_TRANSLATED))
    assert done.hpa == 0x9000 and unit.stats["walks"] == 2


def test_sm_ats_needs_dte():
    unit, _, ss_pt, _ = sm()
    ss_pt.map(0, 0x9000)
    assert reason(unit.access(DmaRequest(SID, 0, at=AT_TRANSLATION_REQUEST))) == 0x44
    unit, _, ss_pt, _ = sm(ctx={"dte": 1})
    ss_pt.map(0, 0x9000)
    assert unit.access(DmaRequest(SID, 0, at=AT_TRANSLATION_REQUEST)).hpa == 0x9000


# -- scalable mode --------------------------------------------------------------------------------
def test_sm_second_stage_with_rid_pasid():
    unit, _, ss_pt, _ = sm(pasid=5, ctx={"rid_pasid": 5})
    ss_pt.map(0x1000, 0x9000)
    entry = unit.translate(SID, 0x1000)
    assert (entry.hpa, entry.pasid, entry.did, entry.stage) == (0x9000, 5, DID, "ss")
    assert unit.stats["walk_reads"] == 2 + 4 + 1 + 8 + 4  # root, ctx, dir, PASID entry, walk


def test_sm_second_stage_fault_reasons():
    unit, t, ss_pt, _ = sm()
    ss_pt.map(0x1000, 0x9000, w=0)
    assert reason(unit.translate(SID, 0x1000, write=True)) == 0x85
    assert reason(unit.translate(SID, 0x2000)) == 0x79
    assert reason(unit.translate(SID, 1 << 50)) == 0x83
    leaf = ss_pt.map(0x3000, 0x9000)
    t.write(leaf, t.read(leaf) | (1 << 62))  # TM is fine with DT
    assert unit.translate(SID, 0x3000)
    t.write(leaf, t.read(leaf) | (1 << 51) | 0x80)  # PS ignored at level 1; bit 51 < HAW 52
    assert unit.translate(SID, 0x3000)


@pytest.mark.parametrize(
    "ctx, pe, pasid, code",
    [
        ({}, {}, 7, 0x45),  # PASIDE clear
        ({"paside": 1, "pdts": 0}, {}, 1 << 13, 0x46),  # beyond 2^7 directory entries
        ({"paside": 1}, {}, 64, 0x51),  # directory entry for PASIDs 64-127 absent
        ({"paside": 1}, {"p": 0}, 7, 0x59),
        ({"paside": 1}, {"pgtt": 0}, 7, 0x5B),
        ({"paside": 1}, {"pgtt": PGTT_SS, "aw": 1}, 7, 0x5B),  # 3-level not in SAGAW
        ({"paside": 1}, {"pgtt": PGTT_FS, "fspm": 2}, 7, 0x5B),
    ],
)
def test_sm_pasid_faults(ctx, pe, pasid, code):
    unit, t, ss_pt, _ = sm(pasid=7, ctx=ctx, **pe)
    ss_pt.map(0, 0x9000)
    assert reason(unit.access(DmaRequest(SID, 0, pasid=pasid))) == code


def test_sm_pasid_entry_reserved_and_sre():
    unit, t, _, fs_pt = sm(PGTT_FS, ctx={"paside": 1}, pasid=3)
    fs_pt.map(0, 0x9000)
    assert reason(unit.access(DmaRequest(SID, 0, pasid=3, priv=True))) == 0x5D
    addr = t.set_pasid_entry(SID, 3, pgtt=PGTT_FS, did=DID, fsptptr=fs_pt.root)
    t.write(addr + 8, t.read(addr + 8) | (1 << 16))  # bit 80
    assert reason(unit.access(DmaRequest(SID, 0, pasid=4, priv=False))) == 0x59
    invalidation.pasid_cache_global(unit)
    assert reason(unit.access(DmaRequest(SID, 0, pasid=3))) == 0x5A


def test_sm_first_stage_sets_accessed_and_dirty():
    unit, t, _, fs_pt = sm(PGTT_FS)
    leaf = fs_pt.map(0x1000, 0x9000, a=0, d=0)
    entry = unit.translate(SID, 0x1000)
    assert entry.hpa == 0x9000 and entry.stage == "fs" and not entry.write
    assert t.read(leaf) & 0x60 == 0x20  # A set by the walk, D not (read)
    assert unit.translate(SID, 0x1000, write=True).write  # re-walk sets D
    assert t.read(leaf) & 0x60 == 0x60
    assert reason(unit.translate(SID, 1 << 47)) == 0x80


def test_sm_first_stage_ad_needs_snooped_walk():
    unit, _, _, fs_pt = sm(PGTT_FS, pwsnp=0)
    fs_pt.map(0x1000, 0x9000, a=0)
    assert reason(unit.translate(SID, 0x1000)) == 0x90
    fs_pt.map(0x2000, 0x9000)  # Linux pre-sets A (and D): no update needed
    assert unit.translate(SID, 0x2000).hpa == 0x9000


def test_sm_pgsnp_forces_snoop():
    unit, _, _, fs_pt = sm(PGTT_FS, pgsnp=1)
    fs_pt.map(0, 0x9000)
    assert unit.translate(SID, 0).snp is True


def test_sm_pass_through():
    unit, *_ = sm(PGTT_PT)
    assert unit.translate(SID, 0x1234_5000).hpa == 0x1234_5000


def test_nested_translation():
    gpa_offset = 0x4000_0000  # guest-physical g lives at host g + 1 GiB
    unit, t = make_unit("server-sm", sm=True)
    t.set_sm_context(SID)
    ss_pt = t.ss_table(4)
    ss_pt.map(0, gpa_offset, level=3)  # GPA [0, 1G) -> HPA [1G, 2G)
    t.next_page = gpa_offset + 0x10_0000  # FS tables in the guest's memory
    fs_pt = t.fs_table(4, gpa_offset=gpa_offset)
    fs_pt.map(0x7000, 0x20_0000)  # IOVA -> GPA 2M
    t.set_pasid_entry(SID, 0, pgtt=PGTT_NESTED, did=DID, aw=2, ssptptr=ss_pt.root,
                      fsptptr=fs_pt.root_gpa, pwsnp=1)
    entry = unit.translate(SID, 0x7010)
    assert (entry.hpa, entry.level, entry.stage) == (gpa_offset + 0x20_0000, 1, "nested")
    fs_pt.map(0x8000, 0x20_0000, d=1)
    ss_pt.map(0, gpa_offset, level=3, w=0)  # SS read-only
    invalidation.iotlb_global(unit)
    assert unit.translate(SID, 0x7010)  # A already set: reading needs no SS write
    assert reason(unit.translate(SID, 0x7010, write=True)) == 0x77  # D store into the table
    assert reason(unit.translate(SID, 0x8010, write=True)) == 0x85  # D set; SS denies write


def test_nested_first_stage_table_beyond_ss_width():
    unit, t = make_unit("server-sm", sm=True)
    t.set_sm_context(SID)
    ss_pt = t.ss_table(4)
    t.set_pasid_entry(SID, 0, pgtt=PGTT_NESTED, did=DID, aw=2, ssptptr=ss_pt.root,
                      fsptptr=1 << 49, pwsnp=1)
    assert reason(unit.translate(SID, 0)) == 0x74
    t.set_pasid_entry(SID, 0, pgtt=PGTT_NESTED, did=DID, aw=2, ssptptr=ss_pt.root,
                      fsptptr=0x1000, pwsnp=1)
    invalidation.pasid_cache_global(unit)
    assert reason(unit.translate(SID, 0)) == 0x79  # the table's GPA is not mapped


# -- caching mode --------------------------------------------------------------------------------
def test_caching_mode_negative_iotlb_entry_needs_invalidation():
    unit, _, pt = legacy("qemu72-legacy-cm")
    assert reason(unit.translate(SID, 0x1000)) == 0x6
    pt.map(0x1000, 0x9000)
    assert reason(unit.translate(SID, 0x1000, write=True)) == 0x5  # stale, replayed as write
    invalidation.iotlb_page(unit, DID, 0x1000, 0, 0)
    assert unit.translate(SID, 0x1000).hpa == 0x9000


def test_without_caching_mode_nothing_negative_is_cached():
    unit, _, pt = legacy()
    assert reason(unit.translate(SID, 0x1000)) == 0x6
    pt.map(0x1000, 0x9000)
    assert unit.translate(SID, 0x1000).hpa == 0x9000


def test_caching_mode_negative_context_entry_tagged_did0():
    unit, t = make_unit("qemu72-legacy-cm")
    pt = t.ss_table(3)
    pt.map(0, 0x9000)
    t.set_context(SID, p=0)
    assert reason(unit.translate(SID, 0)) == 0x2
    t.set_context(SID, aw=1, did=DID, ssptptr=pt.root)
    assert reason(unit.translate(SID, 0)) == 0x2
    invalidation.context_cache_device(unit, 0, SID, 0)
    assert unit.translate(SID, 0).hpa == 0x9000


def test_first_stage_never_negative_cached():
    unit, t = make_unit("server-sm", sm=True, cm=1)
    t.set_sm_context(SID)
    fs_pt = t.fs_table(4)
    t.set_pasid_entry(SID, 0, pgtt=PGTT_FS, did=DID, fsptptr=fs_pt.root, pwsnp=1)
    assert reason(unit.translate(SID, 0x1000)) == 0x71
    fs_pt.map(0x1000, 0x9000)
    assert unit.translate(SID, 0x1000).hpa == 0x9000


# -- hardware freedom ------------------------------------------------------------------------------
def test_possible_fills_change_nothing_and_apply():
    unit, t, pt = legacy()
    pt.map(0x1000, 0x9000)
    before = (unit.memory.snapshot(), dict(unit.stats), unit.cached())
    fills = possible_fills(unit, SID, 0x1000)
    assert (unit.memory.snapshot(), dict(unit.stats), unit.cached()) == before
    assert [f.cache for f in fills] == ["context_cache", "pscache", "pscache", "iotlb"]
    for f in fills:
        apply_fill(unit, f)
    assert unit.translate(SID, 0x1000).hpa == 0x9000
    assert unit.stats["walks"] == 0


def test_possible_fills_carry_first_stage_ad_updates():
    unit, t, _, fs_pt = sm(PGTT_FS)
    leaf = fs_pt.map(0x1000, 0x9000, a=0)
    fills = possible_fills(unit, SID, 0x1000)
    iotlb = [f for f in fills if f.cache == "iotlb"][0]
    assert iotlb.writes == ((leaf, t.read(leaf) | 0x20),)
    apply_fill(unit, iotlb)
    assert t.read(leaf) & 0x20


def test_possible_fills_negative_under_caching_mode_only():
    unit, _, _ = legacy("qemu72-legacy-cm")
    fills = possible_fills(unit, SID, 0x1000)
    assert [(f.cache, f.entry.present) for f in fills][-1] == ("iotlb", False)
    unit, _, _ = legacy()
    assert all(f.cache != "iotlb" for f in possible_fills(unit, SID, 0x1000))
