"""Paging-structure caches of a nested walk (VT-d spec rev 5.10, 6.2.5): which reads a nested
IOTLB miss makes once combined (first-stage, nested) and second-stage entries are cached, and
which invalidations drop them (6.5.2.3 Table 23, 6.5.2.4)."""

from builders import Tables
from vtdsim.hardware import invalidation
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import PGTT_NESTED
from vtdsim.hardware.presets import get_preset
from vtdsim.hardware.remapping_unit import RemappingUnit
from vtdsim.hardware.request import sid_of
from vtdsim.hardware.translation import possible_fills

SID = sid_of(0, 3, 0)
DID = 2
HOST = 0x4000_0000  # guest-physical g lives at host g + 1 GiB
DATA = 0x20_0000  # the guest's data pages: GPA [2M, 4M)


def nested_unit():
    """A guest's 4-level FS tables (at GPA 1M+) nested on a 4-level SS mapping GPA [0, 4M)
    with two 2 MiB pages; IOVA 0x7000 -> GPA 2M, 0x8000 -> 2M + 4K, 0x20_7000 -> 2M + 8K."""
    unit = RemappingUnit(get_preset("server-sm"), PhysicalMemory())
    t = Tables(unit.memory)
    unit.root_table_addr, unit.ttm, unit.translation_enabled = t.rta, 1, True
    t.set_sm_context(SID)
    ss = t.ss_table(4)
    ss.map(0, HOST, level=2)
    ss.map(0x20_0000, HOST + 0x20_0000, level=2)
    t.next_page = HOST + 0x10_0000
    fs = t.fs_table(4, gpa_offset=HOST)
    for iova, gpa in ((0x7000, DATA), (0x8000, DATA + 0x1000), (0x20_7000, DATA + 0x2000)):
        fs.map(iova, gpa, d=1)
    t.set_pasid_entry(SID, 0, pgtt=PGTT_NESTED, did=DID, aw=2, ssptptr=ss.root,
                      fsptptr=fs.root_gpa, pwsnp=1)
    return unit, t, fs


def reads(unit, iova: int, write: bool = False) -> int:
    """Structure reads of one request (the context and PASID entries are cached already)."""
    before = unit.stats["walk_reads"]
    entry = unit.translate(SID, iova, write=write)
    assert entry.stage == "nested"
    return unit.stats["walk_reads"] - before


def psc_stages(unit) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key in unit.pscache:
        out.setdefault(key[2], []).append(key[3])
    return {stage: sorted(levels) for stage, levels in out.items()}


def warm(unit):
    unit.translate(SID, 0x7000)


def test_a_first_nested_walk_reads_every_fs_entry_and_translates_every_table():
    unit, *_ = nested_unit()
    unit.translate(SID, 0)  # fetch context and PASID entries; 0 is not mapped: FS fault
    # SS of the top table: PML4E, PDPE, PDE (2M) = 3; per FS level its entry (4) and the full
    # SS walk of the next table (3 x 3) and of the output GPA (3): a walk's fills are made
    # when it ends (``RequestFlow.commit``), so its SS walks do not resume from each other.
    invalidation.iotlb_global(unit)
    assert reads(unit, 0x7000) == 3 + 4 + 3 * 3 + 3
    # Combined entries for the PDPT, PD and PT levels; SS entries of the GPA region's walk.
    assert psc_stages(unit) == {"nested": [1, 2, 3], "ss": [2, 3]}


def test_a_nested_miss_under_a_cached_pde_reads_one_fs_pte_and_one_ss_entry():
    unit, *_ = nested_unit()
    warm(unit)
    assert reads(unit, 0x8000) == 2  # FS PTE (combined PDE-cache hit) + SS PDE of its GPA
    # Another 2 MiB region of IOVA: the combined PDPE-cache entry gives the page directory;
    # FS PDE, SS of the new page table, FS PTE, SS of the output GPA.
    assert reads(unit, 0x20_7000) == 4


def test_pasid_page_invalidation_keeps_combined_entries_only_with_ih():
    unit, *_ = nested_unit()
    warm(unit)
    invalidation.piotlb_page(unit, DID, 0, 0x7000, 0, ih=1)
    assert reads(unit, 0x7000) == 2
    invalidation.piotlb_page(unit, DID, 0, 0x7000, 0, ih=0)
    assert psc_stages(unit) == {"ss": [2, 3]}  # type 6 leaves second-stage entries
    assert reads(unit, 0x7000) == 1 + 4 + 3 + 1  # the top table's SS walk resumes too


def test_pasid_selective_invalidation_drops_every_combined_entry():
    unit, *_ = nested_unit()
    warm(unit)
    unit.translate(SID, 0x20_7000)
    invalidation.piotlb_pasid(unit, DID, 0)
    assert psc_stages(unit) == {"ss": [2, 3]}
    assert len(unit.iotlb) == 0


def test_a_host_psi_drops_every_nested_entry_of_the_domain_whatever_its_range():
    """The host's second-stage PSI names guest-physical addresses: a nested IOTLB entry or a
    combined entry for any IOVA may have used them (a table or the output), so Table 23 drops
    them all by DID; second-stage entries go only over the range, and only with IH=0."""
    unit, *_ = nested_unit()
    warm(unit)
    unit.translate(SID, 0x20_7000)
    far = 0x8000_0000  # a GPA (2 GiB) near no IOVA or table: overlaps no IOTLB entry
    invalidation.iotlb_page(unit, DID, far, 0, ih=1)
    assert len(unit.iotlb) == 0
    assert psc_stages(unit) == {"ss": [2, 3]}
    invalidation.iotlb_page(unit, DID, far, 0, ih=0)
    assert psc_stages(unit) == {"ss": [2]}  # the PDPT entry's 512 GiB overlaps, the PD's 1 not
    invalidation.iotlb_page(unit, 7, 0, 0, ih=0)  # another domain: nothing
    assert psc_stages(unit) == {"ss": [2]}


def test_a_cached_combined_entry_outlives_a_guest_table_change_until_ih0():
    """6.2.5: hardware may keep a combined PDE entry after the guest rewrites that PDE; only
    an invalidation with IH=0 over the range (or PASID-selective) makes it walk the new one."""
    unit, t, fs = nested_unit()
    warm(unit)
    new_pt = t.page()  # a new guest page table: 0x7000 -> DATA + 0x5000
    t.write(new_pt + 7 * 8, fs.table_entry(DATA + 0x5000))  # P|RW|U|A: a 4 KiB leaf here
    t.write(fs.pte_addr(0x7000, 2), fs.table_entry(new_pt - HOST))
    invalidation.piotlb_page(unit, DID, 0, 0x7000, 0, ih=1)
    assert unit.translate(SID, 0x7000).hpa == HOST + DATA  # through the cached old table
    invalidation.piotlb_page(unit, DID, 0, 0x7000, 0, ih=0)
    assert unit.translate(SID, 0x7000).hpa == HOST + DATA + 0x5000


def test_a_resumed_walk_checks_ss_write_access_for_a_dirty_update():
    """Setting D through a cached combined entry still needs SS write access to the guest's
    page table (6.2.5 "subject to write permission checks at second-stage translation")."""
    unit, t, fs = nested_unit()
    fs.map(0x9000, DATA + 0x3000, d=0)
    warm(unit)
    before = unit.stats["walk_reads"]
    entry = unit.translate(SID, 0x9000, write=True)
    # FS PTE; SS of the page table's GPA for the D store (resumes at the SS PD: 1); SS of the
    # output GPA (1).
    assert entry.write and unit.stats["walk_reads"] - before == 3
    assert t.read(fs.pte_addr(0x9000)) & 0x40


def test_possible_fills_of_a_nested_walk_include_combined_entries():
    unit, *_ = nested_unit()
    fills = [f for f in possible_fills(unit, SID, 0x7000) if f.cache == "pscache"]
    stages = sorted((f.entry.stage, f.entry.level) for f in fills)
    assert ("nested", 1) in stages and ("nested", 3) in stages and ("ss", 2) in stages
    combined = {f.entry.level: f.entry for f in fills if f.entry.stage == "nested"}
    assert combined[1].table_addr - HOST == combined[1].table_gpa  # host address of the PT
