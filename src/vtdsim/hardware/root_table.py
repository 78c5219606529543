"""Root and context entries, legacy and scalable mode (VT-d spec 9.1-9.4, 3.4).

The root table (RTADDR, 256 x 16 B) is indexed by bus.  A legacy root entry points to a
context table of 256 x 16 B entries indexed by devfn.  A scalable-mode root entry has two
halves: the lower one points to the context table for devfn 0-127, the upper one for devfn
128-255, each holding 128 x 32 B scalable-mode context entries.

Reserved bits include every pointer bit at or above the host address width (HAW): spec 9.x
marks "HAW:63" of each pointer field reserved.

Not modelled: TTM=11 (abort-DMA mode) root entries, extended-context (rev 2.x ECS) formats.
"""

from __future__ import annotations

from vtdsim.hardware.bitfield import F, Layout

ROOT_ENTRY = Layout(
    "root_entry",
    128,
    [F("p", 0), F("ctp", 63, 12, doc="context-table pointer")],
    spec="VT-d 9.2 (legacy root entry)",
)

SM_ROOT_ENTRY = Layout(
    "sm_root_entry",
    128,
    [
        F("lp", 0, doc="lower present: devfn 0-127"),
        F("lctp", 63, 12),
        F("up", 64, doc="upper present: devfn 128-255"),
        F("uctp", 127, 76),
    ],
    spec="VT-d 9.2 (scalable-mode root entry)",
)

CONTEXT_ENTRY = Layout(
    "context_entry",
    128,
    [
        F("p", 0),
        F("fpd", 1, doc="fault processing disable"),
        F("tt", 3, 2, doc="translation type: 00 SS, 01 SS+ATS, 10 pass-through"),
        F("ssptptr", 63, 12),
        F("aw", 66, 64, doc="1: 39-bit/3-level, 2: 48/4, 3: 57/5"),
        # 70:67 are ignored (available to software), not reserved: VT-d 9.3, VirtualBox
        # VTD_BF_1_CONTEXT_ENTRY_IGN_6_3.
        F("avail", 70, 67, doc="ignored by hardware"),
        F("did", 87, 72),
    ],
    spec="VT-d 9.3",
)

SM_CONTEXT_ENTRY = Layout(
    "sm_context_entry",
    256,
    [
        F("p", 0),
        F("fpd", 1),
        F("dte", 2, doc="device-TLB (ATS) enable"),
        F("paside", 3, doc="requests with PASID allowed"),
        F("pre", 4, doc="page requests allowed"),
        F("pdts", 11, 9, doc="PASID directory has 2^(pdts+7) entries"),
        F("pasid_dir_ptr", 63, 12),
        F("rid_pasid", 83, 64),
        F("rid_priv", 84),
    ],
    spec="VT-d 9.4",
)

# Translation types of the legacy context entry (9.3).
TT_SS = 0b00
TT_SS_ATS = 0b01
TT_PASS_THROUGH = 0b10

ROOT_ENTRY_SIZE = 16
CONTEXT_ENTRY_SIZE = 16
SM_CONTEXT_ENTRY_SIZE = 32
QWORD = 0xFFFF_FFFF_FFFF_FFFF


def address_reserved(pointer: int, haw: int) -> int:
    """The bits of a 64-bit pointer field at or above HAW (reserved: "HAW:63" in 9.2-9.6)."""
    return pointer & ~((1 << haw) - 1) & QWORD


def root_entry_addr(rta: int, bus: int) -> int:
    return rta + bus * ROOT_ENTRY_SIZE


def context_entry_addr(ctp: int, devfn: int) -> int:
    """Legacy: 256 x 16 B entries indexed by devfn (9.1)."""
    return ctp + devfn * CONTEXT_ENTRY_SIZE


def sm_context_entry_addr(ctp: int, devfn: int) -> int:
    """Scalable mode: each half-table holds 128 x 32 B entries indexed by devfn[6:0] (9.1)."""
    return ctp + (devfn & 0x7F) * SM_CONTEXT_ENTRY_SIZE


def sm_root_half(root: int, devfn: int) -> tuple[bool, int]:
    """(present, context-table pointer) of the half of ``root`` that serves ``devfn``."""
    if devfn < 128:
        return bool(SM_ROOT_ENTRY.get(root, "lp")), SM_ROOT_ENTRY.get(root, "lctp") << 12
    return bool(SM_ROOT_ENTRY.get(root, "up")), SM_ROOT_ENTRY.get(root, "uctp") << 12


def root_entry_reserved(root: int, haw: int) -> int:
    """Reserved bits set in a legacy root entry, including CTP bits above HAW (fault 0xA)."""
    return ROOT_ENTRY.reserved_bits(root) | address_reserved(root & ~0xFFF, haw)


def sm_root_entry_reserved(root: int, haw: int, devfn: int) -> int:
    """Reserved bits of the half serving ``devfn`` (fault 0x3A), as qword-local bits.  Only
    that half is checked: hardware fetches the half it needs; the other may hold anything."""
    shift = 0 if devfn < 128 else 64
    half = (root >> shift) & QWORD
    return ((SM_ROOT_ENTRY.reserved_bits(root) >> shift) & QWORD) | address_reserved(
        half & ~0xFFF, haw
    )


def context_entry_reserved(ce: int, haw: int) -> int:
    """Reserved bits of a legacy context entry (fault 0xB), SSPTPTR bits above HAW included."""
    return CONTEXT_ENTRY.reserved_bits(ce) | address_reserved(ce & 0xFFFF_FFFF_FFFF_F000, haw)


def sm_context_entry_reserved(ce: int, haw: int) -> int:
    """Reserved bits of a scalable-mode context entry (fault 0x42)."""
    return SM_CONTEXT_ENTRY.reserved_bits(ce) | address_reserved(
        ce & 0xFFFF_FFFF_FFFF_F000, haw
    )
