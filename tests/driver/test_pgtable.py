import pytest

from builders import Tables
from vtdsim.driver.executor import DirectExecutor
from vtdsim.driver.pgtable import SZ_1G, SZ_2M, DomainPageTable
from vtdsim.driver.platform import Platform
from vtdsim.driver.steps import CpuCmpxchg
from vtdsim.errors import SpecRuleBroken
from vtdsim.hardware.first_stage import FS_PTE
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.hardware.second_stage import SS_PTE

RW = 3


def _table(stage="ss", levels=3, coherent=False, **kw):
    platform = Platform(PhysicalMemory(), [])
    ex = DirectExecutor(platform)
    pgt = DomainPageTable(stage, levels, coherent=coherent, **kw)
    ex.run(pgt.alloc_root())
    return platform, ex, pgt


def test_second_stage_entries_bit_exact_and_clflushed():
    platform, ex, pgt = _table(force_snoop=True)
    ex.run(pgt.map(0xFFFFE000, 0x72B09000, 0x1000, RW))
    paddr, level, pte = pgt.lookup(platform.memory, 0xFFFFE123)
    assert (paddr, level) == (0x72B09123, 1)
    assert pte == SS_PTE.encode(r=1, w=1, snp=1, addr=0x72B09)
    table = platform.memory.cpu_load(pgt.root, 8)  # L3 index 3 holds 0xc0000000..
    top = platform.memory.cpu_load(pgt.root + 8 * 3, 8)
    assert table == 0 and top & 0xFFF == SS_PTE.encode(r=1, w=1)
    assert platform.memory.dirty_lines() == []  # non-coherent: every store flushed


def test_read_only_first_stage_leaf_and_tables():
    platform, ex, pgt = _table("fs", 4, coherent=True)
    ex.run(pgt.map(0x1000, 0x5000, 0x1000, 1))
    _, _, pte = pgt.lookup(platform.memory, 0x1000)
    assert pte == FS_PTE.encode(p=1, us=1, a=1, addr=0x5)
    top = platform.memory.cpu_load(pgt.root, 8)
    assert top & 0xFFF == FS_PTE.encode(p=1, rw=1, us=1, a=1)
    ex.run(pgt.map(0x2000, 0x6000, 0x1000, RW))
    assert pgt.lookup(platform.memory, 0x2000)[2] & 0x42 == 0x42  # RW and D when writable


@pytest.mark.parametrize("large,size,levels_used", [
    (0, SZ_2M, {1}), (SZ_2M, 1 << 30, {2}), (SZ_2M | SZ_1G, 1 << 30, {3})])
def test_large_pages_when_allowed_and_aligned(large, size, levels_used):
    """A 1 GiB-aligned range gets the largest page the domain allows (4 KiB pages are checked
    on a 2 MiB range: 262,144 of them would only make the test slow)."""
    platform, ex, pgt = _table(large_pages=large, levels=4)
    ex.run(pgt.map(1 << 30, 1 << 30, size, RW))
    assert {pgt.lookup(platform.memory, (1 << 30) + off)[1] for off in (0, size - 0x1000)} \
        == levels_used


def test_unmap_frees_wholly_covered_tables_for_the_caller():
    platform, ex, pgt = _table()
    ex.run(pgt.map(0x200000, 0x1000000, 0x200000, RW))  # a whole level-1 table
    ex.run(pgt.map(0x400000, 0x2000000, 0x1000, RW))
    res = ex.run(pgt.unmap(0x200000, 0x200000))
    assert res.size == 0x200000 and res.freed_tables == 1 and len(res.freelist) == 1
    assert pgt.lookup(platform.memory, 0x200000) is None
    assert pgt.lookup(platform.memory, 0x400000) is not None
    assert res.freelist[0] in platform.pages.allocated  # the caller frees it after the flush
    partial = ex.run(pgt.unmap(0x400000, 0x1000))
    assert partial.freelist == [] and pgt.lookup(platform.memory, 0x400000) is None


def test_unmap_of_part_of_a_large_page_takes_it_whole():
    platform, ex, pgt = _table(large_pages=SZ_2M)
    ex.run(pgt.map(0x200000, 0x400000, 0x200000, RW))
    assert ex.run(pgt.unmap(0x200000, 0x1000)).size == 0x200000


def test_mapping_twice_is_the_already_set_bug():
    platform, ex, pgt = _table()
    ex.run(pgt.map(0x1000, 0x5000, 0x1000, RW))
    with pytest.raises(SpecRuleBroken, match="already set"):
        ex.run(pgt.map(0x1000, 0x6000, 0x1000, RW))


def test_losing_the_table_race_frees_our_page():
    platform, ex, pgt = _table()
    gen = pgt.map(0x1000, 0x5000, 0x1000, RW)
    reply = None
    while not isinstance(step := gen.send(reply), CpuCmpxchg):  # up to our table install
        reply = ex._handlers[type(step)](step)
    ex.run(pgt.map(0x2000, 0x6000, 0x1000, RW))  # another CPU installs the tables first

    def rest(reply):
        while True:
            try:
                step = gen.send(reply)
            except StopIteration as stop:
                return stop.value
            reply = yield step

    ex.reset_steps()
    ex.run(rest(ex._handlers[CpuCmpxchg](step)))
    assert ex.steps["FreePage"] == 1  # our page lost the cmpxchg and went back
    assert pgt.lookup(platform.memory, 0x1000)[0] == 0x5000
    assert pgt.lookup(platform.memory, 0x2000)[0] == 0x6000


def test_the_unit_walks_what_was_mapped():
    memory = PhysicalMemory()
    unit = RemappingUnit(get_preset("qemu72-legacy"), memory)
    platform = Platform(memory, [unit])
    ex = DirectExecutor(platform)
    pgt = DomainPageTable("ss", 3, coherent=False, large_pages=SZ_2M)
    ex.run(pgt.alloc_root())
    ex.run(pgt.map(0xFFFFE000, 0x72B09000, 0x2000, RW))
    ex.run(pgt.map(0x40000000, 0x10000000, 0x200000, 1))
    tables = Tables(memory, base=0x9000_0000)
    tables.set_context(0x18, did=2, aw=1, ssptptr=pgt.root)
    unit.mmio_write(0x20, 8, tables.rta)
    unit.mmio_write(0x18, 4, 1 << 30)  # SRTP
    unit.mmio_write(0x18, 4, 1 << 31)  # TE
    entry = unit.translate(0x18, 0xFFFFF010, write=True)
    assert entry and entry.hpa | (0xFFFFF010 & entry.offset_mask) == 0x72B0A010
    big = unit.translate(0x18, 0x40123456)
    assert big and big.level == 2 and big.hpa | (0x40123456 & big.offset_mask) == 0x10123456
    assert not unit.translate(0x18, 0x40000000, write=True)  # read-only mapping
