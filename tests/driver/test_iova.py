import lzma
from pathlib import Path

import pytest

from vtdsim.driver.iova import Q35_2G_RESERVED, IovaDomain, iommu_dma_alloc_iova
from vtdsim.errors import SpecRuleBroken

LIMIT = (1 << 39) - 1  # QEMU's 39-bit domain aperture
TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


def test_recorded_first_allocations():
    """legacy-cm-default: maps on CPU 0, unmaps on CPU 1 (softirq) - freed ranges sit in CPU
    1's rcache, so CPU 0 keeps going down."""
    d = IovaDomain(reserved=Q35_2G_RESERVED)

    def alloc(size):
        return iommu_dma_alloc_iova(d, size, LIMIT, cpu=0)

    got = [alloc(4096), alloc(4096)]
    for _ in range(5):
        iova = alloc(4096)
        got.append(iova)
        d.free_iova_fast(iova >> 12, 1, cpu=1)
    got += [alloc(4096), alloc(4096), alloc(16384), alloc(65536), alloc(12288)]
    assert got == [0xFFFFF000, 0xFFFFE000, 0xFFFFD000, 0xFFFFC000, 0xFFFFB000, 0xFFFFA000,
                   0xFFFF9000, 0xFFFF8000, 0xFFFF7000, 0xFFFF0000, 0xFFFE0000, 0xFFFDC000]
    # The same CPU gets its freed range straight back (LIFO rcache).
    assert iommu_dma_alloc_iova(d, 4096, LIMIT, cpu=1) == 0xFFFF9000


def test_size_alignment_and_limits():
    d = IovaDomain()
    assert iommu_dma_alloc_iova(d, 33 * 4096, LIMIT) == (0x100000 - 64) << 12  # 64-aligned
    assert iommu_dma_alloc_iova(d, 4096, LIMIT, try_32bit=False) == LIMIT + 1 - 4096
    d32 = IovaDomain(start_pfn=0xFFFFF)
    assert iommu_dma_alloc_iova(d32, 4096, LIMIT) == 0xFFFFF000
    assert iommu_dma_alloc_iova(d32, 4096, LIMIT) == LIMIT + 1 - 4096  # 32-bit space full


def test_reserved_windows_are_skipped_and_double_free_is_caught():
    d = IovaDomain(reserved=((0xFFF00, 0xFFFFF),))
    assert d.alloc_iova(1, 0xFFFFF) == 0xFFEFF
    with pytest.raises(SpecRuleBroken):
        d.free_iova(0x12345)


def test_freed_ranges_go_back_to_the_tree_after_a_flush():
    d = IovaDomain(start_pfn=0xFFFFE)
    a = d.alloc_iova_fast(1, 0xFFFFF, cpu=0)
    b = d.alloc_iova_fast(1, 0xFFFFF, cpu=0)
    d.free_iova_fast(a, 1, cpu=1)
    assert d.alloc_iova_fast(1, 0xFFFFF, cpu=0, flush_rcache=False) == 0
    assert d.alloc_iova_fast(1, 0xFFFFF, cpu=0) == a  # rcaches flushed, then retried
    assert b == 0xFFFFE


@pytest.mark.skipif(not (TRACES / "legacy-cm-default").exists(), reason="no recordings")
def test_first_recorded_map_is_the_top_page():
    with lzma.open(TRACES / "legacy-cm-default" / "guest.log.xz", "rt") as f:
        first = next(line for line in f if " map: " in line)
    assert "iova=0x00000000fffff000" in first
    assert iommu_dma_alloc_iova(IovaDomain(reserved=Q35_2G_RESERVED), 4096, LIMIT) == 0xFFFFF000
