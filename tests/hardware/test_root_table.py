"""Root and context entry layouts pinned to spec 9.2-9.4 (and Linux's context_set_* helpers)."""

from vtdsim.hardware.root_table import (
    CONTEXT_ENTRY,
    ROOT_ENTRY,
    SM_CONTEXT_ENTRY,
    SM_ROOT_ENTRY,
    context_entry_addr,
    context_entry_reserved,
    root_entry_addr,
    root_entry_reserved,
    sm_context_entry_addr,
    sm_context_entry_reserved,
    sm_root_entry_reserved,
    sm_root_half,
)


def test_legacy_root_entry_bits():
    assert ROOT_ENTRY.encode(p=1, ctp=0x12345) == 0x1234_5001
    assert ROOT_ENTRY.decode(0x1234_5001) == {"p": 1, "ctp": 0x12345}
    assert ROOT_ENTRY.reserved_bits(0x2) == 0x2  # 11:1 reserved
    assert ROOT_ENTRY.reserved_bits(1 << 64) == 1 << 64  # 127:64 reserved


def test_root_entry_ctp_above_haw_is_reserved():
    assert root_entry_reserved(ROOT_ENTRY.encode(p=1, ctp=0x1000), haw=39) == 0
    assert root_entry_reserved(1 | (1 << 39), haw=39) == 1 << 39


def test_legacy_context_entry_bits():
    # Linux: context_set_domain_id puts the DID at hi bits 23:8, AW at hi 2:0, TT at lo 3:2.
    ce = CONTEXT_ENTRY.encode(p=1, fpd=1, tt=1, ssptptr=0xABC, aw=1, did=5)
    assert ce & (2**64 - 1) == 0xABC007
    assert ce >> 64 == 0x501
    assert CONTEXT_ENTRY.reserved_bits(ce) == 0


def test_context_entry_ignored_and_reserved_bits():
    assert CONTEXT_ENTRY.reserved_bits(0x78 << 64) == 0  # 70:67 ignored
    assert CONTEXT_ENTRY.reserved_bits(0x80 << 64) == 0x80 << 64  # 71 reserved
    assert CONTEXT_ENTRY.reserved_bits(0x10) == 0x10  # 11:4 reserved
    assert CONTEXT_ENTRY.reserved_bits(1 << 88) == 1 << 88  # 127:88 reserved
    assert context_entry_reserved(1 | (1 << 45), haw=39) == 1 << 45


def test_sm_root_entry_halves():
    root = SM_ROOT_ENTRY.encode(lp=1, lctp=0x111, up=1, uctp=0x222)
    assert root == 0x111001 | (0x222001 << 64)
    assert sm_root_half(root, 0x7F) == (True, 0x111000)
    assert sm_root_half(root, 0x80) == (True, 0x222000)
    assert sm_root_half(root & (2**64 - 1), 0x80) == (False, 0)


def test_sm_root_reserved_only_in_the_half_used():
    root = SM_ROOT_ENTRY.encode(lp=1, lctp=0x111) | (0x2 << 64)  # bit 65 reserved, upper
    assert sm_root_entry_reserved(root, 48, devfn=0x10) == 0
    assert sm_root_entry_reserved(root, 48, devfn=0x90) == 0x2


def test_sm_context_entry_bits():
    ce = SM_CONTEXT_ENTRY.encode(p=1, dte=1, paside=1, pdts=2, pasid_dir_ptr=0x555,
                                 rid_pasid=0xFFFFF, rid_priv=1)
    assert ce & (2**64 - 1) == 0x555000 | (2 << 9) | 0b1101
    assert (ce >> 64) & (2**64 - 1) == 0x1F_FFFF
    assert SM_CONTEXT_ENTRY.reserved_bits(ce) == 0
    assert SM_CONTEXT_ENTRY.reserved_bits(1 << 5) == 1 << 5  # 8:5
    assert SM_CONTEXT_ENTRY.reserved_bits(1 << 128) == 1 << 128  # qwords 2-3
    assert sm_context_entry_reserved(1 | (1 << 50), haw=48) == 1 << 50


def test_entry_addresses():
    assert root_entry_addr(0x1000, 3) == 0x1030
    assert context_entry_addr(0x2000, 0xFF) == 0x2FF0
    assert sm_context_entry_addr(0x3000, 0x81) == 0x3020  # devfn & 0x7f, 32-byte entries
