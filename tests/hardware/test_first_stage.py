"""FS PTE layout and walker (spec 9.7, 10.2, 3.6)."""

import pytest

from builders import Tables
from vtdsim.hardware.first_stage import (
    FS_PTE,
    FsRules,
    fs_levels,
    is_canonical,
    walk_fs,
)
from vtdsim.hardware.memory import PhysicalMemory

RULES = FsRules(haw=48, fs1gp=True)


def build(levels=4):
    mem = PhysicalMemory()
    t = Tables(mem)
    return mem, t, t.fs_table(levels)


def walk(mem, pt, iova, rules=RULES, **kw):
    return walk_fs(mem.read_qword, iova, pt.root, pt.levels, rules, **kw)


def test_layout_bits():
    assert FS_PTE.encode(p=1, rw=1, us=1, a=1, d=1, addr=0x77, xd=1) == 0x77067 | (1 << 63)
    assert FS_PTE.reserved_bits(1 << 9 | 1 << 11 | 1 << 60) == 0


def test_fspm_and_canonical():
    assert [fs_levels(0), fs_levels(1), fs_levels(2)] == [4, 5, 0]
    assert is_canonical(0x7FFF_FFFF_F000, 4) and is_canonical(0xFFFF_8000_0000_0000, 4)
    assert not is_canonical(0x8000_0000_0000, 4)
    assert is_canonical(0x8000_0000_0000, 5)
    assert not is_canonical(1 << 57, 5)


@pytest.mark.parametrize("levels", [4, 5])
def test_walk_and_non_canonical(levels):
    mem, _, pt = build(levels)
    pt.map(0x1000, 0x9000, d=1)
    res = walk(mem, pt, 0x1234, write=True)
    assert (res.fault, res.page, res.level, res.write) == (0, 0x9000, 1, True)
    assert walk(mem, pt, 1 << 62).fault == 0x80


def test_not_present_and_reserved():
    mem, t, pt = build(4)
    assert walk(mem, pt, 0).fault == 0x71
    leaf = pt.map(0, 0x9000)
    t.write(leaf, t.read(leaf) | (1 << 63))  # XD without NXE is reserved
    assert walk(mem, pt, 0).fault == 0x72


def test_user_supervisor_and_write():
    mem, _, pt = build(4)
    pt.map(0, 0x9000, us=0)
    assert walk(mem, pt, 0).fault == 0x81
    assert walk(mem, pt, 0, priv=True).fault == 0
    pt.map(0x1000, 0x9000, rw=0)
    assert walk(mem, pt, 0x1000, write=True).fault == 0x85
    assert walk(mem, pt, 0x1000, write=True, priv=True).fault == 0  # WPE=0
    assert walk(mem, pt, 0x1000, FsRules(48, wpe=True), write=True, priv=True).fault == 0x85


def test_execute_disable_with_nxe():
    mem, _, pt = build(4)
    pt.map(0, 0x9000, xd=1)
    assert walk(mem, pt, 0, FsRules(48, nxe=True), exe=True).fault == 0x82
    assert walk(mem, pt, 0, FsRules(48, nxe=True)).fault == 0


def test_large_pages_and_fs1gp():
    mem, _, pt = build(4)
    pt.map(0x4000_0000, 0x8000_0000, level=3)
    assert walk(mem, pt, 0x4000_0000 + 5).page == 0x8000_0000
    assert walk(mem, pt, 0x4000_0000, FsRules(48, fs1gp=False)).fault == 0x72
    # bit 12 is PAT in a large page, not an address bit
    pt.set(0x20_0000, FS_PTE.encode(p=1, us=1, a=1, ps=1, addr=0x401), 2)
    assert walk(mem, pt, 0x20_0000).page == 0x40_0000


def test_accessed_dirty_updates():
    mem, _, pt = build(4)
    leaf = pt.map(0, 0x9000, a=0, d=0)
    res = walk(mem, pt, 0, write=True)
    assert res.ad_writes == ((leaf, mem.read_qword(leaf) | 0x60),)  # tables already have A
    assert walk(mem, pt, 0, FsRules(48, snoop=False)).fault == 0x90
    assert walk(mem, pt, 0, FsRules(48, eafe=True)).ad_writes[0][1] & 0x400


def test_nested_table_translation_faults():
    mem, _, pt = build(4)
    pt.map(0, 0x9000)

    def deny(gpa, top, ad):
        return (0, 0x75 if top else 0x76)

    assert walk(mem, pt, 0, table_hpa=deny).fault == 0x75

    def identity(gpa, top, ad):
        return (gpa, 0)

    assert walk(mem, pt, 0, table_hpa=identity).page == 0x9000
