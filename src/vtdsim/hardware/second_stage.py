"""Second-stage page tables: the SS PTE layout and the SS walker (VT-d spec 9.8, 3.7, 10.1).

Legacy mode and scalable-mode PGTT=SS/nested use the same 3-, 4- or 5-level format: 512
eight-byte entries per 4 KiB table, 9 IOVA bits per level, large pages at level 2 (2 MiB) and
3 (1 GiB) when CAP.SLLPS allows them.  An entry is present iff R or W is set (Linux
``dma_pte_present``); effective R/W/X are the AND along the walk (3.7.1).

The walker is a pure function of the qwords it reads: it returns the leaf (or why it stopped)
plus the accessed/dirty updates the hardware must make, so the flow can both translate and
enumerate the fills hardware *could* make without touching memory.

Reserved versus ignored (10.1, QEMU ``vtd_spte_rsvd``): address bits at or above HAW, PS at
level 4/5, PS at a level whose page size SLLPS lacks, the low address
bits of a large page, bit 11 and bit 62 of non-leaf entries, leaf SNP (bit 11) in legacy mode
without ECAP.SC, and leaf TM (bit 62) without ECAP.DT (the TM rule is unconfirmed; QEMU
reserved it without DT).  Bits 6:3, 10, 61:52 and 63 are ignored; X is ignored without SSEE.

Not modelled: memory types (EMT/IPAT need ECAP.MTS), 512 GiB / 1 TiB pages (SLLPS bits
36/37 are unconfirmed), access errors (our memory never fails a read).
"""

from __future__ import annotations

from collections.abc import Callable

from vtdsim.hardware.bitfield import F, Layout
from vtdsim.records import record

SS_PTE = Layout(
    "ss_pte",
    64,
    [
        F("r", 0),
        F("w", 1),
        F("x", 2, doc="execute; honoured only with SSEE"),
        F("emt", 5, 3, doc="extended memory type (MTS)"),
        F("ipat", 6, doc="ignore PAT (MTS)"),
        F("ps", 7, doc="page size: leaf at level 2/3"),
        F("a", 8, doc="accessed (SSADE)"),
        F("d", 9, doc="dirty (SSADE)"),
        F("snp", 11, doc="force snoop (ECAP.SC)"),
        F("addr", 51, 12),
        F("tm", 62, doc="transient mapping (device-TLB hint)"),
    ],
    spec="VT-d 9.8 / 10.1",
    reserved="ignored",  # 10, 61:52, 63 are available to software
)

LEVEL_BITS = 9
ENTRIES_PER_TABLE = 1 << LEVEL_BITS
PAGE_SHIFT = 12
PAGE_SIZES = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}  # leaf level -> bytes (4K, 2M, 1G)

_R, _W, _X, _PS, _A, _D = 1, 2, 4, 0x80, 0x100, 0x200
_SNP, _TM = 1 << 11, 1 << 62
_ADDR = SS_PTE["addr"].in_place


def level_shift(level: int) -> int:
    """log2 of the region one entry at ``level`` covers (12, 21, 30, 39, 48)."""
    return PAGE_SHIFT + LEVEL_BITS * (level - 1)


def page_size(level: int) -> int:
    return 1 << level_shift(level)


def ss_index(iova: int, level: int) -> int:
    """Index into the level-``level`` table for ``iova`` (10.1: level 1 uses bits 20:12)."""
    return (iova >> level_shift(level)) & (ENTRIES_PER_TABLE - 1)


def levels_from_aw(aw: int) -> int:
    """Context/PASID-entry AW encoding to table depth: 1 -> 3, 2 -> 4, 3 -> 5 (9.3)."""
    return aw + 2


def aw_from_levels(levels: int) -> int:
    return levels - 2


def address_width(levels: int) -> int:
    """Input-address width a table of ``levels`` levels translates: 39, 48 or 57 bits."""
    return PAGE_SHIFT + LEVEL_BITS * levels


def sagaw_bit(levels: int) -> int:
    """CAP.SAGAW bit (within the field) for a ``levels``-level table: AGAW index a = levels-2."""
    return 1 << aw_from_levels(levels)


@record
class SsRules:
    """What the unit's capabilities and the referencing entry say about SS entries."""

    haw: int  # host address width: output bits at or above it are reserved
    large_levels: tuple[int, ...] = ()  # levels allowed to hold a leaf with PS=1 (SLLPS)
    snp_reserved: bool = False  # legacy mode without ECAP.SC
    tm_reserved: bool = True  # without ECAP.DT (unconfirmed; QEMU's pre-2024 rule)
    ssee: bool = False  # honour X
    ad: bool = False  # SSADE: set A along the walk, D in the leaf on writes
    snoop: bool = True  # walk reads/updates are snooped (A/D needs a snooped walk: 0x7C)


@record
class SsTable:
    """A non-leaf entry the walk went through: what a paging-structure cache may hold.
    ``level`` is the level of the *table it points to*."""

    level: int
    table: int
    read: bool
    write: bool
    exe: bool


@record
class SsWalk:
    """Outcome of one SS walk.  ``fault`` is None, "not_present", "reserved" or "ad_nosnoop";
    on success ``level``/``page`` describe the leaf (page = output page base)."""

    fault: str | None
    level: int
    page: int = 0
    read: bool = False
    write: bool = False
    exe: bool = False
    snp: bool = False
    tm: bool = False
    tables: tuple[SsTable, ...] = ()
    ad_writes: tuple[tuple[int, int], ...] = ()  # (pte address, new value)


def entry_reserved(pte: int, level: int, top: int, leaf: bool, rules: SsRules) -> int:
    """Reserved bits set in ``pte`` found at ``level`` of a ``top``-level table."""
    rsv = pte & _ADDR & ~((1 << rules.haw) - 1)
    if level >= 4:
        # SL-PML4E/PML5E: PS must be 0 (no 512 GiB pages).  A 3-level table's top is an
        # SL-PDPE, where PS=1 maps 1 GiB as at any level 3 (QEMU vtd_spte_rsvd[3] agrees).
        rsv |= pte & _PS
    if not leaf:
        return rsv | (pte & (_SNP | _TM))
    if level > 1:
        rsv |= pte & ((page_size(level) - 1) & ~0xFFF)  # large-page address alignment
        if level not in rules.large_levels:
            rsv |= pte & _PS
    if rules.snp_reserved:
        rsv |= pte & _SNP
    if rules.tm_reserved:
        rsv |= pte & _TM
    return rsv


def is_leaf(pte: int, level: int) -> bool:
    return level == 1 or bool(pte & _PS)


def walk_ss(
    read: Callable[[int], int],
    iova: int,
    top: int,
    levels: int,
    rules: SsRules,
    *,
    start: SsTable | None = None,
    write: bool = False,
) -> SsWalk:
    """Walk from table ``top`` (``levels`` deep) or from a cached table ``start`` (a PSC hit).

    ``write`` only decides whether D is set under SSADE; permission checks against the
    request are the caller's (the leaf and its permissions may be cached either way).
    """
    level, table = (start.level, start.table) if start else (levels, top)
    r, w, x = (start.read, start.write, start.exe) if start else (True, True, True)
    tables: list[SsTable] = []
    ad_writes: list[tuple[int, int]] = []
    while True:
        addr = table + ss_index(iova, level) * 8
        pte = read(addr)
        if not pte & (_R | _W):
            return SsWalk("not_present", level, tables=tuple(tables))
        leaf = is_leaf(pte, level)
        if entry_reserved(pte, level, levels, leaf, rules):
            return SsWalk("reserved", level, tables=tuple(tables))
        r, w = r and bool(pte & _R), w and bool(pte & _W)
        x = x and (bool(pte & _X) or not rules.ssee)
        if rules.ad:
            new = pte | _A | (_D if leaf and write and w else 0)
            if new != pte:
                if not rules.snoop:
                    return SsWalk("ad_nosnoop", level, tables=tuple(tables))
                ad_writes.append((addr, new))
        if leaf:
            return SsWalk(
                None, level, pte & _ADDR & ~(page_size(level) - 1), r, w, x,
                bool(pte & _SNP), bool(pte & _TM), tuple(tables), tuple(ad_writes),
            )
        level -= 1
        table = pte & _ADDR
        tables.append(SsTable(level, table, r, w, x))


# Fault reasons for SS outcomes (spec 8 / 7.1 fault-condition tables).  Legacy mode has no
# "not present" reason for paging entries: R=W=0 fails the request's permission (0x5/0x6).
# Scalable mode: R=W=0 is SSS.2 (0x79, Linux dmar.c "Read/Write permission error in
# second-level paging entry"); a present translation lacking the permission is SGN 0x85/0x86
# (what QEMU's FS walker also uses for writes).  The SM split is our reading of the tables
# and is unconfirmed against the spec text.
LEGACY_REASONS = {"reserved": 0xC, "beyond": 0x4}
SM_REASONS = {"not_present": 0x79, "reserved": 0x7A, "ad_nosnoop": 0x7C, "beyond": 0x83}


def ss_fault_reason(kind: str, scalable: bool, write: bool) -> int:
    """Fault reason for an SS walk outcome ``kind`` ("permission" for a denied access)."""
    if scalable:
        if kind == "permission":
            return 0x85 if write else 0x86
        return SM_REASONS[kind]
    if kind in ("not_present", "permission"):
        return 0x5 if write else 0x6
    return LEGACY_REASONS[kind]
