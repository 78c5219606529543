"""SS PTE layout and walker (spec 9.8, 10.1, 3.7)."""

import pytest

from builders import Tables
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.second_stage import (
    SS_PTE,
    SsRules,
    address_width,
    aw_from_levels,
    entry_reserved,
    levels_from_aw,
    page_size,
    ss_fault_reason,
    ss_index,
    walk_ss,
)

RULES = SsRules(haw=48, large_levels=(2, 3))


def build(levels=4):
    mem = PhysicalMemory()
    t = Tables(mem)
    return mem, t, t.ss_table(levels)


def walk(mem, pt, iova, rules=RULES, **kw):
    return walk_ss(mem.read_qword, iova, pt.root, pt.levels, rules, **kw)


def test_layout_bits():
    pte = SS_PTE.encode(r=1, w=1, snp=1, addr=0x12345, tm=1)
    assert pte == 0x1234_5803 | (1 << 62)
    assert SS_PTE.reserved_bits(1 << 10 | 1 << 63 | 1 << 55) == 0  # ignored bits


def test_helpers():
    assert [ss_index(0x1FF << 12, 1), ss_index(1 << 21, 2), ss_index(5 << 48, 5)] == [511, 1, 5]
    assert [levels_from_aw(a) for a in (1, 2, 3)] == [3, 4, 5]
    assert [aw_from_levels(n) for n in (3, 4, 5)] == [1, 2, 3]
    assert [address_width(n) for n in (3, 4, 5)] == [39, 48, 57]
    assert [page_size(n) for n in (1, 2, 3)] == [4096, 2 << 20, 1 << 30]


@pytest.mark.parametrize("levels", [3, 4, 5])
def test_4k_walk_at_every_depth(levels):
    mem, _, pt = build(levels)
    iova = (1 << (address_width(levels) - 1)) | 0x5000
    pt.map(iova, 0xABC000, r=1, w=0)
    res = walk(mem, pt, iova | 0x123)
    assert res.fault is None and res.level == 1 and res.page == 0xABC000
    assert (res.read, res.write) == (True, False)
    assert [t.level for t in res.tables] == list(range(levels - 1, 0, -1))


@pytest.mark.parametrize("level", [2, 3])
def test_large_pages(level):
    mem, _, pt = build(4)
    pt.map(0x4000_0000, 0x8000_0000, level=level)
    res = walk(mem, pt, 0x4000_0000 + 0x1234)
    assert res.fault is None and (res.level, res.page) == (level, 0x8000_0000)
    no_large = SsRules(haw=48, large_levels=(2,) if level == 3 else ())
    assert walk(mem, pt, 0x4000_0000, no_large).fault == "reserved"


def test_large_page_misaligned_address_is_reserved():
    mem, _, pt = build(4)
    pt.map(0, 0x20_1000, level=2)
    assert walk(mem, pt, 0).fault == "reserved"


def test_permissions_and_across_levels():
    mem, t, pt = build(3)
    pt.map(0x1000, 0x9000)
    top = pt.root + ss_index(0x1000, 3) * 8
    t.write(top, t.read(top) & ~2)  # W cleared at the top level only
    res = walk(mem, pt, 0x1000)
    assert (res.read, res.write) == (True, False)


def test_not_present_and_reasons():
    mem, _, pt = build(3)
    res = walk(mem, pt, 0x1000)
    assert res.fault == "not_present" and res.level == 3
    assert ss_fault_reason("not_present", scalable=False, write=True) == 0x5
    assert ss_fault_reason("not_present", scalable=False, write=False) == 0x6
    assert ss_fault_reason("reserved", scalable=False, write=False) == 0xC
    assert ss_fault_reason("not_present", scalable=True, write=False) == 0x79
    assert ss_fault_reason("reserved", scalable=True, write=False) == 0x7A
    assert ss_fault_reason("permission", scalable=True, write=True) == 0x85


def test_reserved_bits_by_level():
    top = 4
    assert entry_reserved(0x80 | 3, 4, top, False, RULES) == 0x80  # PS at the top level
    assert entry_reserved(1 << 11 | 3, 2, top, False, RULES) == 1 << 11  # non-leaf SNP
    assert entry_reserved(1 << 11 | 3, 1, top, True, RULES) == 0
    legacy_no_sc = SsRules(haw=48, snp_reserved=True)
    assert entry_reserved(1 << 11 | 3, 1, top, True, legacy_no_sc) == 1 << 11
    assert entry_reserved(1 << 62 | 3, 1, top, True, RULES) == 1 << 62  # TM without DT
    assert entry_reserved(1 << 62 | 3, 1, top, True, SsRules(48, tm_reserved=False)) == 0
    assert entry_reserved(1 << 40 | 3, 1, top, True, SsRules(haw=39)) == 1 << 40
    assert entry_reserved(0x80 | 3, 1, top, True, RULES) == 0  # PS ignored at level 1


def test_snp_and_tm_reported():
    mem, _, pt = build(3)
    pt.map(0, 0x5000, snp=1)
    assert walk(mem, pt, 0).snp is True


def test_execute_honoured_only_with_ssee():
    mem, _, pt = build(3)
    pt.map(0, 0x5000)  # X clear
    assert walk(mem, pt, 0).exe is True
    assert walk(mem, pt, 0, SsRules(48, ssee=True)).exe is False


def test_ad_updates_returned_not_applied():
    mem, _, pt = build(3)
    leaf = pt.map(0, 0x5000)
    rules = SsRules(48, ad=True)
    res = walk(mem, pt, 0, rules, write=True)
    assert len(res.ad_writes) == 3
    assert res.ad_writes[-1] == (leaf, mem.read_qword(leaf) | 0x300)
    assert mem.read_qword(leaf) & 0x300 == 0  # the caller applies them
    nosnoop = SsRules(48, ad=True, snoop=False)
    assert walk(mem, pt, 0, nosnoop).fault == "ad_nosnoop"


def test_resume_from_cached_table():
    mem, _, pt = build(4)
    pt.map(0x1000, 0x7000)
    full = walk(mem, pt, 0x1000)
    res = walk(mem, pt, 0x1000, start=full.tables[-1])
    assert (res.fault, res.page) == (None, 0x7000) and res.tables == ()


def test_garbage_never_raises():
    mem, t, pt = build(5)
    for i in range(512):
        t.write(pt.root + 8 * i, (0x9E3779B97F4A7C15 * (i + 1)) & (2**64 - 1))
    for iova in range(0, 1 << 57, 1 << 48):
        assert walk(mem, pt, iova).fault in (None, "not_present", "reserved")
