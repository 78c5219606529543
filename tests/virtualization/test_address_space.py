"""The iova_tree filter and the shadow walk (QEMU vtd_page_walk_one / vtd_page_walk_level),
and garbage from the guest reaching the VMM model."""

from collections import Counter

import script_module
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.virtualization.address_space import (
    MAP,
    UNMAP,
    IommuEvent,
    Notifier,
    SsRoot,
    VtdAddressSpace,
    page_walk,
    walk_one,
)


def _space():
    got = []
    vas = VtdAddressSpace(0x100, [Notifier(frozenset({MAP, UNMAP}), got.append)])
    return vas, got


def test_identical_map_is_skipped_changed_one_is_unmap_then_map():
    vas, got = _space()
    stats = Counter()
    first = IommuEvent(MAP, 0x1000, 0x1000, 0x5000, (True, True))
    walk_one(vas, first, True, stats)
    walk_one(vas, first, True, stats)
    assert got == [first] and stats["vmm_walk_skipped_same"] == 1
    moved = IommuEvent(MAP, 0x1000, 0x1000, 0x9000, (True, False))
    walk_one(vas, moved, True, stats)
    assert got[1:] == [IommuEvent(UNMAP, 0x1000, 0x1000), moved]


def test_unmap_of_a_range_never_mapped_is_skipped():
    vas, got = _space()
    stats = Counter()
    walk_one(vas, IommuEvent(UNMAP, 0x2000, 0x1000), True, stats)
    assert got == [] and stats["vmm_walk_skipped_unmapped"] == 1


def test_walk_emits_a_map_per_leaf_and_an_unmap_per_empty_entry():
    mem = PhysicalMemory()
    top, mid, leaf = 0x10000, 0x11000, 0x12000
    mem.write_qword(top, mid | 3)  # level 3 entry 0 -> level 2 table
    mem.write_qword(mid, leaf | 3)  # level 2 entry 0 -> level 1 table
    mem.write_qword(leaf + 8, 0x7000 | 1)  # iova 0x1000 -> 0x7000, read-only
    mem.write_qword(mid + 8, 0x20_0000 | 0x80 | 3)  # iova 2M: a 2 MiB page
    events, stats = [], Counter()
    page_walk(mem, SsRoot(2, top, 3), 0, 0x40_0000, events.append, stats)
    maps = [e for e in events if e.kind == MAP]
    assert maps == [IommuEvent(MAP, 0x1000, 0x1000, 0x7000, (True, False)),
                    IommuEvent(MAP, 0x20_0000, 0x20_0000, 0x20_0000, (True, True))]
    assert IommuEvent(UNMAP, 0, 0x1000) in events  # empty leaf entries: their own range
    assert stats["vmm_walk_reads"] == 1 + 2 + 512


def test_guest_garbage_never_raises_and_never_times_out_on_the_vmm():
    fuzz = script_module.load("fuzz_unit")
    for version in ("qemu-7.2", "qemu-10.0"):
        fuzzer = fuzz.run(3000, 5, vmm=version)
        stats = fuzzer.summary()
        assert stats["iqe"] > 0 and stats["ite"] == 0
        assert sum(v for k, v in fuzzer.events.items() if k.startswith("notify_")) > 0


def _tables():
    mem = PhysicalMemory()
    top, mid, leaf = 0x10000, 0x11000, 0x12000
    mem.write_qword(top, mid | 3)
    mem.write_qword(mid, leaf | 3)
    mem.write_qword(leaf + 8, 0x7000 | 3)
    return mem, SsRoot(2, top, 3)


def test_a_quiet_run_of_empty_entries_ends_as_the_per_entry_walk():
    """The run skip (``quiet``) is an optimisation only: notifications, the iova_tree and
    every count end as when each empty entry goes through walk_one."""
    ends = []
    for quiet in (False, True):
        mem, root = _tables()
        vas, got = _space()
        vas.iova_tree.insert(IommuEvent(MAP, 0x5000, 0x1000, 0x9000, (True, True)))
        stats = Counter()

        def skip(lo, hi, vas=vas):
            return vas.iova_tree.find(lo, hi - lo) is None

        page_walk(mem, root, 0, 1 << 39, lambda ev, vas=vas, s=stats: walk_one(vas, ev, True, s),
                  stats, skip if quiet else None)
        ends.append((got, len(vas.iova_tree), dict(stats)))
    assert ends[0] == ends[1]
    got, tree, stats = ends[1]
    assert got == [IommuEvent(MAP, 0x1000, 0x1000, 0x7000, (True, True)),
                   IommuEvent(UNMAP, 0x5000, 0x1000)] and tree == 1
    assert stats["vmm_walk_reads"] == 3 * 512


def test_read_qwords_is_read_qword_in_one_pass():
    mem = PhysicalMemory()
    mem.write_qword(0x3000, 5)
    mem.cpu_store(0x3008, 7, 8)  # only in the CPU cache: a snooped read sees it
    assert mem.read_qwords(0x3000, 3) == (5, 7, 0)
    assert mem.read_qwords(0x3000, 3, snoop=False) == (5, 0, 0)
    assert mem.read_qwords(0x3000, 3) == tuple(mem.read_qword(0x3000 + 8 * i) for i in range(3))
