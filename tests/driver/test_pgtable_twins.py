"""The page table's fast forms against the plain ones they replace: the unmap's one-frame
``dma_pte_clear_level`` (a descent with no stack while the range lies inside one entry, then
an explicit stack) against the recursive form Linux has, and the map
of one page (its run's generator handed back) against the loop over runs, each run's walk
in its own frame against ``pfn_to_dma_pte`` as a generator of its own - the same steps,
replies and results on random page tables."""

import random

import pytest

from vtdsim.driver.executor import DirectExecutor
from vtdsim.driver.pgtable import (
    _ADDR,
    _PS,
    SZ_1G,
    SZ_2M,
    DomainPageTable,
    UnmapResult,
    leaf_bits,
)
from vtdsim.driver.platform import Platform
from vtdsim.driver.steps import ClflushRange, CpuCmpxchg, CpuWrite, qword_read
from vtdsim.errors import SpecRuleBroken
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.second_stage import level_shift

PAGE = 4096


class RecursiveTable(DomainPageTable):
    """The same table with Linux's recursive ``dma_pte_clear_level`` (one generator per
    level), the leaf walk as its own generator and every map through the loop over runs
    with the level picked afresh: the forms the fast ones must equal."""

    def map(self, iova, paddr, size, prot):
        done = 0
        while done < size:
            level = self._reference_level(iova + done, paddr + done, size - done)
            done += yield from self._install_run(iova + done, paddr + done, size - done,
                                                 level, prot)
        return size

    def _install_run(self, iova, paddr, remaining, level, prot):
        """``pfn_to_dma_pte`` as its own walk (a table in the way of a large page lowers the
        level; a large page in the way is the bug), then the run of leaves."""
        slot = yield from self._pfn_to_dma_pte(iova, level)
        level = self._found_level
        first, page, done = slot, 1 << level_shift(level), 0
        while True:
            new = (paddr + done) & _ADDR | leaf_bits(self.stage, level, prot, self.force_snoop)
            old = yield CpuCmpxchg(addr=slot, expected=0, new=new, why="__domain_mapping")
            if old:
                raise SpecRuleBroken(f"DMA PTE for {iova + done:#x} already set")
            done, slot = done + page, slot + 8
            if done >= remaining or not slot % PAGE or remaining - done < page:
                break
        if not self.coherent:
            yield ClflushRange(addr=first, size=slot - first, why="domain_flush_cache")
        return done

    def _pfn_to_dma_pte(self, iova, level):
        table, lvl = self.root, self.levels
        while True:
            slot = table + 8 * ((iova >> level_shift(lvl)) & 511)
            pte = yield qword_read(slot, "pfn_to_dma_pte")
            present = pte & self._present_bits
            leaf = lvl == 1 or pte & _PS
            if lvl == level and (not present or leaf):
                self._found_level = level
                return slot
            if lvl == level:
                level -= 1
            if not present:
                pte = yield from self._install_table(slot)
            elif leaf:
                raise SpecRuleBroken(f"map {iova:#x}: a large page at level {lvl}")
            table, lvl = pte & _ADDR, lvl - 1

    def _reference_level(self, iova, paddr, remaining):
        levels = [1]
        if self.large_pages & SZ_2M:
            levels.append(2)
            if self.large_pages & SZ_1G:
                levels.append(3)
        for level in reversed(levels):
            page = 1 << level_shift(level)
            if not (iova | paddr) & (page - 1) and remaining >= page:
                return level
        return 1

    def unmap(self, iova, size):
        leaf_level = yield from self._leaf_level_at(iova)
        if leaf_level:
            size = max(size, 1 << level_shift(leaf_level))
        result = UnmapResult(size)
        start, last = iova >> 12, (iova + size - 1) >> 12
        yield from self._clear_level(self.levels, self.root, 0, start, last, result)
        result.freed_tables = len(result.freelist)
        return result

    def _leaf_level_at(self, iova):
        table, lvl = self.root, self.levels
        while True:
            pte = yield qword_read(table + 8 * ((iova >> (3 + 9 * lvl)) & 511), "unmap")
            if not pte & self._present_bits:
                return 0
            if lvl == 1 or pte & _PS:
                return lvl
            table, lvl = pte & _ADDR, lvl - 1

    def _clear_level(self, level, table, pfn, start, last, result):
        shift = level_shift(level) - 12
        span = 1 << shift
        pfn = max(start, pfn)
        first = cleared = None
        idx = (pfn >> shift) & 511
        while idx < 512 and pfn <= last:
            slot = table + 8 * idx
            level_pfn = pfn & ~(span - 1)
            pte = yield qword_read(slot, "dma_pte_clear_level")
            if pte & self._present_bits:
                if start <= level_pfn and last >= level_pfn + span - 1:
                    if level > 1 and not pte & _PS:
                        yield from self._list_pagetables(level - 1, pte & _ADDR, result)
                    yield CpuWrite(addr=slot, value=0, size=8, why="dma_clear_pte")
                    first = slot if first is None else first
                    cleared = slot
                elif level > 1:
                    yield from self._clear_level(level - 1, pte & _ADDR, level_pfn, start,
                                                 last, result)
            pfn = level_pfn + span
            idx += 1
        if first is not None and not self.coherent:
            yield ClflushRange(addr=first, size=cleared + 8 - first, why="domain_flush_cache")


def _run_logged(ex, gen):
    """Run ``gen`` on ``ex``; its steps, the replies sent back and its return value."""
    log, reply = [], None
    try:
        while True:
            step = gen.send(reply)
            reply = ex.apply(step)
            log.append((step, reply))
    except StopIteration as stop:
        return log, stop.value


def _twins(stage, levels, coherent, large):
    made = []
    for cls in (DomainPageTable, RecursiveTable):
        ex = DirectExecutor(Platform(PhysicalMemory(), []))
        pgt = cls(stage, levels, coherent=coherent, large_pages=large)
        ex.run(pgt.alloc_root())
        made.append((ex, pgt))
    return made


@pytest.mark.parametrize("seed", range(12))
def test_map_and_unmap_equal_the_plain_forms(seed):
    rng = random.Random(seed)
    stage = rng.choice(["ss", "fs"])
    levels = rng.choice([4, 5] if stage == "fs" else [3, 4, 5])
    large = rng.choice([0, SZ_2M, SZ_2M | SZ_1G])
    twins = _twins(stage, levels, rng.random() < 0.5, large)
    # Mappings clustered in a few GiB so that unmaps cross, cover and split tables.
    mapped: list[tuple[int, int]] = []
    for _ in range(40):
        if mapped and rng.random() < 0.45:
            # A range stays listed once unmapped: it is never mapped again (part of it may
            # still be, and a large leaf's unmap goes beyond the range asked for).
            base, size = rng.choice(mapped)
            iova = base + PAGE * rng.randrange(max(1, size // PAGE))
            span = PAGE * rng.choice([1, 2, 7, 512, 1024, 1 << 18])
            if rng.random() < 0.1:  # a whole 1 GiB entry: its tables are listed and freed
                iova, span = iova & -SZ_1G, SZ_1G
            # Unmap a piece (possibly past the mapping: Linux clears what is present).
            logs = [_run_logged(ex, pgt.unmap(iova, span)) for ex, pgt in twins]
            assert logs[0][0] == logs[1][0]
            assert vars_of(logs[0][1]) == vars_of(logs[1][1])
            for page in logs[0][1].freelist:
                for ex, _ in twins:
                    ex.platform.pages.free(page)
            continue
        size = rng.choice([PAGE, PAGE, 3 * PAGE, SZ_2M, SZ_2M + 5 * PAGE, 1 << 30])
        align = SZ_2M if size >= SZ_2M and rng.random() < 0.7 else PAGE
        iova = align * rng.randrange((4 << 30) // align)
        if any(iova < b + s and b < iova + size for b, s in mapped):
            continue
        paddr = align * rng.randrange(1, (64 << 30) // align)
        logs = [_run_logged(ex, pgt.map(iova, paddr, size, 3)) for ex, pgt in twins]
        assert logs[0] == logs[1]
        mapped.append((iova, size))


def vars_of(result: UnmapResult):
    return result.size, list(result.freelist), result.freed_tables
