"""PASID directory and PASID-table entries (VT-d spec 9.5, 9.6, 3.4.3).

A scalable-mode context entry points to a PASID directory of 2^(PDTS+7) 8-byte entries
indexed by PASID[19:6]; each present directory entry points to a 4 KiB PASID table of 64
entries of 64 bytes indexed by PASID[5:0].  The PASID-table entry selects the translation
(PGTT: first stage, second stage, nested, pass-through), carries the DID and the snoop
controls (PWSNP for page walks, PGSNP for the pages themselves).

Not modelled: memory-type fields (CD, EMTE, EMT, PWT, PCD, PAT - only meaningful with
ECAP.MTS) are decoded but never used; qwords 3-7 are treated as reserved as in spec rev 3.x
(their later use is unconfirmed).
"""

from __future__ import annotations

from vtdsim.hardware.bitfield import F, Layout
from vtdsim.hardware.root_table import address_reserved

PASID_DIR_ENTRY = Layout(
    "pasid_dir_entry",
    64,
    [F("p", 0), F("fpd", 1), F("pasid_table_ptr", 63, 12)],
    spec="VT-d 9.5",
)

PASID_ENTRY = Layout(
    "pasid_entry",
    512,
    [
        F("p", 0),
        F("fpd", 1),
        F("aw", 4, 2, doc="SS address width, encoded as the legacy context AW"),
        F("ssee", 5, doc="SS execute enable"),
        F("pgtt", 8, 6, doc="1 FS, 2 SS, 3 nested, 4 pass-through"),
        F("ssade", 9, doc="SS accessed/dirty enable"),
        F("ssptptr", 63, 12),
        F("did", 79, 64),
        F("pwsnp", 87, doc="page-walk snoop (with ECAP.SMPWC)"),
        F("pgsnp", 88, doc="page snoop: force snooping (with ECAP.SC)"),
        F("cd", 89),
        F("emte", 90),
        F("emt", 93, 91),
        F("pwt", 94),
        F("pcd", 95),
        F("pat", 127, 96),
        F("sre", 128, doc="supervisor requests enable"),
        F("ere", 129, doc="execute requests enable"),
        F("fspm", 131, 130, doc="0: 4-level, 1: 5-level FS paging"),
        F("wpe", 132, doc="write-protect enable for supervisor requests"),
        F("nxe", 133, doc="no-execute enable: honour FS XD"),
        F("smep", 134),
        F("eafe", 135, doc="extended accessed flag enable"),
        F("fsptptr", 191, 140),
    ],
    spec="VT-d 9.6",
)

# PASID Granular Translation Types (9.6); 0 and 5-7 are reserved.
PGTT_FS = 1
PGTT_SS = 2
PGTT_NESTED = 3
PGTT_PT = 4
PGTT_NAMES = {PGTT_FS: "fs", PGTT_SS: "ss", PGTT_NESTED: "nested", PGTT_PT: "pt"}

PASID_DIR_ENTRY_SIZE = 8
PASID_ENTRY_SIZE = 64
PASIDS_PER_TABLE = 64


def pasid_dir_entries(pdts: int) -> int:
    """Number of directory entries a context entry's PDTS allows (9.4)."""
    return 1 << (pdts + 7)


def pasid_dir_index(pasid: int) -> int:
    return pasid >> 6


def pasid_table_index(pasid: int) -> int:
    return pasid & (PASIDS_PER_TABLE - 1)


def pasid_dir_entry_addr(dir_ptr: int, pasid: int) -> int:
    return dir_ptr + pasid_dir_index(pasid) * PASID_DIR_ENTRY_SIZE


def pasid_entry_addr(table_ptr: int, pasid: int) -> int:
    return table_ptr + pasid_table_index(pasid) * PASID_ENTRY_SIZE


def pasid_dir_entry_reserved(pde: int, haw: int) -> int:
    """Reserved bits of a directory entry (fault 0x52), table-pointer bits above HAW included."""
    return PASID_DIR_ENTRY.reserved_bits(pde) | address_reserved(pde & ~0xFFF, haw)


def pasid_entry_reserved(pe: int, haw: int) -> int:
    """Reserved bits of a PASID-table entry (fault 0x5A): the layout's gaps plus SSPTPTR and
    FSPTPTR bits above HAW.  A pointer is only checked when its PGTT uses it: hardware does
    not look at fields the translation type leaves unused (9.6 "fields used" per PGTT)."""
    rsv = PASID_ENTRY.reserved_bits(pe)
    pgtt = PASID_ENTRY.get(pe, "pgtt")
    if pgtt in (PGTT_SS, PGTT_NESTED):
        rsv |= address_reserved(pe & 0xFFFF_FFFF_FFFF_F000, haw)
    if pgtt == PGTT_FS:
        # In nested mode FSPTPTR is a guest-physical address, checked against the SS width
        # during the walk (fault 0x74), not against HAW.
        rsv |= address_reserved(PASID_ENTRY.get(pe, "fsptptr") << 12, haw) << 128
    return rsv
