"""The page-lifecycle ledger every property judges against: each physical page's owner over time
(a named data page, a domain's page-table page at a level, a context/PASID table, the queue,
free), the mappings a domain granted, the devices' attachments, and every CPU store to a data
page - zeroing included (VT-d spec 6.5: software may reuse a page only once the hardware can no
longer reach it; Linux mm: a freed page goes to whoever allocates next).

The ledger travels inside the checker's ``System``: the set-up (boot, ``[[setup]]``) feeds it
through the same ``step``/``op_begin``/``op_done`` calls as the explored threads, so a mapping
or a page made at set-up counts exactly like one made by a thread.

Epochs: a page's epoch grows at each allocation; a domain's grant names the epoch in which it
mapped the page, so a page freed and handed to anyone else - even as another data page - is
no longer the domain's.

Not modelled: pages of orders above 0, ownership of pages outside the allocator's window,
the contents of pages other than data pages (their writers are the driver and the unit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtdsim.driver import steps as st
from vtdsim.hardware.memory import PAGE_SIZE

PAGE_MASK = ~(PAGE_SIZE - 1)
_TABLE_ADDR = ((1 << 52) - 1) & PAGE_MASK  # bits 51:12 of a table entry (SS and FS alike)
DATA = "data"
PGTABLE = "pgtable"
FREE = "free"
_KINDS = {"page-table page": PGTABLE, "data page": DATA}
# Ops that move a device (its RID, or one PASID) between domains: from their start to their end
# the device's translation may be blocked (Linux's RID attach is not hitless:
# device_block_translation / dmar_remove_one_dev_info run first).
MOVING_OPS = frozenset({"attach", "detach", "attach_blocking", "release", "set_dev_pasid",
                        "remove_dev_pasid"})
IOMMU_WRITE = 2


@dataclass(frozen=True)
class Owner:
    """Who a page belongs to: ``kind`` (data, pgtable, free, or the allocation's ``what``),
    ``name`` (the data page's name or the page table's domain), ``level`` (page tables),
    ``epoch`` (the allocation it belongs to)."""

    kind: str
    name: str = ""
    level: int = 0
    epoch: int = 0

    def describe(self) -> str:
        if self.kind == DATA:
            return f"data page {self.name!r}" if self.name else "a data page"
        if self.kind == PGTABLE:
            level = f" level {self.level}" if self.level else ""
            return f"a page-table page of {self.name}{level}" if self.name else "a page table"
        return "free" if self.kind == FREE else f"a {self.kind}"


@dataclass
class Mapping:
    page: int
    prot: int
    origin: str = ""  # the op that made it: "set-up map(...)" or "T0 map(...)"


@dataclass
class PageLedger:
    """Owners, grants, mappings, attachments and data contents of one execution."""

    owners: dict[int, Owner] = field(default_factory=dict)
    epochs: dict[int, int] = field(default_factory=dict)
    freed_at: dict[int, int] = field(default_factory=dict)  # page -> step of its last free
    grants: dict = field(default_factory=dict)  # (domain, page, epoch) -> the granting op
    mapped: dict[tuple[str, int], Mapping] = field(default_factory=dict)  # completed maps
    latest: dict[int, int] = field(default_factory=dict)  # data qword -> last value stored
    moving: dict[tuple, int] = field(default_factory=dict)  # (device, pasid) -> open moves
    history: dict[tuple, set] = field(default_factory=dict)  # (device, pasid) -> domains
    clock: int = 0  # set by the monitor before each step; -1 style "set-up" is step 0

    # -- owners -----------------------------------------------------------------------------
    def owner(self, addr: int) -> Owner:
        return self.owners.get(addr & PAGE_MASK, Owner("unknown"))

    def is_data(self, addr: int) -> bool:
        return self.owner(addr).kind == DATA

    def name_data(self, name: str, addr: int, *, fresh: bool) -> None:
        """``addr`` is the data page ``name`` (``fresh``: a new allocation, a new epoch)."""
        page = addr & PAGE_MASK
        if fresh:
            self.epochs[page] = self.epochs.get(page, 0) + 1
        self.owners[page] = Owner(DATA, name, 0, self.epochs.get(page, 0))

    def name_root(self, domain: str, addr: int, levels: int) -> None:
        page = addr & PAGE_MASK
        self.owners[page] = Owner(PGTABLE, domain, levels, self.epochs.get(page, 0))

    # -- steps (thread steps and set-up steps alike, after they were applied) ----------------
    def step(self, step: st.Step, reply, op, memory) -> None:
        kind = type(step)
        if kind is st.AllocPage and isinstance(reply, int):
            self._allocated(reply, step.what, op)
        elif kind is st.FreePage:
            self._freed(step.addr)
        elif kind is st.CpuCmpxchg:
            if reply == step.expected:
                self._stored(step.addr, 8, memory)
                if step.why == "pfn_to_dma_pte":
                    self._table_installed(step.addr, step.new)
        elif kind is st.CpuWrite or kind is st.CpuZero:
            self._stored(step.addr, step.size, memory)

    def _allocated(self, addr: int, what: str, op) -> None:
        page = addr & PAGE_MASK
        epoch = self.epochs.get(page, 0) + 1
        self.epochs[page] = epoch
        kind = _KINDS.get(what, what or "page")
        name = (op.args.get("domain", "") if op is not None else "") if kind == PGTABLE else ""
        self.owners[page] = Owner(kind, name, 0, epoch)
        self._forget_contents(page)

    def _freed(self, addr: int) -> None:
        page = addr & PAGE_MASK
        self.owners[page] = Owner(FREE, epoch=self.epochs.get(page, 0))
        self.freed_at[page] = self.clock
        self._forget_contents(page)

    def _table_installed(self, slot: int, entry: int) -> None:
        """``pfn_to_dma_pte`` published a new table in ``slot``: it is its parent's domain's
        table one level down."""
        parent = self.owner(slot)
        child = entry & _TABLE_ADDR
        if parent.kind == PGTABLE and self.owner(child).kind == PGTABLE:
            self.owners[child] = Owner(PGTABLE, parent.name, max(parent.level - 1, 0),
                                       self.epochs.get(child, 0))

    def _stored(self, addr: int, size: int, memory) -> None:
        """Every CPU store to a data page, zeroing too: the qwords' value as the CPU now sees
        them is what a later CPU read must return where coherency is promised."""
        if not self.is_data(addr):
            return
        for qword in range(addr & ~7, addr + size, 8):
            self.latest[qword] = memory.cpu_load(qword, 8)

    def dma_stored(self, addr: int, memory) -> None:
        if self.is_data(addr):
            self.latest[addr & ~7] = memory.dram_qword(addr & ~7)

    def _forget_contents(self, page: int) -> None:
        for qword in [q for q in self.latest if q & PAGE_MASK == page]:
            del self.latest[qword]

    # -- operations ---------------------------------------------------------------------------
    def op_begin(self, op, system, who: str = "set-up") -> None:
        """``who``: the thread running ``op`` ("set-up" for [[setup]] and the boot)."""
        kind = op.kind
        if kind in ("map", "dma_map"):
            # From here on a PTE may point at the page: the domain holds it in this epoch.
            page = system.pages[op["page"]]
            self.grants[(op["domain"], page, self.epochs.get(page, 0))] = \
                f"{who} {op.describe()}"
        elif kind in ("unmap", "dma_unmap"):
            for iova in _pages(op["iova"], op["size"]):
                self.mapped.pop((op["domain"], iova), None)
        if kind in MOVING_OPS and op.args.get("part", "all") != "program":
            key = _device_key(op)
            self.moving[key] = self.moving.get(key, 0) + 1
            if op.args.get("domain"):
                self.history.setdefault(key, set()).add(op["domain"])

    def op_done(self, op, value, system, who: str = "set-up") -> None:
        kind = op.kind
        if kind == "map" or (kind == "dma_map" and isinstance(value, int)):
            iova = op["iova"] if kind == "map" else value
            page = system.pages[op["page"]]
            prot = {"r": 1, "w": 2, "rw": 3}[op["prot"]]
            origin = f"{who} {op.describe()}"
            for i, first in enumerate(_pages(iova, op["size"])):
                self.mapped[(op["domain"], first)] = Mapping(page + i * PAGE_SIZE, prot, origin)
        elif kind == "alloc":
            self.name_data(op["page"], system.pages[op["page"]], fresh=False)
        if kind in MOVING_OPS and op.args.get("part", "all") != "prepare":
            key = _device_key(op)
            left = self.moving.get(key, 0) - 1
            if left > 0:
                self.moving[key] = left
            else:
                self.moving.pop(key, None)

    # -- judgements ---------------------------------------------------------------------------
    def domains_of(self, device: str, pasid: int | None) -> set:
        """Every domain the device (RID, or this PASID) was attached to so far."""
        return self.history.get((device, pasid), set())

    def foreign(self, addr: int, domains: set) -> Owner | None:
        """The page's owner if none of ``domains`` holds it (freed, reused by anyone, or never
        granted to them), else None: the DMA reached a page its domain owns."""
        owner = self.owner(addr)
        if owner.kind == DATA and any((d, addr & PAGE_MASK, owner.epoch) in self.grants
                                      for d in domains):
            return None
        return owner

    def maps(self, domain: str | None, iova: int, write: bool) -> Mapping | None:
        """The completed map of ``domain`` covering ``iova`` with the access's permission."""
        found = self.mapped.get((domain, iova & PAGE_MASK)) if domain else None
        if found is not None and found.prot & (IOMMU_WRITE if write else 1):
            return found
        return None

    def granted_by(self, addr: int, domains: set) -> str:
        """The op that last granted the page to one of ``domains`` (any epoch), or ""."""
        page = addr & PAGE_MASK
        found = [(e, origin) for (d, p, e), origin in self.grants.items()
                 if p == page and d in domains]
        return max(found)[1] if found else ""

    def in_transit(self, device: str, pasid: int | None) -> bool:
        return (device, pasid) in self.moving


def _device_key(op) -> tuple:
    pasid = op.args.get("pasid")
    return (op["device"], pasid if op.kind in ("set_dev_pasid", "remove_dev_pasid") else None)


def _pages(iova: int, size: int) -> range:
    return range(iova & PAGE_MASK, iova + size, PAGE_SIZE)
