"""A domain's I/O page table built in physical memory through steps: Linux 6.1
drivers/iommu/intel/iommu.c (``pfn_to_dma_pte``, ``__domain_mapping``, ``domain_unmap`` /
``dma_pte_clear_level`` / ``dma_pte_list_pagetables``) and mainline's generic page-table formats
(drivers/iommu/generic_pt/fmt/vtdss.h and x86_64.h) for the entry values.

Second stage (``SS_PTE``): tables R|W, leaves R/W from ``prot`` (IOMMU_READ 1, IOMMU_WRITE 2)
plus SNP when the domain forces snooping, PS above level 1.  First stage (``FS_PTE``): tables
P|RW|U|A, leaves P|U|A plus RW|D when writable, PS above level 1 (reference §4.14, vtd-hardware
§10).  New table pages are zeroed (``CpuZero``), flushed when the walk is not coherent, and
installed with ``CpuCmpxchg`` so two mappers racing for a slot both stay correct (the loser
frees its page); leaves are installed with ``CpuCmpxchg`` from 0 as 6.1's ``__domain_mapping``
does (a non-zero old value is the "DMA PTE already set" bug), one walk per run of leaves in one
table page, and the run is clflushed once when the walk is not coherent.  Unmap clears leaves
and whole covered subtrees, whose table pages go to the freelist that the caller frees only
after the IOTLB flush.

Not modelled: 6.1's XD bit in first-stage entries (``DMA_FL_PTE_XD``; the reference documents
mainline's format without XD), replacing existing tables by a large page (a large page is used
only where the slot is empty), mainline's table-freeing policy (both kernels use 6.1's), A/D
tracking, 512 GiB pages.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from vtdsim.driver.steps import (
    AllocPage,
    Clflush,
    ClflushRange,
    CpuCmpxchg,
    CpuWrite,
    CpuZero,
    FreePage,
    Step,
    qword_reads,
)
from vtdsim.errors import BadInput, SpecRuleBroken, hexval
from vtdsim.hardware.first_stage import FS_PTE
from vtdsim.hardware.second_stage import SS_PTE, level_shift, ss_index

PAGE_SIZE = 4096
IOMMU_READ, IOMMU_WRITE = 1, 2
SZ_2M, SZ_1G = 1 << 21, 1 << 30
_ADDR = SS_PTE["addr"].in_place  # same bits 51:12 in both formats

_SS_TABLE = SS_PTE.encode(r=1, w=1)
_FS_TABLE = FS_PTE.encode(p=1, rw=1, us=1, a=1)
_PS = 0x80  # PS is bit 7 in both formats
_PRESENT = {"ss": 3, "fs": 1}  # the bits ``_present`` tests, inlined in the walks below
# The walks' qword reads by caller: ``_READS_...[slot]`` is the slot's ``CpuRead`` step.
_READS_PFN_TO_DMA_PTE = qword_reads("pfn_to_dma_pte")
_READS_UNMAP = qword_reads("unmap")
_READS_CLEAR_LEVEL = qword_reads("dma_pte_clear_level")
_READS_LIST_PAGETABLES = qword_reads("dma_pte_list_pagetables")


@dataclass
class UnmapResult:
    """What ``unmap`` did: bytes unmapped, table pages to free after the flush, their count."""

    size: int
    freelist: list[int] = field(default_factory=list)
    freed_tables: int = 0


@lru_cache(maxsize=64)
def leaf_bits(stage: str, level: int, prot: int, force_snoop: bool) -> int:
    """Every bit of a leaf but its address: they depend only on these (one table of values
    per domain's mapping calls, so computed once through the layouts)."""
    large = int(level > 1)
    writable = int(bool(prot & IOMMU_WRITE))
    if stage == "ss":
        return SS_PTE.encode(r=int(bool(prot & IOMMU_READ)), w=writable, ps=large,
                             snp=int(force_snoop))
    return FS_PTE.encode(p=1, us=1, a=1, rw=writable, d=writable, ps=large)


@lru_cache(maxsize=8)
def _leaf_pages(large_pages: int) -> tuple[tuple[int, int], ...]:
    """``domain->iommu_superpage``: the leaf levels a domain with ``large_pages`` (SZ_2M /
    SZ_1G bits) may use, largest first, with their page sizes; 1 GiB only on top of 2 MiB
    support.  Memoised: every map picks its level from these."""
    levels = [1]
    if large_pages & SZ_2M:
        levels.append(2)
        if large_pages & SZ_1G:
            levels.append(3)
    return tuple((level, 1 << level_shift(level)) for level in reversed(levels))


@lru_cache(maxsize=4096)
def _clear_pte(slot: int) -> CpuWrite:
    """``dma_clear_pte``'s store, built once per slot (a step is an immutable value): unmaps
    clear the same slots again and again."""
    return CpuWrite(addr=slot, value=0, size=8, why="dma_clear_pte")


@lru_cache(maxsize=4096)
def _set_leaf(slot: int, new: int) -> CpuCmpxchg:
    """``__domain_mapping``'s cmpxchg of a leaf from 0, built once per (slot, value): maps of
    recycled IOVAs install the same leaves again and again."""
    return CpuCmpxchg(addr=slot, expected=0, new=new, why="__domain_mapping")


def _present(stage: str, pte: int) -> bool:
    """SS: R or W (``dma_pte_present``); FS: P - both bit 0 or bit 1 (SS W-only)."""
    return bool(pte & 3) if stage == "ss" else bool(pte & 1)


def _is_leaf(pte: int, level: int) -> bool:
    return level == 1 or bool(pte & _PS)


class DomainPageTable:
    """The page table of one paging domain (``dmar_domain->pgd``)."""

    def __init__(self, stage: str, levels: int, coherent: bool, force_snoop: bool = False,
                 large_pages: int = 0):
        if stage not in ("ss", "fs"):
            raise BadInput(f"page-table stage {stage!r}: expected ss or fs")
        if levels not in (3, 4, 5) or (stage == "fs" and levels == 3):
            raise BadInput(f"{stage} page tables cannot have {levels} levels")
        self.stage = stage
        self._present_bits = _PRESENT[stage]
        self.levels = levels
        self.coherent = coherent
        self.force_snoop = force_snoop
        self.large_pages = large_pages  # bitmask of SZ_2M / SZ_1G the domain may use
        self.root = 0

    # -- entries -----------------------------------------------------------------------------------
    def _table_entry(self, table: int) -> int:
        return table | (_SS_TABLE if self.stage == "ss" else _FS_TABLE)


    # -- allocation --------------------------------------------------------------------------------
    def _new_table(self, why: str) -> Generator[Step, Any, int]:
        """``alloc_pgtable_page`` (__GFP_ZERO) then ``domain_flush_cache`` of the page."""
        page = yield AllocPage(what="page-table page", why=why)
        yield CpuZero(addr=page, size=PAGE_SIZE, why=why)
        if not self.coherent:
            yield ClflushRange(addr=page, size=PAGE_SIZE, why=why)
        return page

    def alloc_root(self) -> Generator[Step, Any, int]:
        self.root = yield from self._new_table("domain pgd")
        return self.root

    # -- map ---------------------------------------------------------------------------------------
    def map(self, iova: int, paddr: int, size: int, prot: int) -> Generator[Step, Any, int]:
        """``__domain_mapping``: walk once per run of leaves that share a table page, store
        each leaf with its own cmpxchg, clflush the run once; the generator returns ``size``.
        One 4 KiB page (a DMA-API map of a small buffer) is one run at level 1, so that
        run's generator is handed back itself: one frame fewer for each of its steps."""
        if (iova | paddr | size) & (PAGE_SIZE - 1) or size <= 0:
            raise SpecRuleBroken(f"map {hexval('iova', iova)} {hexval('size', size)} is not "
                                 "page aligned", "__iommu_map")
        if size == PAGE_SIZE:  # ``_pick_level`` gives 1, ``_install_run`` maps it whole
            return self._install_run(iova, paddr, size, 1, prot)
        return self._map_runs(iova, paddr, size, prot)

    def _map_runs(self, iova: int, paddr: int, size: int,
                  prot: int) -> Generator[Step, Any, int]:
        """``__domain_mapping``'s loop: one ``_install_run`` per run of leaves."""
        done = 0
        while done < size:
            level = self._pick_level(iova + done, paddr + done, size - done)
            done += yield from self._install_run(iova + done, paddr + done, size - done,
                                                 level, prot)
        return size

    def _pick_level(self, iova: int, paddr: int, remaining: int) -> int:
        """``hardware_largepage_caps``: both addresses aligned and the rest long enough."""
        for level, page in _leaf_pages(self.large_pages):
            if not (iova | paddr) & (page - 1) and remaining >= page:
                return level
        return 1

    def _install_run(self, iova: int, paddr: int, remaining: int, level: int,
                     prot: int) -> Generator[Step, Any, int]:
        """One pass of ``__domain_mapping``'s loop body from ``pte == NULL``: find the slot
        (``pfn_to_dma_pte``), then cmpxchg leaves from 0 into consecutive slots until the
        range ends, the next slot starts a new table page (``first_pte_in_page``) or less
        than a large page is left; then one ``domain_flush_cache`` of the run.  Bytes
        mapped.  The walk is this generator's own loop, not a nested one: each of its steps
        would otherwise pass through one more frame."""
        # ``pfn_to_dma_pte``: walk down, installing missing tables, to the slot of the leaf at
        # ``level``; a large page whose slot already holds a table falls back to the next
        # smaller size.  ``ss_index``, ``_present``, ``_is_leaf`` inlined: every map walks here.
        table, lvl, present = self.root, self.levels, self._present_bits
        shift = 3 + 9 * lvl  # ``level_shift(lvl)``
        while True:
            slot = table + 8 * ((iova >> shift) & 511)
            pte = yield _READS_PFN_TO_DMA_PTE[slot]
            if lvl == level:
                if not pte & present or lvl == 1 or pte & _PS:  # empty, or a leaf: the slot
                    break
                level -= 1  # a table is in the way of the large page
            if not pte & present:
                pte = yield from self._install_table(slot)
            elif lvl == 1 or pte & _PS:
                raise SpecRuleBroken(f"map {hexval('iova', iova)}: a large page at level {lvl} "
                                     "is already there", "__domain_mapping")
            table, lvl, shift = pte & _ADDR, lvl - 1, shift - 9
        first, page, done = slot, 1 << (3 + 9 * level), 0  # ``level_shift(level)``
        while True:
            # The leaf value: its address bits and the rest, which depend only on the stage,
            # level, prot and the domain's force-snoop state (read per leaf: another CPU may
            # set it meanwhile).
            new = ((paddr + done) & _ADDR) | leaf_bits(self.stage, level, prot, self.force_snoop)
            old = yield _set_leaf(slot, new)
            if old:
                raise SpecRuleBroken(f"DMA PTE for {hexval('iova', iova + done)} already set "
                                     f"(to {old:#x} not {new:#x})", "__domain_mapping")
            done += page
            slot += 8
            if done >= remaining or not slot & (PAGE_SIZE - 1) or remaining - done < page:
                break
        if not self.coherent:
            yield ClflushRange(addr=first, size=slot - first, why="domain_flush_cache")
        return done

    def _install_table(self, slot: int) -> Generator[Step, Any, int]:
        """A new table page, published with cmpxchg; the loser of a race frees its page."""
        page = yield from self._new_table("pfn_to_dma_pte")
        entry = self._table_entry(page)
        old = yield CpuCmpxchg(addr=slot, expected=0, new=entry, why="pfn_to_dma_pte")
        if old:
            yield FreePage(addr=page, what="page-table page", why="pfn_to_dma_pte: lost race")
            return old
        if not self.coherent:
            yield Clflush(addr=slot, why="domain_flush_cache")
        return entry

    # -- unmap -------------------------------------------------------------------------------------
    def unmap(self, iova: int, size: int) -> Generator[Step, Any, UnmapResult]:
        """``intel_iommu_unmap``: the size grows to the leaf at ``iova`` (a large page goes
        whole: its level is what ``pfn_to_dma_pte`` finds there), then ``domain_unmap``
        clears leaves and frees wholly covered tables."""
        # The leaf walk is this generator's own loop, not a nested one: each of its steps
        # would otherwise pass through one more frame.  ``ss_index``, ``_present`` and
        # ``_is_leaf`` inlined: every unmap walks here.
        table, lvl, present = self.root, self.levels, self._present_bits
        shift = 3 + 9 * lvl  # ``level_shift(lvl)``
        while True:
            pte = yield _READS_UNMAP[table + 8 * ((iova >> shift) & 511)]
            if not pte & present:
                break
            if lvl == 1 or pte & _PS:
                size = max(size, 1 << shift)
                break
            table, lvl, shift = pte & _ADDR, lvl - 1, shift - 9
        result = UnmapResult(size)
        # ``domain_unmap``: ``dma_pte_clear_level`` from the root.  While the range lies
        # inside one entry of a table (one page - each DMA-API unmap - does at every level),
        # that entry is the table's whole loop: read it, then clear it if it is covered, else
        # descend.  No parent has anything left to do (the next entry is past ``last``, none
        # cleared one), so no stack is kept, and the descent is this generator's own loop;
        # a range spanning entries goes on in ``_clear_level``.
        # Linux's ``pfn`` is ``start`` all the way down (``max(start, level_pfn)``, where
        # ``level_pfn`` is ``start`` rounded down), and the entry (``level_pfn`` to
        # ``level_pfn + level_size - 1``) is covered when ``start`` begins it and the range
        # reaches its end.
        start, last = iova >> 12, (iova + size - 1) >> 12
        level, table = self.levels, self.root
        shift = 9 * (level - 1)  # ``level_shift(level) - 12``: log2 of the pages an entry spans
        while start <= last and start >> shift == last >> shift:
            slot = table + 8 * ((start >> shift) & 511)
            pte = yield _READS_CLEAR_LEVEL[slot]
            if not pte & present:
                break
            span = 1 << shift
            if not start & (span - 1) and last >= start + span - 1:
                if level > 1 and not pte & _PS:
                    yield from self._list_pagetables(level - 1, pte & _ADDR, result)
                yield _clear_pte(slot)
                if not self.coherent:
                    yield ClflushRange(addr=slot, size=8, why="domain_flush_cache")
                break
            level, shift, table = level - 1, shift - 9, pte & _ADDR
        else:
            yield from self._clear_level(level, table, start, start, last, result)
        result.freed_tables = len(result.freelist)
        return result

    def _clear_level(self, level: int, table: int, pfn: int, start: int, last: int,
                     result: UnmapResult) -> Generator[Step, Any, None]:
        """``dma_pte_clear_level`` of a table whose part of [start, last] spans entries (the
        descent to it is ``unmap``'s): entries overlapping the range; a partly covered
        entry's table is cleared the same way (Linux recurses) before the next entry, and
        each table's cleared run is flushed once when the walk is not coherent.

        The recursion is an explicit stack of the suspended tables' loop state: one generator
        frame for the whole clear, where each step would otherwise pass through one frame
        per level on its way out."""
        present = self._present_bits  # ``_present`` and ``_is_leaf`` inlined: every unmap
        shift = 9 * (level - 1)  # ``level_shift(level) - 12``: log2 of the pages an entry spans
        pfn = max(start, pfn)
        idx = (pfn >> shift) & 511
        first = cleared = None
        suspended: list[tuple] = []  # (level, table, idx, pfn, first, cleared) of each parent
        while True:
            while idx < 512 and pfn <= last:
                slot = table + 8 * idx
                span = 1 << shift  # pages one entry covers
                level_pfn = pfn & -span
                pte = yield _READS_CLEAR_LEVEL[slot]
                pfn, idx = level_pfn + span, idx + 1  # where this table's loop goes on
                if not pte & present:
                    continue
                if start <= level_pfn and last >= pfn - 1:
                    if level > 1 and not pte & _PS:
                        yield from self._list_pagetables(level - 1, pte & _ADDR, result)
                    yield _clear_pte(slot)
                    first = slot if first is None else first
                    cleared = slot
                elif level > 1:  # descend: the child table's loop runs first
                    suspended.append((level, table, idx, pfn, first, cleared))
                    level, shift, table = level - 1, shift - 9, pte & _ADDR
                    pfn = max(start, level_pfn)
                    idx = (pfn >> shift) & 511
                    first = cleared = None
            if first is not None and not self.coherent:
                yield ClflushRange(addr=first, size=cleared + 8 - first, why="domain_flush_cache")
            if not suspended:
                return
            level, table, idx, pfn, first, cleared = suspended.pop()
            shift = 9 * (level - 1)

    def _list_pagetables(self, level: int, table: int,
                         result: UnmapResult) -> Generator[Step, Any, None]:
        """``dma_pte_list_pagetables``: this table page and every table below it."""
        result.freelist.append(table)
        if level == 1:
            return
        for idx in range(512):
            pte = yield _READS_LIST_PAGETABLES[table + 8 * idx]
            if _present(self.stage, pte) and not _is_leaf(pte, level):
                yield from self._list_pagetables(level - 1, pte & _ADDR, result)

    # -- tests -------------------------------------------------------------------------------------
    def lookup(self, memory, iova: int) -> tuple[int, int, int] | None:
        """(physical address, leaf level, leaf PTE) from the CPU view, or None if unmapped."""
        table, lvl = self.root, self.levels
        while True:
            pte = memory.cpu_load(table + 8 * ss_index(iova, lvl), 8)
            if not _present(self.stage, pte):
                return None
            if _is_leaf(pte, lvl):
                offset = iova & ((1 << level_shift(lvl)) - 1)
                return (pte & _ADDR & ~((1 << level_shift(lvl)) - 1)) | offset, lvl, pte
            table, lvl = pte & _ADDR, lvl - 1
