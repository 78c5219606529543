"""PASID directory and PASID-table entry layouts pinned to spec 9.5-9.6 (Linux pasid.h)."""

from vtdsim.hardware.pasid_table import (
    PASID_DIR_ENTRY,
    PASID_ENTRY,
    PGTT_FS,
    PGTT_NESTED,
    PGTT_SS,
    pasid_dir_entries,
    pasid_dir_entry_addr,
    pasid_dir_entry_reserved,
    pasid_entry_addr,
    pasid_entry_reserved,
)

Q = 2**64 - 1


def qw(value: int, i: int) -> int:
    return (value >> (64 * i)) & Q


def test_dir_entry_bits():
    assert PASID_DIR_ENTRY.encode(p=1, fpd=1, pasid_table_ptr=0x42) == 0x42003
    assert PASID_DIR_ENTRY.reserved_bits(0x4) == 0x4
    assert pasid_dir_entry_reserved(1 | (1 << 40), haw=39) == 1 << 40


def test_pasid_entry_qword_positions():
    # Linux pasid.h: PGTT val[0] 8:6, DID val[1] 15:0, PWSNP val[1] bit 23 (page_snoop),
    # PGSNP val[1] bit 24, SRE val[2] bit 0, FLPM val[2] 3:2, WPE bit 4, EAFE bit 7.
    pe = PASID_ENTRY.encode(p=1, aw=2, pgtt=PGTT_SS, ssptptr=0x123, did=0x42, pwsnp=1,
                            pgsnp=1, sre=1, fspm=1, wpe=1, eafe=1, fsptptr=0x456)
    assert qw(pe, 0) == 0x123000 | (PGTT_SS << 6) | (2 << 2) | 1
    assert qw(pe, 1) == 0x42 | (1 << 23) | (1 << 24)
    assert qw(pe, 2) == 0x456000 | 0x80 | 0x10 | (1 << 2) | 1
    assert PASID_ENTRY.reserved_bits(pe) == 0


def test_pasid_entry_reserved_bits():
    assert PASID_ENTRY.reserved_bits(1 << 10) == 1 << 10  # 11:10
    assert PASID_ENTRY.reserved_bits(1 << 80) == 1 << 80  # 86:80
    assert PASID_ENTRY.reserved_bits(1 << 136) == 1 << 136  # 139:136
    assert PASID_ENTRY.reserved_bits(1 << 300) == 1 << 300  # qwords 3-7


def test_pointer_above_haw_reserved_only_when_pgtt_uses_it():
    ss = PASID_ENTRY.encode(p=1, pgtt=PGTT_SS, ssptptr=1 << 40)  # address 2^52 > HAW
    assert pasid_entry_reserved(ss, haw=48) != 0
    fs = PASID_ENTRY.encode(p=1, pgtt=PGTT_FS, ssptptr=1 << 40)
    assert pasid_entry_reserved(fs, haw=48) == 0
    fs_bad = PASID_ENTRY.encode(p=1, pgtt=PGTT_FS, fsptptr=1 << 39)  # address 2^51
    assert pasid_entry_reserved(fs_bad, haw=48) == 1 << (128 + 51)
    nested = PASID_ENTRY.encode(p=1, pgtt=PGTT_NESTED, fsptptr=1 << 39)
    assert pasid_entry_reserved(nested, haw=48) == 0  # a GPA: checked in the walk


def test_indexing():
    assert pasid_dir_entries(0) == 128
    assert pasid_dir_entry_addr(0x1000, 0x41) == 0x1008  # PASID[19:6]
    assert pasid_entry_addr(0x2000, 0x41) == 0x2040  # PASID[5:0] * 64
