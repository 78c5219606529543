import pytest

from vtdsim.driver.psi import calculate_psi_aligned_address, psi_mask_linux61, psi_needs_dsi
from vtdsim.hardware.presets import get_preset


@pytest.mark.parametrize("pfn,pages,mask", [
    (0xFFF80, 32, 5),   # recorded PSI DID 5 ADDR 0xfff80000 AM 5 (128 KiB)
    (0xFFFFE, 2, 1),    # recorded PSI DID 7 ADDR 0xffffe000 AM 1 (8 KiB)
    (0xFFFFF, 1, 0),
    (0xFFFFC, 3, 2),    # 3 pages, aligned to the rounded 4
])
def test_linux61_mask(pfn, pages, mask):
    assert psi_mask_linux61(pfn, pages) == (pfn, mask)


def test_unaligned_range_gets_the_smallest_aligned_block_holding_both_ends():
    # 2 pages at 0x3 and 0x4 straddle an 8-page boundary: smallest block is 8 pages (mask 3).
    assert psi_mask_linux61(0x3, 2) == (0x3, 3)
    assert calculate_psi_aligned_address(0x3000, 0x4FFF) == (0x0, 3)
    # 3 pages at 0x1: rounded to 4, unaligned; 0x1..0x3 share bit 2 -> mask 2.
    assert calculate_psi_aligned_address(0x1000, 0x3FFF) == (0x0, 2)


def test_no_shared_bit_is_64_in_61_and_52_in_mainline():
    # pfns either side of bit 63 agree in no bit: 6.1 falls back to BITS_PER_LONG.
    assert psi_mask_linux61((1 << 63) - 1, 2)[1] == 64
    # Byte addresses either side of 2^63: the pfns first agree at bit 52 (MAX_AGAW_PFN_WIDTH).
    top = (1 << 51) - 1
    assert calculate_psi_aligned_address(top << 12, ((top + 1) << 12) + 0xFFF) == (0, 52)
    assert calculate_psi_aligned_address(0, (1 << 64) - 1) == (0, 52)


def test_dsi_when_no_psi_or_above_mamv():
    caps = get_preset("qemu72-legacy-cm")
    assert caps.mamv == 18
    assert not psi_needs_dsi(caps, 18) and psi_needs_dsi(caps, 19)
    assert psi_needs_dsi(caps.with_(psi=0), 0)
