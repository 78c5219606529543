"""Test helpers that build VT-d translation structures in a PhysicalMemory.

``Tables`` allocates zeroed 4 KiB pages and writes root, context, PASID and page-table entries
the way a driver would (CPU stores, clflushed unless ``flush=False``), using the layouts of
``vtdsim.hardware`` so the tests exercise the declared bit positions.
"""

from __future__ import annotations

from vtdsim.hardware.first_stage import FS_PTE, fs_index
from vtdsim.hardware.memory import PhysicalMemory
from vtdsim.hardware.pasid_table import (
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    pasid_dir_entry_addr,
    pasid_entry_addr,
)
from vtdsim.hardware.root_table import (
    CONTEXT_ENTRY,
    ROOT_ENTRY,
    SM_CONTEXT_ENTRY,
    SM_ROOT_ENTRY,
    context_entry_addr,
    root_entry_addr,
    sm_context_entry_addr,
)
from vtdsim.hardware.second_stage import SS_PTE, ss_index

PAGE = 4096


class Tables:
    """Allocator plus entry writers over one memory; ``flush`` clflushes every store."""

    def __init__(self, memory: PhysicalMemory, *, base: int = 0x10_0000, flush: bool = True):
        self.memory = memory
        self.next_page = base
        self.flush = flush
        self.rta = self.page()

    def page(self) -> int:
        addr = self.next_page
        self.next_page += PAGE
        return addr

    def write(self, addr: int, value: int, qwords: int = 1) -> None:
        for i in range(qwords):
            self.memory.cpu_store(addr + 8 * i, (value >> (64 * i)) & (2**64 - 1), 8)
            if self.flush:
                self.memory.clflush(addr + 8 * i)

    def read(self, addr: int, qwords: int = 1) -> int:
        return sum(self.memory.cpu_load(addr + 8 * i, 8) << (64 * i) for i in range(qwords))

    # -- legacy mode ------------------------------------------------------------------------
    def context_table(self, bus: int) -> int:
        """The legacy context table for ``bus``, creating and linking it if absent."""
        root = self.read(root_entry_addr(self.rta, bus), 2)
        if ROOT_ENTRY.get(root, "p"):
            return ROOT_ENTRY.get(root, "ctp") << 12
        ctp = self.page()
        self.write(root_entry_addr(self.rta, bus), ROOT_ENTRY.encode(p=1, ctp=ctp >> 12), 2)
        return ctp

    def set_context(self, sid: int, **fields: int) -> int:
        """Write a legacy context entry; returns its address.  Defaults: present, TT=00."""
        fields.setdefault("p", 1)
        if "ssptptr" in fields:
            fields["ssptptr"] >>= 12
        addr = context_entry_addr(self.context_table(sid >> 8), sid & 0xFF)
        self.write(addr, CONTEXT_ENTRY.encode(**fields), 2)
        return addr

    # -- scalable mode ----------------------------------------------------------------------
    def sm_context_table(self, sid: int) -> int:
        bus, devfn = sid >> 8, sid & 0xFF
        root = self.read(root_entry_addr(self.rta, bus), 2)
        upper = devfn >= 128
        present, ptr = ("up", "uctp") if upper else ("lp", "lctp")
        if SM_ROOT_ENTRY.get(root, present):
            return SM_ROOT_ENTRY.get(root, ptr) << 12
        ctp = self.page()
        root = SM_ROOT_ENTRY.replace(root, **{present: 1, ptr: ctp >> 12})
        self.write(root_entry_addr(self.rta, bus), root, 2)
        return ctp

    def set_sm_context(self, sid: int, **fields: int) -> int:
        """Write an SM context entry with a fresh PASID directory unless given."""
        fields.setdefault("p", 1)
        fields.setdefault("pasid_dir_ptr", self.page())
        fields["pasid_dir_ptr"] >>= 12
        addr = sm_context_entry_addr(self.sm_context_table(sid), sid & 0xFF)
        self.write(addr, SM_CONTEXT_ENTRY.encode(**fields), 4)
        return addr

    def pasid_dir(self, sid: int) -> int:
        ce = self.read(sm_context_entry_addr(self.sm_context_table(sid), sid & 0xFF), 4)
        return SM_CONTEXT_ENTRY.get(ce, "pasid_dir_ptr") << 12

    def set_pasid_entry(self, sid: int, pasid: int, **fields: int) -> int:
        """Write a PASID-table entry (creating its table); pointer fields are addresses."""
        dire_addr = pasid_dir_entry_addr(self.pasid_dir(sid), pasid)
        dire = self.read(dire_addr)
        if PASID_DIR_ENTRY.get(dire, "p"):
            table = PASID_DIR_ENTRY.get(dire, "pasid_table_ptr") << 12
        else:
            table = self.page()
            self.write(dire_addr, PASID_DIR_ENTRY.encode(p=1, pasid_table_ptr=table >> 12))
        fields.setdefault("p", 1)
        for ptr in ("ssptptr", "fsptptr"):
            if ptr in fields:
                fields[ptr] >>= 12
        addr = pasid_entry_addr(table, pasid)
        self.write(addr, PASID_ENTRY.encode(**fields), 8)
        return addr

    # -- page tables ----------------------------------------------------------------------------
    def ss_table(self, levels: int) -> SsTables:
        return SsTables(self, levels)

    def fs_table(self, levels: int, gpa_offset: int = 0) -> FsTables:
        return FsTables(self, levels, gpa_offset)


class _PageTables:
    """Shared walk-and-create logic; subclasses say how table and leaf entries look."""

    def __init__(self, tables: Tables, levels: int, gpa_offset: int = 0):
        self.t = tables
        self.levels = levels
        self.gpa_offset = gpa_offset  # entries hold host address - gpa_offset
        self.root = tables.page()

    def table_entry(self, table: int) -> int:
        raise NotImplementedError

    def next_table(self, pte: int) -> int | None:
        raise NotImplementedError

    def index(self, iova: int, level: int) -> int:
        raise NotImplementedError

    def pte_addr(self, iova: int, level: int = 1) -> int:
        """Address of the entry at ``level`` for ``iova``, creating tables above it."""
        table = self.root
        for lvl in range(self.levels, level, -1):
            addr = table + self.index(iova, lvl) * 8
            gpa = self.next_table(self.t.read(addr))
            if gpa is None:
                gpa = self.t.page() - self.gpa_offset
                self.t.write(addr, self.table_entry(gpa))
            table = gpa + self.gpa_offset
        return table + self.index(iova, level) * 8

    def set(self, iova: int, value: int, level: int = 1) -> int:
        addr = self.pte_addr(iova, level)
        self.t.write(addr, value)
        return addr

    @property
    def root_gpa(self) -> int:
        return self.root - self.gpa_offset


class SsTables(_PageTables):
    def table_entry(self, table: int) -> int:
        return SS_PTE.encode(r=1, w=1, addr=table >> 12)

    def next_table(self, pte: int) -> int | None:
        return SS_PTE.get(pte, "addr") << 12 if pte & 3 else None

    def index(self, iova: int, level: int) -> int:
        return ss_index(iova, level)

    def map(self, iova: int, hpa: int, level: int = 1, *, r: int = 1, w: int = 1,
            **fields: int) -> int:
        """Map one page of ``level`` (1: 4K, 2: 2M, 3: 1G); returns the PTE address."""
        pte = SS_PTE.encode(r=r, w=w, ps=int(level > 1), addr=hpa >> 12, **fields)
        return self.set(iova, pte, level)


class FsTables(_PageTables):
    def table_entry(self, table: int) -> int:
        return FS_PTE.encode(p=1, rw=1, us=1, a=1, addr=table >> 12)

    def next_table(self, pte: int) -> int | None:
        return FS_PTE.get(pte, "addr") << 12 if pte & 1 else None

    def index(self, iova: int, level: int) -> int:
        return fs_index(iova, level)

    def map(self, iova: int, out: int, level: int = 1, *, rw: int = 1, us: int = 1,
            a: int = 1, d: int = 0, **fields: int) -> int:
        """Map one page like Linux (P|U|A, RW|D when writable unless told otherwise)."""
        pte = FS_PTE.encode(p=1, rw=rw, us=us, a=a, d=d, ps=int(level > 1), addr=out >> 12,
                            **fields)
        return self.set(iova, pte, level)
