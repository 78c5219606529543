"""First-stage page tables: the FS (x86-64 paging) PTE layout and walker (VT-d spec 9.7, 3.6).

4- or 5-level x86-64 paging selected by the PASID entry's FSPM.  The input must be canonical;
a user request (no PRIV) needs U/S=1 at every level; a write needs R/W=1 at every level (for
supervisor requests only with WPE); XD is honoured with NXE.  Hardware sets A at every level
and D in the leaf on a write, with atomic updates; the walker returns those updates so the
caller applies them (or, when enumerating possible fills, defers them to the fill).

In nested translation (PGTT=011) every FS table address is guest-physical: the walker asks
a ``table_hpa`` callback (the flow's SS translation) for the host address of each table and
whether its entry may be read and, for A/D updates, written (faults 0x74-0x77).

Reserved (9.7, x86 paging): address bits at or above HAW, PS in PML5E/PML4E, PS in a PDPTE
without CAP.FS1GP, the low address bits of a large page (bit 12 is PAT there), XD without
NXE (as x86 with EFER.NXE=0).  Bits 9, 11 and 62:52 are ignored; D and G are ignored in
non-leaf entries.

Not modelled: SMEP, protection keys, memory types (PWT/PCD/PAT), access errors (our memory
never fails), failed atomic updates (0x91: an update of our memory cannot fail).
"""

from __future__ import annotations

from collections.abc import Callable

from vtdsim.hardware.bitfield import F, Layout
from vtdsim.hardware.second_stage import level_shift, page_size, ss_index
from vtdsim.records import record

FS_PTE = Layout(
    "fs_pte",
    64,
    [
        F("p", 0),
        F("rw", 1),
        F("us", 2),
        F("pwt", 3),
        F("pcd", 4),
        F("a", 5),
        F("d", 6, doc="dirty (leaf); ignored in non-leaf entries"),
        F("ps", 7, doc="page size (PDPTE/PDE); PAT in a 4K PTE"),
        F("g", 8, doc="global (leaf); ignored by the IOMMU"),
        F("ea", 10, doc="extended accessed (EAFE)"),
        F("addr", 51, 12),
        F("xd", 63, doc="execute disable (NXE)"),
    ],
    spec="VT-d 9.7 / 10.2",
    reserved="ignored",  # 9, 11, 62:52 are available to software
)

_P, _RW, _US, _A, _D, _PS, _G, _EA = 1, 2, 4, 0x20, 0x40, 0x80, 0x100, 0x400
_XD = 1 << 63
_ADDR = FS_PTE["addr"].in_place

# FS fault reasons (spec 8; QEMU VTD_FR_FS_*, Linux dmar.c SM strings).
FR_FS_NOT_PRESENT = 0x71
FR_FS_RESERVED = 0x72
FR_FS_NON_CANONICAL = 0x80
FR_FS_US = 0x81
FR_EXECUTE = 0x82
FR_SM_WRITE = 0x85
FR_FS_AD_NOSNOOP = 0x90

fs_index = ss_index  # x86-64 paging indexes 9 bits per level exactly like the SS format


def fs_levels(fspm: int) -> int:
    """FSPM 00 -> 4-level, 01 -> 5-level (9.6); other values are invalid (fault 0x5B)."""
    return {0: 4, 1: 5}.get(fspm, 0)


def is_canonical(iova: int, levels: int) -> bool:
    """Bits 63:(w-1) all equal, w = 48 or 57 (fault 0x80 otherwise)."""
    top = iova >> (level_shift(levels) + 8)  # bits 63:47 (4-level) or 63:56 (5-level)
    return top in (0, (1 << (64 - level_shift(levels) - 8)) - 1)


@record
class FsRules:
    """The PASID entry's and the unit's FS controls."""

    haw: int
    fs1gp: bool = False
    nxe: bool = False
    wpe: bool = False
    eafe: bool = False
    snoop: bool = True  # walk is snooped; an A/D update on a non-snooped walk faults 0x90


@record
class FsTable:
    """A non-leaf FS entry passed (host address of the table it points to, cumulative
    permissions); ``level`` is the level of the table pointed to.  ``gpa``: in nested mode the
    table's guest-physical address, which an A/D update of an entry in it must translate with
    write permission through the second stage (spec 6.2.5: A/D setting in nested mode is
    "subject to write permission checks at second-stage translation"); None otherwise."""

    level: int
    table: int
    write: bool
    user: bool
    exe: bool
    gpa: int | None = None


@record
class FsWalk:
    """Outcome of one FS walk: ``fault`` is 0 or a fault reason; on success ``page`` is the
    output page base (guest-physical in nested mode) of a ``level`` leaf."""

    fault: int
    level: int
    page: int = 0
    write: bool = False
    exe: bool = False
    tables: tuple[FsTable, ...] = ()
    ad_writes: tuple[tuple[int, int], ...] = ()
    global_: bool = False  # leaf G bit (spares the entry from PASID-selective invalidation)
    dirty: bool = False  # leaf D once this walk's updates are made


# table_hpa(gpa, top, ad_update) -> (hpa, 0) or (0, fault reason)
TableHpa = Callable[[int, bool, bool], tuple[int, int]]


def entry_reserved(pte: int, level: int, leaf: bool, rules: FsRules) -> int:
    rsv = pte & _ADDR & ~((1 << rules.haw) - 1)
    if not rules.nxe:
        rsv |= pte & _XD
    if level >= 4 or (level == 3 and not rules.fs1gp):
        rsv |= pte & _PS
    if leaf and level > 1:
        rsv |= pte & ((page_size(level) - 1) & ~0x1FFF)  # bit 12 is PAT in large pages
    return rsv


def _access_fault(leaf_write: bool, user: bool, exe: bool, req: tuple[bool, bool, bool],
                  rules: FsRules) -> int:
    """Check the request (write, priv, exe) against cumulative permissions (3.6.1)."""
    write, priv, execute = req
    if not priv and not user:
        return FR_FS_US
    if write and not leaf_write and (not priv or rules.wpe):
        return FR_SM_WRITE
    if execute and not exe:
        return FR_EXECUTE
    return 0


def walk_fs(
    read: Callable[[int], int],
    iova: int,
    fsptptr: int,
    levels: int,
    rules: FsRules,
    *,
    write: bool = False,
    priv: bool = False,
    exe: bool = False,
    start: FsTable | None = None,
    table_hpa: TableHpa | None = None,
) -> FsWalk:
    """Walk from ``fsptptr`` (or a cached table ``start``) for a request (write, priv, exe).

    Permission checks are done here, unlike the SS walker, because U/S depends on the
    request's privilege and the IOTLB entry does not record it.  Cached tables (``start``,
    ``FsTable.table``) hold host addresses, also in nested mode.
    """
    if not is_canonical(iova, levels):
        return FsWalk(FR_FS_NON_CANONICAL, levels)
    if start is not None:
        level, table, gpa = start.level, start.table, start.gpa
        w, u, x = start.write, start.user, start.exe
    else:
        level, table, gpa = levels, fsptptr, fsptptr
        w, u, x = True, True, True
        if table_hpa is not None:
            table, reason = table_hpa(fsptptr, True, False)
            if reason:
                return FsWalk(reason, level)
    tables: list[FsTable] = []
    ad_writes: list[tuple[int, int]] = []
    while True:
        addr = table + fs_index(iova, level) * 8
        pte = read(addr)
        if not pte & _P:
            return FsWalk(FR_FS_NOT_PRESENT, level, tables=tuple(tables))
        leaf = level == 1 or bool(pte & _PS and level <= 3)
        if entry_reserved(pte, level, leaf, rules):
            return FsWalk(FR_FS_RESERVED, level, tables=tuple(tables))
        w, u = w and bool(pte & _RW), u and bool(pte & _US)
        x = x and not (rules.nxe and pte & _XD)
        if leaf:
            fault = _access_fault(w, u, x, (write, priv, exe), rules)
            if fault:
                return FsWalk(fault, level, tables=tuple(tables))
        new = pte | _A | (_EA if rules.eafe else 0) | (_D if leaf and write else 0)
        if new != pte:
            fault = _ad_update_fault(rules, table_hpa, gpa, level == levels)
            if fault:
                return FsWalk(fault, level, tables=tuple(tables))
            ad_writes.append((addr, new))
        if leaf:
            base = pte & _ADDR & ~(page_size(level) - 1)
            return FsWalk(0, level, base, w, x, tuple(tables), tuple(ad_writes),
                          bool(pte & _G), bool(new & _D))
        level -= 1
        table = gpa = pte & _ADDR
        if table_hpa is not None:
            table, reason = table_hpa(gpa, False, False)
            if reason:
                return FsWalk(reason, level, tables=tuple(tables))
        tables.append(FsTable(level, table, w, u, x, gpa if table_hpa is not None else None))


def _ad_update_fault(rules: FsRules, table_hpa: TableHpa | None, gpa: int | None,
                     top: bool) -> int:
    """Why an A/D store cannot be made: a non-snooped walk (0x90), or in nested mode SS
    denying the write to the guest-physical table (0x77).  A walk resuming from a cached
    combined (nested) entry knows the table's guest-physical address from ``FsTable.gpa``."""
    if not rules.snoop:
        return FR_FS_AD_NOSNOOP
    if table_hpa is None or gpa is None:
        return 0
    return table_hpa(gpa, top, True)[1]
