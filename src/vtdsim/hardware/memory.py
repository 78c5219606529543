"""Physical memory shared by the CPUs and DMA, with a write-back CPU cache (VT-d spec 6.1
on coherency, ECAP.C and snoop control).

Two views of one address space:

* DRAM - what a *non-snooped* access sees: a no-snoop DMA, or a page walk by a unit whose
  walks are not coherent (legacy ECAP.C=0; scalable mode without SMPWC/PWSNP).
* the CPU view - DRAM overlaid with the CPU cache lines.  CPU stores allocate a line and mark it
  dirty; ``clflush`` writes one line back and drops it; ``wbinvd`` does that for every line.
  A *snooped* DMA read sees the CPU view; a snooped DMA write updates DRAM and any cached copy.

The hardware may write a dirty line back at any moment (cache eviction): ``writeback_line``
exposes that freedom so a checker can enumerate it.

Write buffer (CAP.RWBF, spec 6.8): on units that need write-buffer flushing, a unit sets
``write_buffer = True``; every CPU store then stays *posted* (invisible to the unit's structure
reads through ``read_qword``) until ``flush_write_buffer`` - which the unit calls on GCMD.WBF and
on every invalidation, since any invalidation implicitly flushes the write buffer.

Not modelled: posting distinguishes no snoop attribute (a posted line reads as its CPU-view
pre-image for snooped and non-snooped structure reads alike); multiple CPU caches (one coherent
hierarchy stands for all CPUs); memory types (MTRR/PAT); partial-line write ordering inside one
store.
"""

from __future__ import annotations

import struct

from vtdsim.errors import ModelError, hexval

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
LINE_SIZE = 64
_PHYS_BITS = 52  # ``not addr >> _PHYS_BITS``: 0 <= addr < MAX_PHYS_ADDR, in one test
MAX_PHYS_ADDR = 1 << _PHYS_BITS  # x86 architectural limit on physical addresses

_Q = struct.Struct("<Q")
_Q_FROM = _Q.unpack_from
_LINE_MASK = LINE_SIZE - 1
_LAST_QWORD = LINE_SIZE - 8  # the last line offset a qword fits at
_L = struct.Struct("<L")
_INTS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: _L, 8: _Q}
_UNPACK = {size: fmt.unpack_from for size, fmt in _INTS.items()}
_PACK = {size: fmt.pack_into for size, fmt in _INTS.items()}
# count -> (its struct, the last line offset and the last address the qwords fit at)
_QWORDS = {count: (fmt, LINE_SIZE - fmt.size, MAX_PHYS_ADDR - fmt.size)
           for count, fmt in ((2, struct.Struct("<2Q")), (4, struct.Struct("<4Q")))}
_STORE_MASKS = {size: (1 << 8 * size) - 1 for size in (1, 2, 4, 8, 16, 32)}


class PhysicalMemory:
    """Sparse byte-addressable memory; unpopulated bytes read as zero."""

    def __init__(self) -> None:
        self._pages: dict[int, bytearray] = {}
        self._lines: dict[int, bytearray] = {}  # CPU cache: line address -> 64 bytes
        self._dirty: set[int] = set()
        self.write_buffer = False  # set by a unit with CAP.RWBF (spec 6.8)
        self._posted: dict[int, bytes] = {}  # line -> what the unit saw before the first store

    # -- DRAM ----------------------------------------------------------------------------------
    def _page(self, pfn: int) -> bytearray:
        page = self._pages.get(pfn)
        if page is None:
            page = self._pages[pfn] = bytearray(PAGE_SIZE)
        return page

    @staticmethod
    def _check(addr: int, n: int) -> None:
        if addr < 0 or n < 0 or addr + n > MAX_PHYS_ADDR:
            raise ModelError(f"physical access {hexval('addr', addr)} len={n} out of range")

    def _dram_read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while n:
            off = addr & (PAGE_SIZE - 1)
            chunk = min(n, PAGE_SIZE - off)
            page = self._pages.get(addr >> PAGE_SHIFT)
            out += page[off : off + chunk] if page is not None else bytes(chunk)
            addr += chunk
            n -= chunk
        return bytes(out)

    def _dram_write(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            off = addr & (PAGE_SIZE - 1)
            chunk = min(len(data) - pos, PAGE_SIZE - off)
            self._page(addr >> PAGE_SHIFT)[off : off + chunk] = data[pos : pos + chunk]
            addr += chunk
            pos += chunk

    def dram_qword(self, addr: int) -> int:
        """The qword DRAM holds (a non-snooped read)."""
        page = self._pages.get(addr >> PAGE_SHIFT)
        if page is None:
            return 0
        off = addr & (PAGE_SIZE - 1)
        if off > PAGE_SIZE - 8:
            return int.from_bytes(self._dram_read(addr, 8), "little")
        return _Q.unpack_from(page, off)[0]

    # -- the CPU view --------------------------------------------------------------------------
    def _allocate_line(self, line: int) -> bytearray:
        """Bring ``line`` into the CPU cache from DRAM (clean); a line never straddles a
        page."""
        page = self._pages.get(line >> PAGE_SHIFT)
        off = line & (PAGE_SIZE - 1)
        data = self._lines[line] = (bytearray(LINE_SIZE) if page is None
                                    else page[off : off + LINE_SIZE])
        return data

    def _line_for_store(self, line: int) -> bytearray:
        """The cached copy of ``line`` a CPU store is about to change: allocated on a miss,
        posted first under a write buffer, and marked dirty."""
        data = self._lines.get(line)
        if data is None:
            data = self._allocate_line(line)
        if self.write_buffer and line not in self._posted:
            self._posted[line] = bytes(data)
        self._dirty.add(line)
        return data

    def cpu_read(self, addr: int, n: int, *, allocate: bool = False) -> bytes:
        """What a CPU load returns.  ``allocate`` leaves the lines in the CPU cache (clean)."""
        self._check(addr, n)
        if not self._lines and not allocate:
            return self._dram_read(addr, n)
        out = bytearray()
        while n:
            line = addr & ~(LINE_SIZE - 1)
            off = addr - line
            chunk = min(n, LINE_SIZE - off)
            data = self._lines.get(line)
            if data is None and allocate:
                data = self._allocate_line(line)
            out += data[off : off + chunk] if data is not None else self._dram_read(addr, chunk)
            addr += chunk
            n -= chunk
        return bytes(out)

    def cpu_write(self, addr: int, data: bytes) -> None:
        """A CPU store: lands in the (write-back) CPU cache and marks the lines dirty."""
        self._check(addr, len(data))
        pos = 0
        while pos < len(data):
            line = addr & ~(LINE_SIZE - 1)
            off = addr - line
            chunk = min(len(data) - pos, LINE_SIZE - off)
            self._line_for_store(line)[off : off + chunk] = data[pos : pos + chunk]
            addr += chunk
            pos += chunk

    def cpu_load(self, addr: int, size: int) -> int:
        """A CPU load of a ``size``-byte little-endian integer.  One within a line (table
        entries, status words: nearly all) unpacks in place from the cached line or the DRAM
        page; anything else reads the bytes.  (Within a line, ``addr < MAX_PHYS_ADDR`` is
        ``addr + size <= MAX_PHYS_ADDR``: the limit is line-aligned.)"""
        off = addr & _LINE_MASK
        if size == 8 and not addr & 7:  # an aligned qword - a table entry: never straddles
            unpack = _Q_FROM
        elif (unpack := _UNPACK.get(size)) is None or off + size > LINE_SIZE:
            return int.from_bytes(self.cpu_read(addr, size), "little")
        if not addr >> _PHYS_BITS:  # ``0 <= addr < MAX_PHYS_ADDR``
            line = self._lines.get(addr - off)
            if line is not None:
                return unpack(line, off)[0]
            page = self._pages.get(addr >> PAGE_SHIFT)
            return 0 if page is None else unpack(page, addr & (PAGE_SIZE - 1))[0]
        return int.from_bytes(self.cpu_read(addr, size), "little")

    def cpu_load_qwords(self, addr: int, count: int) -> tuple[int, ...]:
        """``count`` consecutive qwords as CPU loads.  Two or four within one line (a 128- or
        256-bit queue slot, naturally aligned) unpack in one go from the cached line or the
        DRAM page; anything else loads qword by qword."""
        packed = _QWORDS.get(count)
        off = addr & _LINE_MASK
        if packed is None or off > packed[1] or not 0 <= addr <= packed[2]:
            return tuple(self.cpu_load(addr + 8 * i, 8) for i in range(count))
        fmt = packed[0]
        line = self._lines.get(addr - off)
        if line is not None:
            return fmt.unpack_from(line, off)
        page = self._pages.get(addr >> PAGE_SHIFT)
        return (0,) * count if page is None else fmt.unpack_from(page, addr & (PAGE_SIZE - 1))

    def cpu_store(self, addr: int, value: int, size: int) -> None:
        """A CPU store of ``value`` as a ``size``-byte little-endian integer (truncated to it).
        One within a line (an entry, a PTE, a 16- or 32-byte descriptor) goes straight into
        the line - a line already cached and dirty with no write buffer to post to needs no
        ``_line_for_store`` - anything else stores the bytes."""
        mask = _STORE_MASKS.get(size)
        value &= (1 << 8 * size) - 1 if mask is None else mask
        off = addr & _LINE_MASK
        if off + size > LINE_SIZE or not 0 <= addr < MAX_PHYS_ADDR:
            self.cpu_write(addr, value.to_bytes(size, "little"))
            return
        line = addr - off
        cached = self._lines.get(line)
        if cached is None or self.write_buffer or line not in self._dirty:
            cached = self._line_for_store(line)
        pack = _PACK.get(size)
        if pack is not None:
            pack(cached, off, value)
        else:
            cached[off : off + size] = value.to_bytes(size, "little")

    def clflush(self, addr: int) -> None:
        """Write back (if dirty) and invalidate the line holding ``addr``."""
        line = addr & ~(LINE_SIZE - 1)
        self.writeback_line(line)
        self._lines.pop(line, None)

    def writeback_line(self, line: int) -> None:
        """Write a dirty line back to DRAM, keeping it cached (clean).  Hardware may do this at
        any moment; software does it through clflush/wbinvd."""
        if line in self._dirty:
            off = line & (PAGE_SIZE - 1)  # a line never straddles a page
            self._page(line >> PAGE_SHIFT)[off : off + LINE_SIZE] = self._lines[line]
            self._dirty.discard(line)

    def wbinvd(self) -> None:
        """Write back and invalidate every CPU cache line."""
        for line in sorted(self._dirty):
            self.writeback_line(line)
        self._lines.clear()

    def dirty_lines(self) -> list[int]:
        return sorted(self._dirty)

    def cached_lines(self) -> list[int]:
        return sorted(self._lines)

    # -- the device side -----------------------------------------------------------------------
    def dma_read(self, addr: int, n: int, *, snoop: bool = True) -> bytes:
        """A device read; snooped reads see the CPU cache, non-snooped ones only DRAM."""
        self._check(addr, n)
        return self.cpu_read(addr, n) if snoop else self._dram_read(addr, n)

    def dma_write(self, addr: int, data: bytes, *, snoop: bool = True) -> None:
        """A device write.  Snooped: DRAM and any cached copy are updated (coherent).
        Non-snooped: DRAM only - a line the CPU still caches now holds stale data."""
        self._check(addr, len(data))
        self._dram_write(addr, data)
        if not snoop or not self._lines:
            return
        end = addr + len(data)
        line = addr & ~(LINE_SIZE - 1)
        while line < end:
            cached = self._lines.get(line)
            if cached is not None:
                lo, hi = max(addr, line), min(end, line + LINE_SIZE)
                cached[lo - line : hi - line] = data[lo - addr : hi - addr]
            line += LINE_SIZE

    def flush_write_buffer(self) -> None:
        """Make every posted store visible to the unit (GCMD.WBF, or any invalidation)."""
        self._posted.clear()

    def posted_lines(self) -> list[int]:
        return sorted(self._posted)

    def read_qword(self, addr: int, snoop: bool = True) -> int:
        """A hardware (page-walk, descriptor fetch) qword read.  Fast path for table walks
        (one on every IOTLB miss): the masks are constants, the offset computed once, and
        ``snoop`` may be passed by position (a keyword costs the call a name match)."""
        off = addr & _LINE_MASK
        if self._posted:
            pre = self._posted.get(addr - off)
            if pre is not None and off <= _LAST_QWORD:
                return _Q_FROM(pre, off)[0]
        if snoop and self._lines:
            data = self._lines.get(addr - off)
            if data is not None and off <= _LAST_QWORD:
                return _Q_FROM(data, off)[0]
        if off > _LAST_QWORD:  # straddles a line, perhaps a page
            return self.dram_qword(addr)
        # dram_qword within one line (so one page), inlined: a call more on every walk read.
        page = self._pages.get(addr >> PAGE_SHIFT)
        return 0 if page is None else _Q_FROM(page, addr & (PAGE_SIZE - 1))[0]

    def read_qwords(self, addr: int, count: int, *, snoop: bool = True) -> tuple[int, ...]:
        """``count`` consecutive ``read_qword``s in one pass (a walk scanning a table)."""
        if self._posted:
            return tuple(self.read_qword(addr + 8 * i, snoop=snoop) for i in range(count))
        data = self.cpu_read(addr, 8 * count) if snoop else self._dram_read(addr, 8 * count)
        return struct.unpack_from(f"<{count}Q", data)

    def write_qword(self, addr: int, value: int, *, snoop: bool = True) -> None:
        """A hardware qword write (A/D-bit updates)."""
        self._dma_store(_Q, addr, value & 0xFFFF_FFFF_FFFF_FFFF, snoop)

    def write_dword(self, addr: int, value: int, *, snoop: bool = True) -> None:
        """A hardware dword write (invalidation-wait status writes)."""
        self._dma_store(_L, addr, value & 0xFFFF_FFFF, snoop)

    def _dma_store(self, fmt: struct.Struct, addr: int, value: int, snoop: bool) -> None:
        """``dma_write`` of one naturally aligned dword or qword, packed in place: it cannot
        straddle a line or a page."""
        n = fmt.size
        if addr & (n - 1) or not 0 <= addr <= MAX_PHYS_ADDR - n:
            self.dma_write(addr, value.to_bytes(n, "little"), snoop=snoop)
            return
        page = self._pages.get(addr >> PAGE_SHIFT)  # ``_page``'s populated case inline
        fmt.pack_into(page if page is not None else self._page(addr >> PAGE_SHIFT),
                      addr & (PAGE_SIZE - 1), value)
        if snoop and self._lines:
            cached = self._lines.get(addr & ~(LINE_SIZE - 1))
            if cached is not None:
                fmt.pack_into(cached, addr & (LINE_SIZE - 1), value)

    # -- bookkeeping ----------------------------------------------------------------------------
    def populated_pages(self) -> int:
        return len(self._pages)

    def snapshot(self) -> tuple:
        """A hashable digest of the whole state (used by the checker's state hashing)."""
        pages = tuple(sorted((pfn, bytes(p)) for pfn, p in self._pages.items() if any(p)))
        lines = tuple(sorted((ln, bytes(d), ln in self._dirty) for ln, d in self._lines.items()))
        posted = tuple(sorted(self._posted.items()))
        return pages, lines, posted
