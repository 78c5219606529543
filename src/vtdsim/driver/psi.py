"""Range -> (address, mask) for page-selective IOTLB invalidation, Linux 6.1
``iommu_flush_iotlb_psi`` (drivers/iommu/intel/iommu.c) and mainline
``calculate_psi_aligned_address`` (cache.c); plus the shared "no PSI or mask > MAMV -> DSI"
decision (reference linux-driver.md §3.4, §4.3).

The mask rule (since v5.18, "Calculate mask for non-aligned flushes"): round the page count up
to a power of two P (mask log2 P); when the start is not P-aligned, the mask becomes the lowest
bit at or above it in which start and end pfn agree - the smallest aligned block holding both
ends - or a fixed maximum when they agree nowhere (BITS_PER_LONG in 6.1, 52 in mainline).

Not modelled: 32-bit ``unsigned long`` (pfns are unbounded ints; BITS_PER_LONG is 64).
"""

from __future__ import annotations

from functools import lru_cache

from vtdsim.errors import ModelError, hexval

PAGE_SHIFT = 12
BITS_PER_LONG = 64
MAX_AGAW_PFN_WIDTH = 52  # 64 - VTD_PAGE_SHIFT: "everything"
ULONG_MAX = (1 << BITS_PER_LONG) - 1


def _roundup_order(pages: int) -> int:
    """log2 of ``roundup_pow_of_two(pages)`` (``ilog2(__roundup_pow_of_two)``)."""
    return (pages - 1).bit_length()


def _shared_bit_mask(start_pfn: int, end_pfn: int, mask: int, no_shared: int) -> int:
    """The lowest bit >= ``mask`` where ``start_pfn`` and ``end_pfn`` agree (``__ffs`` of
    ``~(start ^ end) & ~bitmask``), or ``no_shared`` when they agree in no bit below 64."""
    shared = ~(start_pfn ^ end_pfn) & ~((1 << mask) - 1) & ULONG_MAX
    return (shared & -shared).bit_length() - 1 if shared else no_shared


def psi_mask(start_pfn: int, pages: int, no_shared: int) -> int:
    """The mask both kernels compute for ``pages`` pages from ``start_pfn``."""
    if pages < 1:
        raise ModelError(f"PSI over {pages} pages from {hexval('pfn', start_pfn)}")
    mask = _roundup_order(pages)
    if start_pfn & ((1 << mask) - 1):
        mask = _shared_bit_mask(start_pfn, start_pfn + pages - 1, mask, no_shared)
    return mask


def psi_mask_linux61(start_pfn: int, npages: int) -> tuple[int, int]:
    """6.1 ``iommu_flush_iotlb_psi``: (address pfn, mask).  The address is the start frame,
    *not* aligned to the mask (``addr = pfn << VTD_PAGE_SHIFT``); ends sharing no bit give
    BITS_PER_LONG, always above MAMV, hence a DSI."""
    return start_pfn, psi_mask(start_pfn, npages, BITS_PER_LONG)


@lru_cache(maxsize=4096)
def calculate_psi_aligned_address(start: int, end: int) -> tuple[int, int]:
    """Mainline: inclusive byte range -> (byte address aligned down to the mask, mask).
    ``start=0, end=ULONG_MAX`` means everything: (0, 52).  Memoised (pure arithmetic): every
    unmap flush computes it, mostly for recycled IOVAs."""
    if end < start:
        raise ModelError(f"PSI range {hexval('start', start)} > {hexval('end', end)}")
    start_pfn = start >> PAGE_SHIFT
    end_pfn = end >> PAGE_SHIFT
    mask = psi_mask(start_pfn, end_pfn - start_pfn + 1, MAX_AGAW_PFN_WIDTH)
    aligned_pfn = start_pfn & ~((1 << mask) - 1) & ULONG_MAX
    return aligned_pfn << PAGE_SHIFT, mask


def psi_needs_dsi(caps, mask: int) -> bool:
    """``!cap_pgsel_inv(cap) || mask > cap_max_amask_val(cap)``: issue a domain-selective
    invalidation instead of the PSI (6.1 ``iommu_flush_iotlb_psi``, mainline
    ``cache_tag_flush_iotlb``)."""
    return not caps.psi or mask > caps.mamv
